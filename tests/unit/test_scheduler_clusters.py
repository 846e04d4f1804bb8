"""One scheduler, one job store per cluster (docs/design/fleet.md, step 5), on a real APScheduler
over SQLite: named clusters' ids are ``<cluster>:<job>`` in their own ``job_table(scope)``; the
implicit cluster keeps bare ids (and adopts the rows of the old shared table, as before);
removing a cluster keeps its rows, and adding it again keeps their fire times."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from structlog.testing import capture_logs

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.model import Scope
from contentflow_backupd.scheduling.scheduler import LEGACY_TABLE, JobSpec, Scheduler, job_table
from contentflow_backupd.timespec import parse_schedule


def specs(cluster: str, full: str = "0 2 * * *") -> list[JobSpec]:
    return [
        JobSpec("full", parse_schedule(full), "X_FULL", cluster=cluster),
        JobSpec("verify", parse_schedule("0 5 * * *"), "X_VERIFY", cluster=cluster),
        JobSpec("retention", parse_schedule("off"), "X_RETENTION", cluster=cluster),
    ]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    made = create_engine(f"sqlite:///{tmp_path}/catalog.db")
    yield made
    made.dispose()


@pytest.fixture
def sched(engine: Any) -> Iterator[Scheduler]:
    made = Scheduler(engine, "UTC", max_workers=2)
    made.resume()
    yield made
    made.shutdown()
    made.executor.shutdown(wait=True)


def stored(engine: Any, scope: Scope) -> set[str]:
    with engine.connect() as conn:
        return {row[0] for row in conn.execute(text(f"select id from {job_table(scope)}"))}


def test_each_cluster_has_its_store_and_named_ids_carry_the_cluster(engine: Any, sched: Scheduler) -> None:
    orders, billing, main = Scope("r1", "orders"), Scope("r1", "billing"), Scope("r2", "main")
    sched.add_cluster("orders", orders, specs("orders"))
    sched.add_cluster("billing", billing, specs("billing"))
    sched.add_cluster("main", main, specs("main"), bare=True)
    assert sorted(sched.clusters()) == ["billing", "main", "orders"]
    assert stored(engine, orders) == {"orders:full", "orders:verify"}  # off: not stored
    assert stored(engine, billing) == {"billing:full", "billing:verify"}
    assert stored(engine, main) == {"full", "verify"}
    assert sched.job_id("full", "orders") == "orders:full" and sched.job_id("full", "main") == "full"
    runs = sched.next_runs("orders")
    assert runs["full"] is not None and runs["full"].hour == 2 and runs["retention"] is None
    assert sched.next_runs("nobody") == {}


def test_removing_a_cluster_keeps_its_rows_and_adding_it_again_its_fire_times(
    engine: Any, sched: Scheduler
) -> None:
    orders = Scope("r1", "orders")
    sched.add_cluster("orders", orders, specs("orders"))
    due = datetime.now(UTC) + timedelta(minutes=7)
    sched._sched.modify_job("orders:verify", jobstore="orders", next_run_time=due)
    assert sched.remove_cluster("orders") is True
    assert sched.clusters() == [] and sched.next_runs("orders") == {}
    assert stored(engine, orders) == {"orders:full", "orders:verify"}  # the rows stay
    assert sched.remove_cluster("orders") is False
    sched.add_cluster("orders", orders, specs("orders", full="0 3 * * *"))
    runs = sched.next_runs("orders")
    assert runs["verify"] == due  # unchanged trigger: its stored fire time kept
    assert runs["full"] is not None and runs["full"].hour == 3  # changed: re-planned


def test_only_the_implicit_cluster_adopts_the_old_shared_table(engine: Any, sched: Scheduler) -> None:
    legacy = Scheduler(engine, "UTC", scope=Scope("old", "x"), max_workers=2)  # makes a table
    try:
        legacy.register(specs("x"))
    finally:
        legacy.shutdown()
        legacy.executor.shutdown(wait=True)
    with engine.begin() as conn:
        conn.execute(text(f"create table {LEGACY_TABLE} as select * from {job_table(Scope('old', 'x'))}"))
    with capture_logs() as named:
        sched.add_cluster("orders", Scope("r1", "orders"), specs("orders"))
    with capture_logs() as implicit:
        sched.add_cluster("main", Scope("r1", "main"), specs("main"), bare=True)
    assert "scheduler_jobs_adopted" not in [e["event"] for e in named]
    adopted = [e for e in implicit if e["event"] == "scheduler_jobs_adopted"]
    assert adopted and adopted[0]["jobs"] == ["full", "verify"]
    assert stored(engine, Scope("r1", "orders")) == {"orders:full", "orders:verify"}
    assert stored(engine, Scope("r1", "main")) == {"full", "verify"}


def test_adding_a_cluster_is_all_or_nothing(sched: Scheduler) -> None:
    bad = [JobSpec("full", parse_schedule("61 * * * *"), "X_FULL", cluster="orders")]
    with pytest.raises(ConfigError, match="X_FULL"):
        sched.add_cluster("orders", Scope("r1", "orders"), bad)
    assert sched.clusters() == [] and "orders" not in sched._sched._jobstores
    sched.add_cluster("orders", Scope("r1", "orders"), specs("orders"))  # a retry succeeds
    assert sched.clusters() == ["orders"] and sched.next_runs("orders")["full"] is not None


def test_next_runs_reads_a_store_again_only_after_a_change(engine: Any, sched: Scheduler) -> None:
    """The daemon asks every cluster's next fire times every second: a store is read again only
    when its jobs changed (or after ``NEXT_RUNS_REFRESH``), not 1,000 queries a second."""
    from sqlalchemy import event

    from contentflow_backupd.scheduling import scheduler as module

    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    settle = module.CHANGE_SETTLE
    module.CHANGE_SETTLE = 0.0  # a change is read once, right after it (not every time for 5 s)
    try:
        sched.add_cluster("orders", Scope("r1", "orders"), specs("orders"))
        first = sched.next_runs("orders")
        assert first["full"] is not None and first["retention"] is None
        statements.clear()
        assert sched.next_runs("orders") == first  # nothing changed: no query
        assert statements == []
        sched.pause()  # so that the job due now stays due (no handler runs it)
        sched.run_soon("orders:full", store="orders")  # a change (modify_job): read again
        again = sched.next_runs("orders")
        assert again["full"] is not None and again["full"] < first["full"]
        assert statements
        statements.clear()
        sched.remove_cluster("orders")
        assert sched.next_runs("orders") == {}
    finally:
        module.CHANGE_SETTLE = settle
