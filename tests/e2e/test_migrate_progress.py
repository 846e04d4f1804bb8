"""ProgressLogger against a real PostgreSQL: lines logged while a statement waits on a lock, the
summary of what it saw, failures logged and never raised, and a prompt stop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from contentflow_backupd.migrate.progress import ProgressLogger
from contentflow_backupd.source.conninfo import ConnInfo
from tests.e2e.test_migrate_preflight_pg import Sessions, eventually
from tests.support.pg import PgCluster, free_port

pytestmark = pytest.mark.pg


@pytest.fixture
def sessions(pg: PgCluster, pg_db: str) -> Iterator[Sessions]:
    s = Sessions(pg, pg_db)
    try:
        yield s
    finally:
        s.close()


def lines(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in list(logs) if e["event"] == event]


def test_logs_lock_waits_and_keeps_them_in_the_summary(pg: PgCluster, pg_db: str, sessions: Sessions) -> None:
    info = ConnInfo.parse(pg.url(pg_db))
    blocker = sessions.open()
    blocker.execute("create table t (id int)")
    blocker.execute("begin")
    blocker.execute("lock table t in access exclusive mode")
    waiter = sessions.in_background("alter table t add column note text")

    with capture_logs() as logs:
        log = structlog.get_logger("test").bind(run_id="r-1")
        with ProgressLogger(info, 0.2, log=log) as progress:
            assert progress.running
            eventually(
                lambda: any(line["lock_waits"] for line in lines(logs, "migration_progress")),
                "a progress line shows the waiting ALTER TABLE",
            )
            eventually(lambda: len(lines(logs, "migration_progress")) >= 2, "a second line")
        assert not progress.running

    progress_lines = lines(logs, "migration_progress")
    count = len(progress_lines)
    line = next(x for x in progress_lines if x["lock_waits"])
    assert line["run_id"] == "r-1" and line["log_level"] == "info"
    assert [x["sample"] for x in progress_lines] == list(range(1, count + 1))
    (wait,) = line["lock_waits"]
    assert wait["pid"] == waiter
    assert wait["lock"] == "AccessExclusiveLock relation t"
    assert wait["query"] == "alter table t add column note text"
    assert wait["blocked_by"] == [
        {
            "pid": blocker.info.backend_pid,
            "state": "idle in transaction",
            "query": "lock table t in access exclusive mode",
        }
    ]
    assert {s["pid"] for s in line["statements"]} == {waiter, blocker.info.backend_pid}
    assert {"pid": blocker.info.backend_pid, "relation": "t", "mode": "AccessExclusiveLock"} in line[
        "locks_held"
    ]
    assert line["progress"] == []

    summary = progress.summary()
    assert summary["samples"] == count and summary["failed_samples"] == 0
    assert summary["max_running_statements"] == 2
    (seen,) = summary["lock_waits"]
    assert (seen["pid"], seen["mode"], seen["relation"]) == (waiter, "AccessExclusiveLock", "t")
    assert seen["blocked_by"] == [
        {"pid": blocker.info.backend_pid, "query": "lock table t in access exclusive mode"}
    ]
    assert seen["seen"] >= 1 and seen["max_waiting_seconds"] > 0
    assert {"relation": "t", "mode": "AccessExclusiveLock", "pids": [blocker.info.backend_pid]} == {
        k: v for k, v in summary["locks_held"][0].items() if k != "seen"
    }
    assert not lines(logs, "migration_progress_failed")


def test_a_failing_snapshot_logs_a_warning_and_never_raises(pg: PgCluster) -> None:
    down = ConnInfo.parse(f"postgresql://postgres:{pg.password}@127.0.0.1:{free_port()}/x")
    with capture_logs() as logs:
        with ProgressLogger(down, 0.2, log=structlog.get_logger("test")) as progress:
            eventually(lambda: len(lines(logs, "migration_progress_failed")) >= 2, "two failed snapshots")
        assert not progress.running
    failed = lines(logs, "migration_progress_failed")
    assert failed[0]["log_level"] == "warning"
    assert "cannot connect to the database" in failed[0]["error"]
    assert pg.password not in repr(logs)
    summary = progress.summary()
    assert summary["samples"] == 0 and summary["failed_samples"] >= 2
    assert summary["lock_waits"] == [] and not lines(logs, "migration_progress")


def test_stops_at_once_and_lets_the_callers_error_through(pg: PgCluster, pg_db: str) -> None:
    info = ConnInfo.parse(pg.url(pg_db))
    with capture_logs() as logs:
        with (
            pytest.raises(RuntimeError, match="the command failed"),
            ProgressLogger(info, 3600, log=structlog.get_logger("test")) as progress,
        ):
            assert progress.running
            raise RuntimeError("the command failed")
        # a thread waiting out its hour would still run here
        assert not progress.running
    assert logs == []
    assert progress.summary()["samples"] == 0


def test_sample_records_and_logs_one_snapshot(pg: PgCluster, pg_db: str) -> None:
    info = ConnInfo.parse(pg.url(pg_db))
    progress = ProgressLogger(info, 10, log=structlog.get_logger("test"))
    with capture_logs() as logs:
        snap = progress.sample()
    assert snap is not None and snap.lock_waits == ()
    assert [e["event"] for e in logs] == ["migration_progress"]
    assert progress.summary()["samples"] == 1
    progress.stop()  # never started: nothing to stop, no error


@pytest.mark.parametrize("interval", [0, -1.0])
def test_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        ProgressLogger(ConnInfo.parse("dbname=x"), interval, log=structlog.get_logger("test"))
