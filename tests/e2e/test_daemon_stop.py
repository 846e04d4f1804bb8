"""The daemon stops in every state: idle, during each job, with a service manager that stopped
reading its notify socket, on SIGINT as on SIGTERM, and at once on a second signal.

No timing is asserted: each test asserts that the process ends (the generous timeouts are the
tests' failure condition, not a speed claim), its exit code, and that no run is left ``running``
in the catalog.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli
from tests.support.daemon import Daemon, daemon_env, far_schedule
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

ENDS = 120  # seconds: the process must have ended by then; not a speed claim


def _fill(pg: PgCluster, db: str, rows: int = 2000) -> None:
    pg.execute(
        "create table items (id bigint primary key, body text);"
        f"insert into items select g, md5(g::text) from generate_series(1, {rows}) g",
        db,
    )


@contextmanager
def _table_locked(pg: PgCluster, db: str) -> Iterator[None]:
    """A transaction holding an exclusive lock on ``items``: pg_dump waits, the backup runs on."""
    blocker = pg.connect(db)
    blocker.execute("begin")
    blocker.execute("lock table items in access exclusive mode")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory postgres can enter (pytest's tmp_path is 0700 root's), for the scratch
    PostgreSQL of a restore drill under the state directory."""
    base = Path(tempfile.mkdtemp(prefix="backupd-daemon-stop-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _runs(env: dict[str, str]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = Cli(env=env).run("runs", "--json", check=True).json()
    return runs


def _started(d: Daemon, job: str) -> list[dict[str, Any]]:
    return [e for e in d.events("job_started") if e.get("job") == job]


def test_sigterm_stops_the_daemon_whose_notify_socket_is_stalled(
    tmp_path: Path, pg: PgCluster, pg_db: str
) -> None:
    """systemd busy: the notify socket's queue is full. A blocking send used to hang the main
    loop and, through the notifier's lock, the signal handler: not even a second SIGTERM ended
    the process."""
    _fill(pg, pg_db, rows=100)
    env = daemon_env(tmp_path, pg, pg_db, BACKUPD_SCHEDULE__FULL=far_schedule(), BACKUPD_SHUTDOWN_GRACE="5s")
    env["WATCHDOG_USEC"] = "2000000"  # pings every loop, each a send into the full queue
    env["BACKUPD_LOG__LEVEL"] = "debug"  # to see the drops
    Cli(env=env).run("init", check=True)
    with _table_locked(pg, pg_db), Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        d.wait_for("the full backup to start", lambda: d.events("backup_started"))
        d.stall_notify()
        d.signal(signal.SIGTERM)
        assert d.wait(ENDS) == 0, d.stderr()[-3000:]
        assert d.events("daemon_stopping") and d.events("daemon_stopped")
        # STOPPING=1 (at least) met the full queue: dropped, never waited for
        assert d.events("systemd_notify_dropped")
    runs = _runs(env)
    assert runs and not [r for r in runs if r["status"] == "running"], runs
    assert [(r["job"], r["status"]) for r in runs] == [("full", "interrupted")], runs


@pytest.mark.parametrize(
    ("signals", "code"),
    [
        ((signal.SIGINT,), 0),
        ((signal.SIGTERM,), 0),
        ((signal.SIGINT, signal.SIGINT), 128 + signal.SIGINT),
        ((signal.SIGTERM, signal.SIGINT), 128 + signal.SIGINT),
    ],
    ids=["sigint", "sigterm", "sigint-twice", "sigterm-then-sigint"],
)
def test_signals_during_a_backup_with_a_stalled_notify_socket(
    tmp_path: Path, pg: PgCluster, pg_db: str, signals: tuple[int, ...], code: int
) -> None:
    """One signal: the job gets its grace period, then is stopped and recorded interrupted; exit
    0. A second signal: stop now, exit 128 + its number."""
    _fill(pg, pg_db, rows=100)
    grace = "3s" if len(signals) == 1 else "10m"
    env = daemon_env(tmp_path, pg, pg_db, BACKUPD_SCHEDULE__FULL=far_schedule(), BACKUPD_SHUTDOWN_GRACE=grace)
    env["WATCHDOG_USEC"] = "2000000"
    Cli(env=env).run("init", check=True)
    with _table_locked(pg, pg_db), Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        d.wait_for("the full backup to start", lambda: d.events("backup_started"))
        d.stall_notify()
        d.signal(signals[0])
        d.wait_for("the stop to begin", lambda: d.events("daemon_stopping"))
        assert d.events("daemon_stopping")[0]["signal"] == signal.Signals(signals[0]).name
        if len(signals) > 1:
            assert d.proc is not None and d.proc.poll() is None  # waiting out its 10 min grace
            d.signal(signals[1])
        assert d.wait(ENDS) == code, d.stderr()[-3000:]
        if len(signals) > 1:
            assert d.events("daemon_stopping_now")
    runs = _runs(env)
    assert [(r["job"], r["status"]) for r in runs] == [("full", "interrupted")], runs


def test_an_idle_daemon_stops_on_sigint(tmp_path: Path, pg: PgCluster, pg_db: str) -> None:
    env = daemon_env(tmp_path, pg, pg_db)
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        d.signal(signal.SIGINT)
        assert d.wait(ENDS) == 0, d.stderr()[-3000:]
        assert "STOPPING=1" in d.notifications
        assert not any(n == "WATCHDOG=1" for n in d.notifications)  # no WATCHDOG_USEC: no pings
    assert _runs(env) == []


@pytest.mark.parametrize("job", ["full", "incremental", "retention", "verify", "restore_test"])
def test_sigterm_during_each_job_stops_and_leaves_no_run_running(
    reachable_dir: Path, pg: PgCluster, pg_db: str, job: str
) -> None:
    """SIGTERM as soon as the job has started: the daemon ends with exit 0, the run finished or
    recorded interrupted, none left ``running``. A backup waits on a locked table, so it is
    surely running; the others may finish within their grace period."""
    _fill(pg, pg_db, rows=5000)
    schedule = {f"BACKUPD_SCHEDULE__{job.upper()}": "every 2s"}
    env = daemon_env(reachable_dir, pg, pg_db, BACKUPD_SHUTDOWN_GRACE="3s", **schedule)
    cli = Cli(env=env)
    cli.run("init", check=True)
    cli.run("backup", "--kind", "full", check=True)
    os.chmod(reachable_dir / "state", 0o755)  # the drill's scratch PostgreSQL runs as postgres
    before = {r["id"] for r in _runs(env)}
    backup = job in ("full", "incremental")
    # A backup's table is locked before the daemon starts, so its first scheduled backup cannot
    # finish before the signal, however fast or slow the machine is.
    with _table_locked(pg, pg_db) if backup else contextlib.nullcontext(), Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        if backup:
            d.wait_for(f"the {job} backup to start", lambda: d.events("backup_started"), timeout=ENDS)
            d.signal(signal.SIGTERM)
            assert d.wait(ENDS) == 0, d.stderr()[-3000:]
        else:
            d.wait_for(f"the {job} job to start", lambda: _started(d, job), timeout=ENDS)
            d.signal(signal.SIGTERM)
            assert d.wait(ENDS) == 0, d.stderr()[-3000:]
    runs = [r for r in _runs(env) if r["id"] not in before]
    assert runs and not [r for r in runs if r["status"] == "running"], runs
    assert {r["job"] for r in runs} == {job}, runs
    assert {r["status"] for r in runs} <= {"succeeded", "interrupted"}, [r["error"] for r in runs]
    if backup:
        assert runs[-1]["status"] == "interrupted", runs
