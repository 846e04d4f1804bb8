"""One job's cancel reaches only that job: its cancel event, its children (``procs.spawn``) and
its PostgreSQL connections (``source/postgres.py``), never another owner's.

Real PostgreSQL, real ``pg_dump``, a real local repository and SQLite catalog: the daemon's
``JobRunner`` built from ``wiring.App`` as the daemon builds it. No timing is asserted: the
timeouts are the failure condition of something that does not stop.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contentflow_backupd import __version__, procs
from contentflow_backupd.daemon.runtime import JobRunner
from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.settings import Settings
from contentflow_backupd.source import postgres
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.wiring import App
from tests.conftest import PASSPHRASE
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

ENDS = 60.0  # seconds: what was cancelled must have stopped by then; not a speed claim
SLEEP = shutil.which("sleep") or "/bin/sleep"


def _wait(what: str, check: Any, timeout: float = ENDS) -> Any:
    done = threading.Event()
    for _ in range(int(timeout / 0.1)):
        value = check()
        if value:
            return value
        done.wait(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _sleep_query(info: ConnInfo, owner: str, box: dict[str, Any]) -> None:
    """``select pg_sleep(600)`` on a connection opened under ``owner``: its error, if any."""
    with procs.owned_by(owner), postgres.connect(info) as conn:
        box["pid"] = conn.info.backend_pid
        try:
            conn.execute("select pg_sleep(600)")
        except psycopg.Error as exc:
            box["error"] = type(exc).__name__


def _backend_running(pg: PgCluster, pid: int) -> bool:
    rows = pg.execute("select state from pg_stat_activity where pid = %s", params=(pid,))
    return bool(rows) and rows[0][0] == "active"


def test_cancel_queries_of_one_owner_leaves_the_other_owners_queries_running(
    pg: PgCluster, pg_db: str
) -> None:
    info = ConnInfo.parse(pg.url(pg_db))
    mine: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    threads = [
        threading.Thread(target=_sleep_query, args=(info, "orders:full", mine)),
        threading.Thread(target=_sleep_query, args=(info, "billing:full", theirs)),
    ]
    for t in threads:
        t.start()
    try:
        _wait(
            "both queries running", lambda: all(_backend_running(pg, b.get("pid", 0)) for b in (mine, theirs))
        )

        assert postgres.cancel_queries("orders:full") == 1

        threads[0].join(ENDS)
        assert mine.get("error") == "QueryCanceled"
        assert _backend_running(pg, theirs["pid"])  # the other owner's query runs on

        assert postgres.cancel_queries(None) >= 1  # the daemon's stop: every connection
        threads[1].join(ENDS)
        assert theirs.get("error") == "QueryCanceled"
    finally:
        for box in (mine, theirs):
            if "pid" in box:
                pg.execute("select pg_cancel_backend(%s)", params=(box["pid"],))
        for t in threads:
            t.join(ENDS)


@contextmanager
def _table_locked(pg: PgCluster, db: str) -> Iterator[None]:
    """A transaction holding an exclusive lock on ``items``: pg_dump waits for it."""
    blocker = pg.connect(db)
    blocker.execute("begin")
    blocker.execute("lock table items in access exclusive mode")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


def test_cancel_job_stops_that_job_alone(tmp_path: Path, pg: PgCluster, pg_db: str) -> None:
    pg.execute("create table items (id int primary key); insert into items values (1)", pg_db)
    settings = Settings(
        database_url=pg.url(pg_db),
        repository=f"file://{tmp_path / 'repo'}",
        state_dir=tmp_path / "state",
        encryption={"passphrase": PASSPHRASE},
    )
    app = App(settings)
    repo = app.init_repository()
    catalog = app.open_catalog()
    runner = JobRunner(app, repo, catalog, Metrics(__version__).add_cluster(app.cluster), app.notifier())
    other: subprocess.Popen[bytes] | None = None
    try:
        with procs.owned_by(runner.owner_of("verify")):  # another job's child, running meanwhile
            other = procs.spawn([SLEEP, "600"], stdin=subprocess.DEVNULL)
        with _table_locked(pg, pg_db):
            job = threading.Thread(target=runner, args=("full", "manual"))
            job.start()
            dump = _wait("pg_dump waiting for the lock", lambda: procs.owned_children("main:full"))
            assert [j.job for j in runner.running()] == ["full"]
            assert runner.cancel_job("verify") is None  # not running: nothing to cancel

            cancelled = runner.cancel_job("full")

            assert cancelled is not None and cancelled.cancel.is_set()
            job.join(ENDS)
            assert not job.is_alive(), "the cancelled job did not return"
        assert not procs.process_alive(dump[0][0])
        assert other.poll() is None  # the other owner's child runs on
        runs = catalog.list_runs(runner.scope, limit=10)
        assert [(r.job, r.status) for r in runs] == [("full", "interrupted")]
        assert runner.running() == []
    finally:
        if other is not None:
            other.send_signal(signal.SIGKILL)
            other.wait()
        catalog.close()
        app.close()
