"""Starting, stopping and rescheduling one cluster of a running daemon.

``ClusterControl`` is the part of ``lifecycle.Daemon`` that acts on one cluster at a time, at
start-up and later (a reload, a lease gained or lost):

- ``start_cluster(name, app)`` adds a ``ClusterRuntime`` (``state`` ``starting``, its metric
  series at their zero values) and starts it on a thread of its own: client-tool check,
  repository opened (or initialised), old catalog rows adopted, notifier, ``JobRunner``, WAL
  watcher and socket, then, once it owns the cluster (``_lead``), its job store in the
  scheduler, its jobs registered and its WAL stream. A failure is logged
  (``cluster_start_failed``) and the start retried with ``CLUSTER_START_BACKOFF`` while the
  cluster stays ``starting`` (``/healthz`` fails its ``cluster_start`` check); the other
  clusters go on. A configuration error (``NOT_RETRIED``: invalid settings, a wrong or missing
  key, a repository of an unknown format) is not retried: in the first attempt at the daemon's
  own start-up it stops the daemon with its exit code (2 for invalid settings, 1 for a wrong key,
  as before); otherwise it leaves the cluster ``failed``.
- ``stop_cluster(name, grace_s=)`` unregisters its jobs (its job store leaves the scheduler, its
  rows stay), gives its running jobs the grace then cancels them, stops its WAL socket and stream
  (after the running upload) and removes its metric series. Backups,
  runs and the repository are untouched.
- ``reschedule_cluster(name, app)`` registers its jobs again from ``app.job_specs``; a job whose
  trigger is unchanged keeps its next fire time.

Leadership is per cluster: on a PostgreSQL catalog the cluster's lease in the fleet
(``daemon/fleetrun.py``: a runtime exists only while its lease is held, and leads once started);
on SQLite the daemon's one file lock makes it the leader of every cluster.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import TYPE_CHECKING, Any

import structlog

from contentflow_backupd.backoff import Backoff, Pacer
from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.daemon.cluster import ClusterRuntime, runtime_for
from contentflow_backupd.daemon.membership import Membership
from contentflow_backupd.daemon.parts import DaemonApp, FleetApp
from contentflow_backupd.errors import BackupdError, ConfigError, KeyMissing, UnsupportedFormat, WrongKey
from contentflow_backupd.model import RunTrigger
from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.ops.health.evaluate import DependencyState

log = structlog.get_logger(__name__)

CLUSTER_START_BACKOFF = Backoff(first=5.0, cap=300.0, jitter=False)
"""Retries of a cluster's start: 5 s, 10 s, 20 s... at most 5 minutes apart, for ever."""
STOP_POLL = 0.2
NOT_RETRIED = (ConfigError, WrongKey, KeyMissing, UnsupportedFormat)
"""Failures a retry cannot fix: only a change of the configuration (or the repository) does."""


class ClusterControl:
    """Mixin of ``lifecycle.Daemon``: see the module docstring. Thread-safe: the runtimes map is
    changed under ``_clusters_lock`` only."""

    fleet: FleetApp
    all_metrics: Metrics
    stopping: threading.Event
    started: bool
    runtimes: dict[str, ClusterRuntime]
    _catalog: Catalog | None
    _scheduler: Any
    _lock: Any
    _clusters_lock: threading.Lock
    _fatal: BaseException | None
    _catalog_dep: DependencyState | None
    membership: Membership | None

    if TYPE_CHECKING:  # daemon/fleetrun.py: FleetRun, the other mixin of Daemon

        def _runtime_catalog(self, app: DaemonApp) -> Catalog: ...
        def _lead_owned(self, runtime: ClusterRuntime) -> None: ...

    # -- start ---------------------------------------------------------------------------------
    def start_cluster(self, name: str, app: DaemonApp) -> None:
        """Serve cluster ``name`` with ``app``: its runtime starts on a thread of its own and is
        retried until it starts (module docstring). Returns at once; a cluster served already is
        left as it is (logged ``cluster_served_already``)."""
        self._add_runtime(name, app, at_startup=False)

    def _add_runtime(self, name: str, app: DaemonApp, *, at_startup: bool) -> None:
        """``start_cluster``; ``at_startup``: a ``ConfigError`` in its first attempt stops the
        daemon (exit 2) instead of leaving the cluster ``failed``."""
        assert self._catalog is not None
        with self._clusters_lock:
            if name in self.runtimes:
                log.warning("cluster_served_already", cluster=name)
                return
            runtime = ClusterRuntime(app, self._runtime_catalog(app), self.all_metrics.add_cluster(name))
            self.runtimes[name] = runtime
        runtime.metrics.set_leader(False)
        self._install_handler(name)
        thread = threading.Thread(
            target=self._start_runtime, args=(runtime, at_startup), name=f"start-{name}", daemon=True
        )
        thread.start()

    def _start_runtime(self, runtime: ClusterRuntime, at_startup: bool = False) -> None:
        """On the cluster's start thread: try, and retry, until started or stopped."""
        pacer = Pacer(CLUSTER_START_BACKOFF)
        try:
            self._start_attempts(runtime, pacer, at_startup)
        finally:
            runtime.first_attempt.set()

    def _start_attempts(self, runtime: ClusterRuntime, pacer: Pacer, at_startup: bool) -> None:
        while not (self.stopping.is_set() or runtime.stop_event.is_set()):
            try:
                self._start_steps(runtime)
            except NOT_RETRIED as exc:
                runtime.state, runtime.start_error = "failed", exc.message
                log.error("cluster_start_refused", cluster=runtime.name, error=exc.message, hint=exc.hint)
                if at_startup and pacer.failures == 0:  # invalid settings at start-up: exit 2, as ever
                    self._fatal = exc
                    self.stopping.set()
                return
            except Exception as exc:  # noqa: BLE001 - one cluster's trouble never stops the others
                message = exc.message if isinstance(exc, BackupdError) else f"{type(exc).__name__}: {exc}"
                runtime.start_error = message
                delay = pacer.failed()
                log.error("cluster_start_failed", cluster=runtime.name, error=message, retry_in=delay)
                runtime.first_attempt.set()
                runtime.stop_event.wait(delay)
                continue
            if runtime.stop_event.is_set():
                return
            runtime.state, runtime.start_error = "running", None
            log.info("cluster_started", cluster=runtime.name, leader=runtime.leader)
            return

    def _start_steps(self, runtime: ClusterRuntime) -> None:
        from contentflow_backupd.daemon.clientcheck import check_client_tools

        app = runtime.app
        # client tools older than the server: ConfigError
        check_client_tools(app.conninfo, app.mode, app.pg_bin)
        if runtime.repo is None:
            runtime.open_repository()
        if runtime.lock is None and self.membership is None:
            # SQLite: the daemon's file lock, held already, makes it every cluster's leader. In
            # a fleet (PostgreSQL) the cluster's lease does (daemon/fleetrun.py).
            runtime.lock = self._lock
        runtime.adopt_old_rows()
        if runtime.runner is None:
            runtime.start()
        runtime.probe_dependencies(self._catalog_dep)
        runtime.probe_state(leader=False)
        self._lead_owned(runtime)

    # -- job routing -----------------------------------------------------------------------------
    def _handler_key(self, name: str) -> str | None:
        """The ``scheduling.jobs`` handler key of cluster ``name``: None (bare ids) for the
        implicit cluster, else its name."""
        return None if self.fleet.implicit else name

    def _install_handler(self, name: str) -> None:
        from contentflow_backupd.scheduling import jobs

        key = self._handler_key(name)
        jobs.install(functools.partial(self._run_job, key), key)

    def _uninstall_handler(self, name: str) -> None:
        from contentflow_backupd.scheduling import jobs

        key = self._handler_key(name)
        if key is not None:
            jobs.install(None, key)
        else:
            jobs.install(None)

    def _run_job(self, cluster: str | None, job: str, trigger: RunTrigger) -> None:
        """On a scheduler worker thread: run ``job`` of ``cluster`` (None: a bare id) on its
        runtime; a job of no runtime of this daemon is logged and not run."""
        runtime = runtime_for(self.runtimes, cluster)
        if runtime is None:
            from contentflow_backupd.scheduling.jobs import job_id_for

            log.error("job_cluster_unknown", job=job_id_for(cluster, job), clusters=sorted(self.runtimes))
            return
        runtime.run_job(job, trigger)

    def _record_skipped(self) -> None:
        """The fires the scheduler skipped, recorded by their cluster's runtime."""
        if self._scheduler is None or self._catalog is None:
            return
        from contentflow_backupd.daemon.cluster import runtime_for
        from contentflow_backupd.scheduling.jobs import parse_job_id

        for job_id, reason in self._scheduler.take_skipped():
            try:
                cluster, job = parse_job_id(job_id)
            except ValueError as exc:
                log.error("job_id_invalid", job=job_id, error=str(exc))
                continue
            runtime = runtime_for(self.runtimes, cluster)
            if runtime is None:
                log.error(
                    "skipped_job_cluster_unknown", job=job_id, reason=reason, clusters=sorted(self.runtimes)
                )
                continue
            runtime.record_skipped(job, reason)

    # -- leadership ----------------------------------------------------------------------------
    def _lead(self, runtime: ClusterRuntime) -> None:
        """This daemon now runs ``runtime``'s jobs: its job store, its jobs, its WAL stream."""
        if self._scheduler is None or runtime.leader or self.stopping.is_set() or runtime.stop_event.is_set():
            return
        runtime.schedule(self._scheduler, bare=self.fleet.implicit)
        runtime.leader = True
        runtime.metrics.set_leader(True)
        log.info("leader_acquired", cluster=runtime.name, by="file lock" if runtime.lock else "lease")
        runtime.start_stream()

    # -- stop and reschedule ---------------------------------------------------------------------
    def stop_cluster(self, name: str, *, grace_s: float | None = None) -> None:
        """Stop serving cluster ``name`` (module docstring); blocks until its jobs and stream
        stopped. ``grace_s``: how long its running jobs may take to finish before they are
        cancelled (default: the shutdown grace). A cluster not served is logged and ignored."""
        with self._clusters_lock:
            runtime = self.runtimes.get(name)
        if runtime is None:
            log.warning("cluster_not_served", cluster=name)
            return
        runtime.stop_event.set()
        grace = self.fleet.shutdown_grace_s if grace_s is None else grace_s
        log.info("cluster_stopping", cluster=name, grace_s=grace)
        if self._scheduler is not None:
            self._scheduler.remove_cluster(name)  # no new runs; its rows stay
        runtime.leader = False
        runtime.stop_wal_service(5.0)
        deadline = time.monotonic() + grace
        while runtime.running() and time.monotonic() < deadline:
            time.sleep(STOP_POLL)
        if runtime.running() and runtime.runner is not None:
            cancelled = runtime.runner.cancel_all()
            log.warning("cluster_jobs_cancelled", cluster=name, jobs=[j.job for j in cancelled])
            for job in cancelled:
                job.thread.join(timeout=30.0)
        runtime.stop_stream(30.0, forget=True)
        runtime.close_notifier(10.0)
        runtime.state = "stopped"
        with self._clusters_lock:
            self.runtimes.pop(name, None)
        self._uninstall_handler(name)
        self.all_metrics.remove_cluster(name)
        log.info("cluster_stopped", cluster=name)

    def reschedule_cluster(self, name: str, app: DaemonApp) -> None:
        """Register cluster ``name``'s jobs again from ``app.job_specs`` (a schedule changed):
        unchanged triggers keep their next fire time. The runtime keeps its parts and takes
        ``app`` for later registrations. A cluster not served is logged and ignored."""
        with self._clusters_lock:
            runtime = self.runtimes.get(name)
        if runtime is None:
            log.warning("cluster_not_served", cluster=name)
            return
        runtime.app = app
        if runtime.leader and self._scheduler is not None:
            self._scheduler.add_cluster(
                name, runtime.scope, app.job_specs, bare=self.fleet.implicit, timezone=app.timezone
            )
        log.info("cluster_rescheduled", cluster=name, leader=runtime.leader)
