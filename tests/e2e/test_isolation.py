"""One cluster's trouble stays its own (docs/daemon.md "Isolation"): a logical backup behind a
table lock fails after ``jobs.lock_wait_timeout`` instead of waiting forever, and a daemon job
that stops moving is stopped by the stall watchdog (``jobs.stall_timeout``) and recorded failed,
while the daemon goes on; the WAL job's sessions have a ``statement_timeout``; a drill refuses
to start below the state directory's free-space reserve.

Real PostgreSQL, real ``pg_dump``, the installed command and a real daemon; a session holding
``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` in an open transaction is the hang. No timing is
asserted: the waits' timeouts are the failure condition of something that does not end.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contentflow_backupd.fsutil import free_space_reserve
from contentflow_backupd.source import postgres
from contentflow_backupd.source.conninfo import ConnInfo
from tests.support.cli import Cli
from tests.support.daemon import Daemon, daemon_env, far_schedule
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg


def _table(pg: PgCluster, db: str) -> None:
    pg.execute("create table items (id int primary key, v text)", db)
    pg.execute("insert into items select g, md5(g::text) from generate_series(1, 1000) g", db)


@contextmanager
def _locked(pg: PgCluster, db: str) -> Iterator[None]:
    """A session holding ``items`` in ACCESS EXCLUSIVE mode in an open transaction."""
    blocker = pg.connect(db)
    blocker.execute("begin")
    blocker.execute("lock table items in access exclusive mode")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


def test_a_logical_backup_behind_a_lock_fails_after_the_lock_wait_timeout(
    cli: Cli, pg: PgCluster, pg_db: str
) -> None:
    _table(pg, pg_db)
    cli.run("init", check=True)
    first = cli.ok_json("backup", "--kind", "full")
    with _locked(pg, pg_db):
        res = cli.run("backup", "--kind", "full", env={"BACKUPD_JOBS__LOCK_WAIT_TIMEOUT": "2s"}, timeout=120)
    assert res.returncode != 0, res
    assert "gave up waiting for a table lock after 2s" in res.stderr, res
    assert "BACKUPD_JOBS__LOCK_WAIT_TIMEOUT" in res.stderr, res
    runs = cli.ok_json("runs", "list")  # oldest first
    assert [(r["job"], r["status"]) for r in runs] == [("full", "succeeded"), ("full", "failed")], runs
    assert "table lock" in runs[-1]["error"]
    assert [b["id"] for b in cli.ok_json("backup", "list")] == [first["id"]]  # no half backup counts
    attempts = cli.ok_json("backup", "list", "--attempts")
    assert [b["status"] for b in attempts] == ["succeeded", "failed"], attempts


def test_the_stall_watchdog_fails_a_hung_daemon_job_and_the_daemon_goes_on(
    tmp_path: Path, pg: PgCluster, pg_db: str
) -> None:
    _table(pg, pg_db)
    env = daemon_env(
        tmp_path,
        pg,
        pg_db,
        BACKUPD_SCHEDULE__FULL=far_schedule(),  # the first full runs at start; no second one
        BACKUPD_JOBS__LOCK_WAIT_TIMEOUT="1h",  # pg_dump would wait for the lock ...
        BACKUPD_JOBS__STALL_TIMEOUT="5s",  # ... but the job is stopped once it stopped moving
    )
    with _locked(pg, pg_db), Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        stalled = d.wait_for("job_stalled", lambda: d.events("job_stalled"), timeout=120)
        assert stalled[0]["job"] == "full" and stalled[0]["children"], stalled
        assert "stalled" in stalled[0]["reason"] and stalled[0]["phase"] == "dumping", stalled
        d.wait_for("the run recorded", lambda: d.events("backup_failed"), timeout=120)
        assert d.get("/livez")[0] == 200 and d.get("/readyz")[0] == 200
        assert d.proc is not None and d.proc.poll() is None  # the daemon goes on
        assert d.metric("backupd_backup_runs_total", kind="full", result="failure") == 1
    runs = Cli(env=env).ok_json("runs", "list")
    full = [r for r in runs if r["job"] == "full"]
    assert [(r["trigger"], r["status"]) for r in full] == [("scheduled", "failed")], runs
    assert full[0]["error"].startswith("stalled: no progress for "), full
    assert Cli(env=env).ok_json("backup", "list") == []


def test_the_wal_jobs_sessions_have_a_statement_timeout(
    pg: PgCluster, pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that accepts connections but hangs cannot hold the WAL job's worker: its
    sessions (``wal_status``, ``switch_wal``) run with ``statement_timeout``, next to the URL's
    own ``options``; a statement past it is cancelled."""
    info = ConnInfo.parse(pg.url(pg_db) + "?options=-c%20search_path%3Dpg_catalog")
    seen: list[tuple[str, str]] = []
    real_connect = postgres.connect

    def observed(*args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = real_connect(*args, **kwargs)
        row = conn.execute("select current_setting('statement_timeout'), current_setting('search_path')")
        seen.append(tuple(row.fetchone() or ()))
        return conn

    monkeypatch.setattr(postgres, "connect", observed)
    postgres.wal_status(info)
    postgres.switch_wal(info)
    assert seen == [("30s", "pg_catalog"), ("30s", "pg_catalog")]
    monkeypatch.undo()
    with (
        postgres.connect(info, statement_timeout_ms=100) as conn,
        pytest.raises(psycopg.errors.QueryCanceled),
    ):
        conn.execute("select pg_sleep(600)")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 MiB file system (tmpfs) at a fresh path; skipped where this process may not
    mount one (not root, or a container without the capability)."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _fill(path: Path, leave: int) -> None:
    """Write a file that leaves ``leave`` bytes free on ``path``'s file system."""
    st = os.statvfs(path)
    with open(path / "filler", "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - leave))


def test_a_drill_refuses_to_start_below_the_free_space_reserve(
    cli: Cli, pg: PgCluster, pg_db: str, small_fs: Path
) -> None:
    """The state directory on a nearly full file system: backups go on (they write to the
    repository), a drill refuses before it writes anything, naming the path, the free bytes and
    the reserve (5% of this 64 MiB file system), so the WAL spools keep their room."""
    _table(pg, pg_db)
    cli.env["BACKUPD_STATE_DIR"] = str(small_fs / "state")
    cli.run("init", check=True)
    cli.ok_json("backup", "--kind", "full")
    reserve = free_space_reserve(64 * 1024 * 1024)
    _fill(small_fs, reserve // 2)
    res = cli.run("restore-test", "--json")
    assert res.returncode == 1, res
    out = res.json()
    restore = {c["name"]: c for c in out["checks"]}["restore"]
    assert out["status"] == "failed" and restore["status"] == "failed", out
    error = restore["detail"]
    assert f"{small_fs / 'state'} has " in error and f"below the reserve of {reserve} bytes" in error, error
    assert not (small_fs / "state" / "drills").exists() or not list((small_fs / "state" / "drills").iterdir())
    runs = cli.ok_json("runs", "list")
    assert [(r["job"], r["status"]) for r in runs] == [("full", "succeeded"), ("restore_test", "failed")]
    (small_fs / "filler").unlink()
    assert cli.run("restore-test", "--json").returncode == 0  # with room again, the drill runs
