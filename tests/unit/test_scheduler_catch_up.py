"""``Scheduler.run_soon(job_id, catch_up=True)``: the run it fires is recorded with trigger
``catch-up`` (a fire time of now would make it ``scheduled``), once; the runs after it are
``scheduled`` again. A real APScheduler over a SQLite job store in tmp_path."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from contentflow_backupd.model import RunTrigger, Scope
from contentflow_backupd.scheduling import jobs
from contentflow_backupd.scheduling.scheduler import JobSpec, Scheduler
from contentflow_backupd.timespec import parse_schedule

GUARD = 30.0


class Runs:
    def __init__(self) -> None:
        self.seen: list[tuple[str, RunTrigger]] = []
        self.changed = threading.Condition()

    def handler(self, cluster: str | None) -> jobs.Handler:
        def handle(job: str, trigger: RunTrigger) -> None:
            with self.changed:
                self.seen.append((jobs.job_id_for(cluster, job), trigger))
                self.changed.notify_all()

        return handle

    def wait_for(self, count: int) -> list[tuple[str, RunTrigger]]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.seen) >= count, GUARD):
                raise AssertionError(f"only {self.seen} after {GUARD} s, wanted {count} runs")
            return list(self.seen)


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[tuple[Scheduler, Runs]]:
    recorded = Runs()
    jobs.install(recorded.handler(None))
    jobs.install(recorded.handler("orders"), "orders")
    engine = create_engine(f"sqlite:///{tmp_path}/catalog.db")
    sched = Scheduler(engine, "UTC", scope=Scope("repo", "main"), max_workers=2)
    daily = parse_schedule("0 2 * * *")
    sched.register(
        [JobSpec("full", daily, "X_FULL"), JobSpec("orders:verify", daily, "X_VERIFY", cluster="orders")]
    )
    sched.resume()
    try:
        yield sched, recorded
    finally:
        sched.shutdown()
        sched.executor.shutdown(wait=True)
        jobs.install(None)
        engine.dispose()


@pytest.mark.parametrize("job_id", ["full", "orders:verify"])
def test_a_catch_up_fire_is_recorded_as_catch_up_once(runs: tuple[Scheduler, Runs], job_id: str) -> None:
    sched, recorded = runs
    sched.run_soon(job_id, reason="test", catch_up=True)
    assert recorded.wait_for(1) == [(job_id, "catch-up")]
    sched.run_soon(job_id, reason="test")  # the mark was used up: a plain run_soon is scheduled
    assert recorded.wait_for(2) == [(job_id, "catch-up"), (job_id, "scheduled")]


def test_a_plain_run_soon_is_scheduled_and_marks_nothing(runs: tuple[Scheduler, Runs]) -> None:
    sched, recorded = runs
    sched.run_soon("full", reason="test")
    assert recorded.wait_for(1) == [("full", "scheduled")]
    sched.run_soon("orders:verify", reason="test", catch_up=True)  # another job's mark is its own
    assert recorded.wait_for(2) == [("full", "scheduled"), ("orders:verify", "catch-up")]


def test_a_catch_up_of_an_unknown_job_raises_and_leaves_no_mark(runs: tuple[Scheduler, Runs]) -> None:
    from apscheduler.jobstores.base import JobLookupError

    sched, recorded = runs
    with pytest.raises(JobLookupError):
        sched.run_soon("orders:full", reason="test", catch_up=True)
    jobs.run_scheduled("orders:full")  # called directly: no mark left behind
    assert recorded.seen == [("orders:full", "scheduled")]


def test_uninstalling_every_handler_drops_pending_marks() -> None:
    seen: list[RunTrigger] = []
    jobs.install(lambda job, trigger: seen.append(trigger))
    try:
        jobs.mark_catch_up("full")
        jobs.install(None)
        jobs.install(lambda job, trigger: seen.append(trigger))
        jobs.run_scheduled("full")
        assert seen == ["scheduled"]
    finally:
        jobs.install(None)
