"""The fair scheduler pool: APScheduler's executor, shared by every cluster's jobs.

APScheduler submits a fire to :class:`FairExecutor`, which queues it; ``max_workers`` threads
(``BACKUPD_MAX_CONCURRENT_JOBS``) serve the queue. The rules, in order:

- Classes by priority: 0 ``wal``, 1 ``full``/``incremental``, 2 ``retention``/``verify``/
  ``restore_test`` (:func:`job_class`). A free worker takes the first queued item by (class, fire
  time, arrival) that is eligible.
- Eligible: its cluster runs no job of its class (at most one backup, one WAL tick and one
  maintenance job per cluster at a time); a ``retention`` item also waits while a backup of its
  cluster runs (``expire()`` would refuse with ``LockedError``); an item of class 1 or 2 starts
  only while classes 1 and 2 together hold fewer than :func:`backup_workers` workers, so at
  least ``max(1, N // 4)`` workers stay for the short WAL ticks whatever the backups do.
- APScheduler counts a queued item as a running instance: with ``max_instances=1`` a fire that
  comes while the previous one is queued or running is refused by APScheduler and recorded
  ``skipped`` by the daemon, as before.
- An item whose fire time is more than its job's misfire grace ago is dropped without running
  and reported through ``on_skipped(job_id, QUEUED_TOO_LONG)``: APScheduler's ``run_job`` would
  otherwise drop it silently as "missed". Expiry is checked whenever a worker looks at the queue
  and on every :meth:`FairExecutor.expire` (the daemon's main loop, through
  ``Scheduler.take_skipped``), so it is noticed even while every worker is busy.
- ``on_wait(class_name, seconds)`` gets each started item's time in the queue
  (``backupd_scheduler_queue_wait_seconds{class}``).

The job function learns its planned fire time (``jobs.set_scheduled_time``) for ``catch-up``, as
with the thread pool this replaces. Job ids are parsed by ``jobs.parse_job_id``: a bare id is the
implicit cluster's.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from apscheduler.executors.base import BaseExecutor, run_job

from contentflow_backupd.scheduling import jobs

log = structlog.get_logger(__name__)

CLASS_NAMES = ("wal", "backup", "maintenance")
"""Label values of ``backupd_scheduler_queue_wait_seconds{class}``, by class number."""
_CLASSES = {"wal": 0, "full": 1, "incremental": 1, "retention": 2, "verify": 2, "restore_test": 2}
WAL, BACKUP, MAINTENANCE = 0, 1, 2

QUEUED_TOO_LONG = (
    "queued too long: no worker was free within the job's misfire grace (BACKUPD_MAX_CONCURRENT_JOBS)"
)
_IDLE_WAIT = 30.0
"""An idle worker looks at the queue at least this often (it is woken on every change anyway)."""


def job_class(job: str) -> int:
    """The priority class of a job name (an unknown job is maintenance, the lowest)."""
    return _CLASSES.get(job, MAINTENANCE)


def backup_workers(max_workers: int) -> int:
    """How many workers backups and maintenance may hold together: ``N - max(1, N // 4)``."""
    return max_workers - max(1, max_workers // 4)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(order=True)
class _Item:
    key: tuple[int, datetime, int]
    job: Any = field(compare=False)
    run_times: list[datetime] = field(compare=False)
    cluster: str | None = field(compare=False)
    name: str = field(compare=False)
    queued_at: datetime = field(compare=False)

    @property
    def cls(self) -> int:
        return self.key[0]


class FairExecutor(BaseExecutor):  # type: ignore[misc]
    """A bounded pool with priority classes and per-(cluster, class) exclusion (module docstring)."""

    def __init__(
        self,
        max_workers: int = 4,
        *,
        on_skipped: Callable[[str, str], None] | None = None,
        on_wait: Callable[[str, float], None] | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """``clock``: aware "now" for queue waits and expiry (tests pass their own)."""
        if max_workers < 2:
            raise ValueError("the fair pool needs at least 2 workers (one is kept for WAL)")
        super().__init__()
        self.max_workers = max_workers
        self.backup_limit = backup_workers(max_workers)
        self._on_skipped = on_skipped
        self._on_wait = on_wait
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[_Item] = []
        self._running: Counter[tuple[str | None, int]] = Counter()
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # -- APScheduler's executor interface ----------------------------------------------------
    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        with self._cond:
            self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"scheduler-worker-{i}", daemon=True)
            for i in range(self.max_workers)
        ]
        for thread in self._threads:
            thread.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers; queued items are dropped (a running job is the caller's business)."""
        with self._cond:
            self._stopping = True
            dropped, self._queue = self._queue, []
            self._cond.notify_all()
        for item in dropped:
            log.info("job_not_started", job=item.job.id, reason="the scheduler stopped")
            self._run_job_success(item.job.id, [])
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        cluster, name = jobs.parse_job_id(job.id)
        fire = run_times[-1] if run_times else self._clock()
        item = _Item(
            (job_class(name), fire.astimezone(UTC), next(self._seq)),
            job,
            list(run_times),
            cluster,
            name,
            self._clock(),
        )
        with self._cond:
            self._queue.append(item)
            self._queue.sort()
            self._cond.notify_all()

    def alive(self) -> bool:
        """Started, not stopped, and every worker thread running."""
        with self._cond:
            if self._stopping or not self._threads:
                return False
        return all(thread.is_alive() for thread in self._threads)

    # -- the queue ---------------------------------------------------------------------------
    def queued(self) -> list[str]:
        """Ids of the queued items, in the order they would start if all were eligible."""
        with self._cond:
            return [item.job.id for item in self._queue]

    def running(self) -> dict[tuple[str | None, str], int]:
        """(cluster, class name) -> running items."""
        with self._cond:
            return {(c, CLASS_NAMES[k]): n for (c, k), n in self._running.items() if n}

    def expire(self) -> list[str]:
        """Drop the queued items whose fire time is more than their misfire grace ago; report
        each through ``on_skipped``. Returns their ids."""
        now = self._clock()
        with self._cond:
            gone = [item for item in self._queue if _too_late(item, now)]
            if gone:
                self._queue = [item for item in self._queue if item not in gone]
        for item in gone:
            log.warning(
                "job_skipped",
                job=item.job.id,
                reason=QUEUED_TOO_LONG,
                queued_s=round((now - item.queued_at).total_seconds(), 3),
            )
            if self._on_skipped is not None:
                self._on_skipped(item.job.id, QUEUED_TOO_LONG)
            self._run_job_success(item.job.id, [])  # APScheduler counted it as an instance
        return [item.job.id for item in gone]

    def _eligible(self, item: _Item, backups_busy: int) -> bool:
        if self._running[(item.cluster, item.cls)]:
            return False
        if item.name == "retention" and self._running[(item.cluster, BACKUP)]:
            return False
        return item.cls == WAL or backups_busy < self.backup_limit

    def _pick(self) -> _Item | None:
        """The first eligible item, marked running (call with ``_cond`` held)."""
        busy = sum(n for (_, cls), n in self._running.items() if cls != WAL)
        for index, item in enumerate(self._queue):
            if self._eligible(item, busy):
                del self._queue[index]
                self._running[(item.cluster, item.cls)] += 1
                return item
        return None

    def _work(self) -> None:
        while True:
            self.expire()
            with self._cond:
                if self._stopping:
                    return
                item = self._pick()
                if item is None:
                    self._cond.wait(_IDLE_WAIT)
                    continue
            try:
                self._run(item)
            finally:
                with self._cond:
                    self._running[(item.cluster, item.cls)] -= 1
                    if not self._running[(item.cluster, item.cls)]:
                        del self._running[(item.cluster, item.cls)]
                    self._cond.notify_all()

    def _run(self, item: _Item) -> None:
        waited = max(0.0, (self._clock() - item.queued_at).total_seconds())
        if self._on_wait is not None:
            self._on_wait(CLASS_NAMES[item.cls], waited)
        job = item.job
        jobs.set_scheduled_time(item.run_times[-1] if item.run_times else None)
        try:
            events = run_job(job, job._jobstore_alias, item.run_times, self._logger.name)
        except BaseException as exc:  # noqa: BLE001 - reported to APScheduler like its own pools do
            self._run_job_error(job.id, exc, exc.__traceback__)
        else:
            self._run_job_success(job.id, events)
        finally:
            jobs.set_scheduled_time(None)


def _too_late(item: _Item, now: datetime) -> bool:
    grace = item.job.misfire_grace_time
    return grace is not None and (now - item.key[1]).total_seconds() > grace
