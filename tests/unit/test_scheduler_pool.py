"""The fair scheduler pool (scheduling/pool.py) on a real APScheduler: the catalog's job store
is a SQLite database in tmp_path, jobs fire through ``scheduling.jobs.run_scheduled`` into
handlers installed per cluster, and "backups" block on events until the test releases them.

Every wait below is for an event with a generous guard (a hung pool fails instead of hanging);
nothing asserts how long anything took. Time in the queue is measured on a clock the test moves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from contentflow_backupd.model import RunTrigger, Scope
from contentflow_backupd.scheduling import jobs
from contentflow_backupd.scheduling.pool import QUEUED_TOO_LONG, backup_workers, job_class
from contentflow_backupd.scheduling.scheduler import PREVIOUS_RUN_GOING, JobSpec, Scheduler, misfire_grace
from contentflow_backupd.timespec import parse_schedule

GUARD = 30.0
CLUSTERS = ("a", "b", "c", "d", "e", "x", "r", "z")
JOBS = ("full", "incremental", "wal", "retention", "verify", "restore_test")


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + GUARD
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


class Clock:
    """Real UTC time plus an offset the test moves (queue waits and expiry read it)."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


class Jobs:
    """Handlers of every test cluster: record starts and ends, block the gated jobs."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        for cluster in CLUSTERS:
            jobs.install(self._handler(cluster), cluster)
        jobs.install(self._handler(None))

    def _handler(self, cluster: str | None) -> jobs.Handler:
        def handle(job: str, trigger: RunTrigger) -> None:
            job_id = jobs.job_id_for(cluster, job)
            with self._lock:
                self.started.append(job_id)
            gate = self.gates.get(job_id)
            if gate is not None:
                assert gate.wait(GUARD), f"{job_id} was never released"
            with self._lock:
                self.finished.append(job_id)

        return handle

    def gate(self, *job_ids: str) -> None:
        for job_id in job_ids:
            self.gates[job_id] = threading.Event()

    def release(self, job_id: str) -> None:
        self.gates[job_id].set()

    def release_all(self) -> None:
        for gate in self.gates.values():
            gate.set()


@pytest.fixture
def handlers() -> Iterator[Jobs]:
    recorded = Jobs()
    yield recorded
    recorded.release_all()
    jobs.install(None)


@pytest.fixture
def make_scheduler(tmp_path: Path, handlers: Jobs) -> Iterator[Callable[..., Scheduler]]:
    made: list[tuple[Scheduler, object]] = []

    def make(max_workers: int = 4, clock: Clock | None = None, waits: list | None = None) -> Scheduler:
        engine = create_engine(f"sqlite:///{tmp_path}/catalog-{len(made)}.db")
        on_wait = None if waits is None else (lambda cls, s: waits.append((cls, s)))
        sched = Scheduler(
            engine,
            "UTC",
            scope=Scope("repo", "main"),
            max_workers=max_workers,
            on_queue_wait=on_wait,
            clock=clock,
        )
        specs = [
            JobSpec(f"{cluster}:{job}", parse_schedule("0 2 * * *"), f"X_{job}", cluster=cluster)
            for cluster in CLUSTERS
            for job in JOBS
        ]
        specs += [JobSpec(job, parse_schedule("0 2 * * *"), f"X_{job}") for job in ("full", "wal")]
        sched.register(specs)
        sched.resume()
        made.append((sched, engine))
        return sched

    yield make
    handlers.release_all()
    for sched, engine in made:
        sched.shutdown()
        sched.executor.shutdown(wait=True)
        engine.dispose()  # type: ignore[attr-defined]


def fire(sched: Scheduler, *job_ids: str) -> None:
    for job_id in job_ids:
        sched.run_soon(job_id, reason="test")


def test_classes_and_the_backup_share_of_the_pool() -> None:
    assert [job_class(j) for j in JOBS] == [1, 1, 0, 2, 2, 2]
    assert job_class("something_new") == 2
    assert {n: backup_workers(n) for n in (2, 3, 4, 7, 8, 16, 256)} == {
        2: 1,
        3: 2,
        4: 3,
        7: 6,
        8: 6,
        16: 12,
        256: 192,
    }


@pytest.mark.parametrize(
    ("job_id", "parsed"),
    [
        ("full", (None, "full")),
        ("restore_test", (None, "restore_test")),
        ("orders:full", ("orders", "full")),
        ("db.eu-1:wal", ("db.eu-1", "wal")),
    ],
)
def test_job_ids(job_id: str, parsed: tuple[str | None, str]) -> None:
    assert jobs.parse_job_id(job_id) == parsed
    assert jobs.job_id_for(*parsed) == job_id


@pytest.mark.parametrize("bad", ["", ":full", "orders:", ":"])
def test_bad_job_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        jobs.parse_job_id(bad)


def test_dispatch_routes_by_cluster(handlers: Jobs) -> None:
    jobs.run_scheduled("b:verify")
    jobs.run_scheduled("full")  # bare: the implicit cluster's handler
    jobs.run_scheduled("nobody:full")  # no handler for that cluster: logged, nothing runs
    jobs.run_scheduled(":full")  # not an id: logged, nothing runs
    assert handlers.started == ["b:verify", "full"]


def test_backups_go_before_maintenance_and_wal_before_both(
    make_scheduler: Callable[..., Scheduler], handlers: Jobs
) -> None:
    sched = make_scheduler(max_workers=2)  # one worker for backups and maintenance, one kept for WAL
    handlers.gate("a:full", "c:full")
    fire(sched, "a:full")
    wait_for("a:full started", lambda: "a:full" in handlers.started)
    fire(sched, "b:verify")  # fired first...
    wait_for("b:verify queued", lambda: sched.executor.queued() == ["b:verify"])
    fire(sched, "c:full")  # ...but a backup goes first
    wait_for("c:full queued", lambda: len(sched.executor.queued()) == 2)
    assert sched.executor.queued() == ["c:full", "b:verify"]
    fire(sched, "e:wal")  # WAL does not wait for the blocked backup
    wait_for("e:wal ran", lambda: "e:wal" in handlers.finished)
    handlers.release("a:full")
    wait_for("c:full started", lambda: "c:full" in handlers.started)
    assert sched.executor.queued() == ["b:verify"]
    handlers.release("c:full")
    wait_for("b:verify ran", lambda: "b:verify" in handlers.finished)
    assert handlers.started == ["a:full", "e:wal", "c:full", "b:verify"]


def test_one_job_per_cluster_and_class_and_retention_waits_for_backups(
    make_scheduler: Callable[..., Scheduler], handlers: Jobs
) -> None:
    sched = make_scheduler(max_workers=8)  # 6 workers for backups and maintenance: room to spare
    handlers.gate("a:full", "r:full")
    fire(sched, "a:full", "r:full")
    wait_for("both backups started", lambda: {"a:full", "r:full"} <= set(handlers.started))
    fire(sched, "a:incremental", "r:retention", "b:full", "a:wal", "a:verify")
    wait_for("the other cluster's backup ran", lambda: "b:full" in handlers.finished)
    wait_for("a's WAL and verify ran", lambda: {"a:wal", "a:verify"} <= set(handlers.finished))
    # z:verify fires after r:retention and queues behind it: once it has run, a worker has
    # looked at r:retention and a:incremental and left them
    fire(sched, "z:verify")
    wait_for("z:verify ran", lambda: "z:verify" in handlers.finished)
    assert sched.executor.queued() == ["a:incremental", "r:retention"]
    only_backups = {("a", "backup"): 1, ("r", "backup"): 1}
    wait_for("only the two backups run", lambda: sched.executor.running() == only_backups)
    handlers.release("r:full")
    wait_for("retention ran once r's backup ended", lambda: "r:retention" in handlers.finished)
    assert sched.executor.queued() == ["a:incremental"]
    handlers.release("a:full")
    wait_for("a:incremental ran after a:full", lambda: "a:incremental" in handlers.finished)
    assert handlers.started.index("a:incremental") > handlers.finished.index("a:full")


def test_wal_keeps_its_workers_while_backups_block(
    make_scheduler: Callable[..., Scheduler], handlers: Jobs
) -> None:
    sched = make_scheduler(max_workers=4)  # backups hold at most 3
    handlers.gate("a:full", "b:full", "c:full", "d:full")
    fire(sched, "a:full", "b:full", "c:full", "d:full")
    wait_for("three backups started", lambda: len(handlers.started) == 3)
    wait_for("the fourth queued", lambda: len(sched.executor.queued()) == 1)
    only_backups = {("a", "backup"): 1, ("b", "backup"): 1, ("c", "backup"): 1, ("d", "backup"): 1}

    def ticked(count: int) -> bool:
        ran = handlers.finished.count("x:wal") == handlers.finished.count("a:wal") == count
        return ran and set(sched.executor.running().items()) < set(only_backups.items())

    for tick in range(1, 4):  # the fourth worker serves WAL ticks of any cluster, again and again
        fire(sched, "x:wal", "a:wal")
        wait_for(f"WAL tick {tick} ran and its worker is free", lambda: ticked(tick))  # noqa: B023 - called at once
    assert handlers.finished.count("x:wal") == 3
    assert len(sched.executor.queued()) == 1
    assert sum(sched.executor.running().values()) == 3
    blocked = sched.executor.queued()[0]
    first = next(j for j in handlers.started if j.endswith(":full"))
    handlers.release(first)
    wait_for("the queued backup started", lambda: blocked in handlers.started)


def test_an_item_queued_past_its_misfire_grace_is_skipped(
    make_scheduler: Callable[..., Scheduler], handlers: Jobs
) -> None:
    clock = Clock()
    waits: list[tuple[str, float]] = []
    sched = make_scheduler(max_workers=2, clock=clock, waits=waits)
    handlers.gate("a:full")
    fire(sched, "a:full")
    wait_for("a:full started", lambda: "a:full" in handlers.started)
    fire(sched, "b:full")
    wait_for("b:full queued", lambda: sched.executor.queued() == ["b:full"])
    assert sched.take_skipped() == []  # within its grace: kept
    grace = misfire_grace(JobSpec("full", parse_schedule("0 2 * * *"), "X"), "UTC")
    clock.ahead = timedelta(seconds=grace + 60)
    assert sched.take_skipped() == [("b:full", QUEUED_TOO_LONG)]
    assert sched.executor.queued() == []
    # APScheduler no longer counts it: the next fire queues again instead of being refused
    clock.ahead = timedelta(0)
    fire(sched, "b:full")
    wait_for("b:full queued again", lambda: sched.executor.queued() == ["b:full"])
    clock.ahead = timedelta(seconds=120)  # a long wait, still within the grace
    handlers.release("a:full")
    wait_for("b:full ran", lambda: "b:full" in handlers.finished)
    assert sched.take_skipped() == []
    assert [cls for cls, _ in waits] == ["backup", "backup"]
    assert waits[0][1] < 120 <= waits[1][1]


def test_a_fire_while_the_previous_is_running_or_queued_is_skipped(
    make_scheduler: Callable[..., Scheduler], handlers: Jobs
) -> None:
    sched = make_scheduler(max_workers=2)
    handlers.gate("a:full", "b:full")
    fire(sched, "a:full")
    wait_for("a:full started", lambda: "a:full" in handlers.started)
    fire(sched, "b:full")  # queued behind a:full (one backup worker)
    wait_for("b:full queued", lambda: sched.executor.queued() == ["b:full"])
    skipped: list[tuple[str, str]] = []
    fire(sched, "a:full")  # running
    wait_for("running a:full refused", lambda: bool(skipped.extend(sched.take_skipped()) or skipped))
    fire(sched, "b:full")  # queued
    wait_for("queued b:full refused", lambda: bool(skipped.extend(sched.take_skipped()) or len(skipped) == 2))
    assert skipped == [("a:full", PREVIOUS_RUN_GOING), ("b:full", PREVIOUS_RUN_GOING)]
    handlers.release_all()
    wait_for("both ran once", lambda: sorted(handlers.finished) == ["a:full", "b:full"])
    assert sorted(handlers.started) == ["a:full", "b:full"]


def test_bare_ids_run_as_the_implicit_cluster(
    make_scheduler: Callable[..., Scheduler], handlers: Jobs
) -> None:
    sched = make_scheduler(max_workers=2)
    handlers.gate("full")
    fire(sched, "full")
    wait_for("full started", lambda: "full" in handlers.started)
    assert sched.executor.running() == {(None, "backup"): 1}
    fire(sched, "wal")
    wait_for("the implicit cluster's WAL ran beside its backup", lambda: "wal" in handlers.finished)
    assert sched.next_runs()["full"] is not None


def test_the_scheduler_is_alive_only_with_its_workers(make_scheduler: Callable[..., Scheduler]) -> None:
    sched = make_scheduler(max_workers=3)
    assert sched.alive()
    sched.executor.shutdown(wait=True)  # the workers are gone, the scheduler thread is not
    assert not sched.alive()


def test_stopping_drops_what_is_queued(make_scheduler: Callable[..., Scheduler], handlers: Jobs) -> None:
    sched = make_scheduler(max_workers=2)
    handlers.gate("a:full")
    fire(sched, "a:full")
    wait_for("a:full started", lambda: "a:full" in handlers.started)
    fire(sched, "b:full")
    wait_for("b:full queued", lambda: sched.executor.queued() == ["b:full"])
    sched.shutdown()
    assert sched.executor.queued() == []
    handlers.release("a:full")
    wait_for("a:full ended", lambda: "a:full" in handlers.finished)
    assert "b:full" not in handlers.started
