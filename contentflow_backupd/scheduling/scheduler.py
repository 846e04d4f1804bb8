"""APScheduler 3.x: a ``BackgroundScheduler`` whose job store is the catalog database.

Jobs have fixed ids (``full``, ``incremental``, ``wal``, ``retention``) and are registered again
from settings on every start (``replace_existing``): settings are the truth, the job table keeps
the next fire times across restarts. When a job's trigger is unchanged its stored next fire time
is kept, so a daily backup missed while the daemon was down runs when it comes back (within the
misfire grace) as a ``catch-up`` run.

Each daemon's scope (a repository's cluster) has its own table, ``apscheduler_jobs_<hash of the
scope>`` (:func:`job_table`): APScheduler's job stores must never be shared between schedulers,
and daemons of several clusters or repositories may share one PostgreSQL catalog. In one table
they loaded, fired and rescheduled each other's jobs. A new table takes over the rows of the
table of earlier versions, ``apscheduler_jobs``, once (``scheduler_jobs_adopted``), so that an
upgrade keeps the stored fire times; that table is left for daemons of earlier versions.

Fired jobs run in :class:`~contentflow_backupd.scheduling.pool.FairExecutor` (priority classes,
one job of a class per cluster, workers kept for WAL, a queue wait bounded by the misfire grace);
their triggers carry the cluster's spread offset when ``schedule.spread`` gives one
(``scheduling/spread.py``). Ids are bare for the implicit cluster, ``<cluster>:<job>`` otherwise
(``jobs.parse_job_id``).

APScheduler silently deletes a job row it cannot unpickle. Before it gets the chance, every row is
loaded here; one that fails is logged (``scheduler_job_unloadable``) and re-created from settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from apscheduler.events import (
    EVENT_ALL_JOBS_REMOVED,
    EVENT_JOB_ADDED,
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_MODIFIED,
    EVENT_JOB_REMOVED,
    EVENT_JOB_SUBMITTED,
    EVENT_JOBSTORE_ADDED,
    EVENT_JOBSTORE_REMOVED,
    JobSubmissionEvent,
    SchedulerEvent,
)
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.base import BaseTrigger

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.model import JOB_NAMES, Scope
from contentflow_backupd.scheduling import jobs
from contentflow_backupd.scheduling.periods import cron_trigger
from contentflow_backupd.scheduling.pool import FairExecutor
from contentflow_backupd.timespec import Schedule

log = structlog.get_logger(__name__)

JOB_IDS = JOB_NAMES
PREVIOUS_RUN_GOING = "the previous run of this job was still running or queued"
NEXT_RUNS_REFRESH = 60.0
"""Seconds a store's next fire times are reused by ``Scheduler.next_runs`` when nothing changed."""
CHANGE_SETTLE = 5.0
"""Seconds after a job event during which ``Scheduler.next_runs`` reads the store every time."""
_JOB_CHANGES = (
    EVENT_JOB_ADDED
    | EVENT_JOB_REMOVED
    | EVENT_JOB_MODIFIED
    | EVENT_JOB_SUBMITTED
    | EVENT_JOB_EXECUTED
    | EVENT_JOB_ERROR
    | EVENT_JOB_MISSED
    | EVENT_JOB_MAX_INSTANCES
    | EVENT_ALL_JOBS_REMOVED
    | EVENT_JOBSTORE_ADDED
    | EVENT_JOBSTORE_REMOVED
)
"""The APScheduler events after which a store's next fire times may have changed."""
LEGACY_TABLE = "apscheduler_jobs"
"""The one job table of earlier versions, shared by every daemon on the catalog."""


def job_table(scope: Scope) -> str:
    """The job table of the daemon of ``scope``: ``apscheduler_jobs_`` and 12 hex digits of
    BLAKE2b over the repository id and cluster (a short, valid SQL name on every database)."""
    key = f"{scope.repository_id}/{scope.cluster}".encode()
    return f"{LEGACY_TABLE}_{hashlib.blake2b(key, digest_size=6).hexdigest()}"


_EPOCH = datetime(2000, 1, 3)  # a Monday: ``every`` intervals are aligned to it, restart or not


@dataclass(frozen=True)
class JobSpec:
    id: str
    schedule: Schedule
    setting: str
    """The setting it came from, for error messages (``BACKUPD_SCHEDULE__FULL``)."""
    cluster: str = ""
    """The cluster whose jobs these are: the key of its spread offset."""
    spread_s: float = 0.0
    """``schedule.spread`` in seconds (0: fire at the schedule's own times)."""


def build_trigger(spec: JobSpec, timezone: str) -> BaseTrigger:
    """The APScheduler trigger of a schedule, moved by the cluster's spread offset when it has one
    (:class:`~contentflow_backupd.scheduling.spread.SpreadTrigger`); ``ConfigError`` naming the
    setting when APScheduler rejects a crontab field (``61 * * * *``)."""
    from contentflow_backupd.scheduling.periods import AlignedIntervalTrigger, schedule_period
    from contentflow_backupd.scheduling.spread import SpreadTrigger, spread_offset

    sched = spec.schedule
    try:
        base: BaseTrigger
        if sched.kind == "cron":
            assert sched.cron is not None
            base = cron_trigger(sched.cron, timezone)
        elif sched.kind == "every":
            assert sched.seconds is not None
            base = AlignedIntervalTrigger(seconds=int(sched.seconds), start_date=_EPOCH, timezone=timezone)
        else:
            raise ConfigError(f"{spec.setting}: 'off' has no trigger")
        offset = 0
        if spec.spread_s > 0:
            offset = spread_offset(spec.cluster, spec.spread_s, schedule_period(sched, timezone))
    except ValueError as exc:
        raise ConfigError(f"{spec.setting}: {sched} is not a valid schedule: {exc}") from None
    return SpreadTrigger(base, offset) if offset else base


def misfire_grace(spec: JobSpec, timezone: str) -> int:
    """How late a run may still start: half the period, at least 30 s, at most 6 h (a daily job
    missed during an outage of a few hours still runs; one missed for a day waits for its next)."""
    from contentflow_backupd.scheduling.periods import schedule_period

    period = schedule_period(spec.schedule, timezone) or 3600.0
    return int(min(max(period / 2, 30.0), 6 * 3600.0))


class _ToStructlog(logging.Handler):
    """APScheduler logs with the standard library; its warnings and errors join our JSON lines."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warning"
        getattr(log, level)("scheduler_message", message=record.getMessage(), logger=record.name)


class Scheduler:
    """One APScheduler instance over the catalog. Created paused; ``register`` then ``resume``.

    With ``scope`` its ``default`` job store is that scope's table (one cluster, bare ids, as
    before). Without, a daemon serving several clusters adds one job store per cluster
    (:meth:`add_cluster`, alias = the cluster's name, table ``job_table(scope)``) and removes it
    (:meth:`remove_cluster`) when it stops serving that cluster: its rows stay in the catalog."""

    def __init__(
        self,
        engine: Any,
        timezone: str,
        *,
        scope: Scope | None = None,
        max_workers: int = 4,
        on_queue_wait: Callable[[str, float], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``engine``: the catalog's SQLAlchemy engine; the jobs live in its table
        ``job_table(scope)``. ``max_workers``: the fair pool's size (``BACKUPD_MAX_CONCURRENT_JOBS``);
        ``on_queue_wait(class, seconds)``: each started job's time in the queue; ``clock``: the
        pool's "now" (tests)."""
        self.timezone = timezone
        self.engine = engine
        self.table = job_table(scope) if scope is not None else ""
        self._stores: dict[str, tuple[SQLAlchemyJobStore, str | None]] = {}
        """Job store alias -> (store, the cluster of its ids: None for bare ids)."""
        self._timezones: dict[str, str] = {"default": timezone}
        self._changing = threading.RLock()
        """Held while a cluster's job store is added or removed."""
        stores: dict[str, Any] = {}
        if scope is not None:
            self._store = SQLAlchemyJobStore(engine=engine, tablename=self.table)
            self._stores["default"] = (self._store, None)
            stores["default"] = self._store
        self._skipped: list[tuple[str, str]] = []
        self._skipped_lock = threading.Lock()
        pool_args: dict[str, Any] = {"on_skipped": self._add_skipped, "on_wait": on_queue_wait}
        if clock is not None:
            pool_args["clock"] = clock
        self.executor = FairExecutor(max_workers, **pool_args)
        self._sched = BackgroundScheduler(
            jobstores=stores,
            executors={"default": self.executor},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=timezone,
        )
        self._sched.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        self._next_runs: dict[str, tuple[float, dict[str, datetime | None]]] = {}
        """Store alias -> (when read, its next fire times): ``next_runs`` reads a store again
        only after a change of its jobs, or ``NEXT_RUNS_REFRESH`` later."""
        self._changed: dict[str | None, float] = {}
        """Store alias (None: every store) -> when its jobs last changed (monotonic)."""
        self._sched.add_listener(self._on_event, _JOB_CHANGES)
        aps = logging.getLogger("apscheduler")
        if not any(isinstance(h, _ToStructlog) for h in aps.handlers):
            aps.addHandler(_ToStructlog(level=logging.WARNING))
            aps.propagate = False
        self._sched.start(paused=True)

    # -- registration ----------------------------------------------------------------------
    def add_cluster(
        self,
        name: str,
        scope: Scope,
        specs: Sequence[JobSpec],
        *,
        bare: bool = False,
        timezone: str | None = None,
    ) -> None:
        """Serve cluster ``name``'s jobs: a job store of its own (``job_table(scope)``, alias
        ``name``), then ``register(specs)`` in it. ``bare``: the implicit cluster, whose ids stay
        bare (``full``) so that an upgrade keeps its rows; else ``<name>:<job>``. ``timezone``: the
        cluster's (default: the scheduler's). Adding a cluster served already only registers its
        specs again. All or nothing: when it raises (a catalog error), no store was added."""
        with self._changing:
            # Paused meanwhile: a running scheduler would fire a due stored job as soon as its
            # store is added, and again once ``register`` re-adds it (then "skipped").
            running = self._sched.state == STATE_RUNNING
            if running:
                self._sched.pause()
            added = False
            try:
                if name not in self._stores:
                    store = SQLAlchemyJobStore(engine=self.engine, tablename=job_table(scope))
                    # The table first: a failure (a busy SQLite catalog) leaves nothing attached.
                    store.jobs_t.create(self.engine, checkfirst=True)
                    self._sched.add_jobstore(store, alias=name)
                    self._stores[name] = (store, None if bare else name)
                    added = True
                self._timezones[name] = timezone or self.timezone
                self.register(specs, store=name)
            except BaseException:
                if added:  # all or nothing: the caller retries the whole
                    self._stores.pop(name, None)
                    with contextlib.suppress(KeyError):
                        self._sched.remove_jobstore(name, shutdown=True)
                raise
            finally:
                if running:
                    self._sched.resume()

    def remove_cluster(self, name: str) -> bool:
        """Stop firing cluster ``name``'s jobs: its job store leaves the scheduler, its rows stay
        in the catalog (a later ``add_cluster`` finds their fire times). False when not served."""
        with self._changing:
            if name not in self._stores or name == "default":
                return False
            del self._stores[name]
            self._timezones.pop(name, None)
            self._sched.remove_jobstore(name, shutdown=True)
        log.info("scheduler_cluster_removed", cluster=name)
        return True

    def clusters(self) -> list[str]:
        """The job stores added by :meth:`add_cluster`, by cluster name."""
        return [alias for alias in self._stores if alias != "default"]

    def job_id(self, job: str, store: str = "default") -> str:
        """The stored id of ``job`` in job store ``store`` (bare or ``<cluster>:<job>``)."""
        return jobs.job_id_for(self._stores[store][1], job)

    def register(self, specs: Sequence[JobSpec], *, store: str = "default") -> None:
        """Make the jobs stored in ``store`` match ``specs``: unloadable rows are logged and
        re-created, jobs of unknown ids and jobs whose schedule is ``off`` are removed. A job whose
        trigger is unchanged keeps its stored next fire time."""
        js, cluster = self._stores[store]
        tz = self._timezones.get(store, self.timezone)
        if cluster is None:
            self._adopt_legacy_rows(js)  # bare ids: the rows of earlier versions
        existing = self._load_rows(js)
        wanted = {jobs.job_id_for(cluster, s.id) for s in specs if s.schedule.kind != "off"}
        for job_id in existing:
            if job_id not in wanted:
                self._sched.remove_job(job_id, jobstore=store)
                log.info("scheduler_job_removed", job=job_id, reason="schedule off or unknown job")
        for spec in specs:
            if spec.schedule.kind == "off":
                continue
            job_id = jobs.job_id_for(cluster, spec.id)
            trigger = build_trigger(spec, tz)
            kwargs: dict[str, Any] = {}
            old = existing.get(job_id)
            if old is not None and str(old.trigger) == str(trigger) and old.next_run_time is not None:
                kwargs["next_run_time"] = old.next_run_time  # keep a due run due
            self._sched.add_job(
                jobs.JOB_FUNCTION,
                trigger,
                args=[job_id],
                id=job_id,
                name=job_id,
                jobstore=store,
                replace_existing=True,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=misfire_grace(spec, tz),
                **kwargs,
            )
            job = self._sched.get_job(job_id, jobstore=store)
            log.info(
                "scheduler_job_registered",
                job=job_id,
                schedule=str(spec.schedule),
                next_run=job.next_run_time.isoformat() if job and job.next_run_time else None,
            )

    def _adopt_legacy_rows(self, store: SQLAlchemyJobStore) -> None:
        """First start of this scope's table after an upgrade: copy the job rows of
        ``apscheduler_jobs`` (the table of earlier versions), so that the stored fire times (a
        run missed while the daemon was down) survive. ``register`` then checks each one as it
        checks its own rows: a row whose trigger differs from the settings is replaced. The old
        table is left as it is (daemons of earlier versions may still use it)."""
        engine = store.engine
        legacy = SQLAlchemyJobStore(engine=engine, tablename=LEGACY_TABLE).jobs_t  # never created here
        table = store.jobs_t
        with engine.begin() as conn:
            if not engine.dialect.has_table(conn, LEGACY_TABLE):
                return
            if conn.execute(table.select().limit(1)).first() is not None:
                return  # adopted before, or this scope's jobs were stored already
            rows = [r for r in conn.execute(legacy.select()).fetchall() if r.id in JOB_IDS]
            for row in rows:
                conn.execute(
                    table.insert().values(id=row.id, next_run_time=row.next_run_time, job_state=row.job_state)
                )
        if rows:
            log.info("scheduler_jobs_adopted", jobs=sorted(r.id for r in rows), table=LEGACY_TABLE)

    def _load_rows(self, store: SQLAlchemyJobStore) -> dict[str, Any]:
        """Every job of ``store``, loaded the way APScheduler would; broken rows deleted and
        logged."""
        loaded: dict[str, Any] = {}
        table = store.jobs_t
        with store.engine.begin() as conn:
            rows = conn.execute(table.select()).fetchall()
            for row in rows:
                try:
                    loaded[row.id] = store._reconstitute_job(row.job_state)
                except Exception as exc:  # noqa: BLE001 - whatever breaks unpickling, log it
                    log.error(
                        "scheduler_job_unloadable",
                        job=row.id,
                        error=f"{type(exc).__name__}: {exc}",
                        action="re-created from settings"
                        if jobs.parse_job_id(row.id)[1] in JOB_IDS
                        else "removed",
                    )
                    conn.execute(table.delete().where(table.c.id == row.id))
        return loaded

    def run_soon(
        self,
        job_id: str,
        *,
        reason: str = "no successful full backup yet",
        catch_up: bool = False,
        store: str = "default",
    ) -> None:
        """Fire ``job_id`` (its stored id, in job store ``store``) now instead of at its next fire
        time (once; then its schedule). With ``catch_up``, that run's trigger is ``catch-up`` (a
        fire time of now would make it ``scheduled``): the catch-up of a run a dead daemon left
        interrupted."""
        from datetime import UTC

        if catch_up:
            jobs.mark_catch_up(job_id)
        try:
            self._sched.modify_job(job_id, jobstore=store, next_run_time=datetime.now(UTC))
        except BaseException:
            jobs.mark_catch_up(job_id, pending=False)
            raise
        log.info("scheduler_job_due_now", job=job_id, reason=reason, catch_up=catch_up)

    # -- running ---------------------------------------------------------------------------
    def resume(self) -> None:
        self._sched.resume()

    def pause(self) -> None:
        self._sched.pause()

    def shutdown(self) -> None:
        """Stop firing and release the job store; running jobs are the caller's business."""
        if self._sched.running:
            self._sched.shutdown(wait=False)

    def alive(self) -> bool:
        """The scheduler thread and every pool worker are running (a dead worker would leave
        fired jobs queued for ever)."""
        thread = getattr(self._sched, "_thread", None)
        running = bool(self._sched.running and thread is not None and thread.is_alive())
        return running and self.executor.alive()

    def next_runs(self, store: str = "default") -> dict[str, datetime | None]:
        """Next fire time of every job of ``store``, by bare job name (None when off or paused
        out); an empty mapping for a store not served.

        Read from the store (a query and an unpickling per job) only when its jobs changed in the
        last ``CHANGE_SETTLE`` seconds (APScheduler writes the next fire time just after it
        reports a submission), or ``NEXT_RUNS_REFRESH`` after the last read: the daemon asks for
        every cluster every second, which at 1,000 clusters was most of its catalog load."""
        if store not in self._stores:
            self._next_runs.pop(store, None)
            return {}
        now = time.monotonic()
        cached = self._next_runs.get(store)
        changed = max(self._changed.get(store, -math.inf), self._changed.get(None, -math.inf))
        if cached is not None and cached[0] > changed + CHANGE_SETTLE and now - cached[0] < NEXT_RUNS_REFRESH:
            return dict(cached[1])
        out: dict[str, datetime | None] = dict.fromkeys(JOB_IDS)
        for job in self._sched.get_jobs(jobstore=store):
            out[jobs.parse_job_id(job.id)[1]] = job.next_run_time
        self._next_runs[store] = (now, out)
        return dict(out)

    def _on_event(self, event: SchedulerEvent) -> None:
        """Any job or store event: that store's next fire times are read afresh for a while."""
        alias = getattr(event, "jobstore", None) or getattr(event, "alias", None)
        self._changed[alias if isinstance(alias, str) else None] = time.monotonic()

    def take_skipped(self) -> list[tuple[str, str]]:
        """(job id, reason) of every fire that did not run since the last call: its previous run
        was still running or queued (``max_instances``), or it waited in the pool's queue past its
        misfire grace (checked here too, so it is noticed while every worker is busy)."""
        self.executor.expire()
        with self._skipped_lock:
            taken, self._skipped = self._skipped, []
        return taken

    def _add_skipped(self, job_id: str, reason: str) -> None:
        with self._skipped_lock:
            self._skipped.append((job_id, reason))

    def _on_max_instances(self, event: JobSubmissionEvent) -> None:
        log.warning("job_skipped", job=event.job_id, reason=PREVIOUS_RUN_GOING)
        self._add_skipped(event.job_id, PREVIOUS_RUN_GOING)
