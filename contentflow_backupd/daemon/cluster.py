"""One cluster served by the daemon: its repository and scope, its jobs, its WAL, its probes.

``ClusterRuntime`` is the per-cluster half of the daemon (``lifecycle.Daemon`` is the process
half: signals, main loop, HTTP, scheduler, watchdog, shutdown, catalog). The daemon holds one
runtime per cluster it serves in ``Daemon.runtimes`` and starts each on a thread of its own
(``daemon/control.py``); ``state`` is ``starting`` until that start succeeded (``running``), or
``failed`` after a configuration error. The start calls, in order:

- ``open_repository()`` (initialised when the location is empty), then ``adopt_old_rows()``;
- ``start()``: the notifier, the ``JobRunner`` (and in physical mode the WAL watcher), the WAL
  socket;
- as leader of its cluster (``leader``, through ``lock``): ``schedule(scheduler)`` adds its job
  store and registers its jobs, ``start_stream()`` the WAL stream,
  ``stop_stream()`` when the leadership is lost or the daemon stops;
- ``run_job(job, trigger)`` runs a fired job (the daemon routes it here, ``runtime_for``),
  ``record_skipped(job, reason)`` a fire the scheduler skipped;
- ``probe_dependencies()`` then ``probe_state(leader)`` on a probe thread; ``health(...)``.

Nothing here reads settings: everything comes from the cluster's ``DaemonApp``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog

from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.daemon.parts import DaemonApp
from contentflow_backupd.errors import BackupdError, RepositoryError, RepositoryNotFound
from contentflow_backupd.model import RunTrigger, Scope, utcnow
from contentflow_backupd.observability.metrics import ClusterMetrics
from contentflow_backupd.ops.health.evaluate import DependencyState
from contentflow_backupd.repository.repository import Repository

log = structlog.get_logger(__name__)

_INIT_LOCK = threading.Lock()
"""Held while a runtime initialises an empty repository location."""

OBJECTIVES_INTERVAL = 60.0
"""The recovery window needs a LIST of the WAL archive: once a minute is enough for a metric
whose alert waits 5 minutes."""


def runtime_for(runtimes: Mapping[str, ClusterRuntime], cluster: str | None) -> ClusterRuntime | None:
    """The runtime that runs a job of ``cluster`` as ``scheduling.jobs.parse_job_id`` gives it:
    a named cluster's own runtime; for a bare job id (None) the daemon's only runtime (the
    implicit cluster's jobs keep bare ids; with several runtimes a bare id is ambiguous). None
    when no runtime runs that cluster's jobs (the caller logs it)."""
    if cluster is None:
        return next(iter(runtimes.values())) if len(runtimes) == 1 else None
    return runtimes.get(cluster)


class ClusterRuntime:
    """The daemon's part for one cluster (module docstring). Building it does no I/O."""

    def __init__(self, app: DaemonApp, catalog: Catalog, metrics: ClusterMetrics) -> None:
        self.app = app
        self.name = app.cluster
        self.catalog = catalog
        self.metrics = metrics
        self.repo: Repository | None = None
        self.scope = Scope("", app.cluster)
        """(repository id, cluster) of every catalog row this runtime reports; set once the
        repository is open (the empty id before matches no row)."""
        self.runner: Any = None
        """The ``JobRunner`` (``daemon/runtime.py``), once ``start()`` built it."""
        self.walwatch: Any = None
        self.walservice: Any = None
        self.notifier: Any = None
        self.deps: dict[str, Any] = {}
        self.wal_state: Any = None
        self.recovery: Any = None
        self._next_objectives = 0.0
        self.state = "starting"
        """``starting`` (its start runs or is retried), ``running``, ``failed`` (a configuration
        error: not retried) or ``stopped``."""
        self.start_error: str | None = None
        """Why the last start attempt failed (None: none failed)."""
        self.leader = False
        """Whether this daemon runs the cluster's jobs (holds its leader lock)."""
        self.lock: Any = None
        """The cluster's leader lock (``catalog/leader.py``), once its scope is known."""
        self.first_attempt = threading.Event()
        """Set once its first start attempt succeeded or failed."""
        self.stop_event = threading.Event()
        """Set by ``Daemon.stop_cluster``: ends a start being retried."""
        self.probing: Any = None
        """The probe task running for this cluster (a ``Future``), if any."""

    # -- start-up ----------------------------------------------------------------------------
    def open_repository(self) -> Repository:
        """Open the repository (initialised when its location is empty, refused when it holds
        objects but no ``repo.json``) and bind the scope to its id."""
        self.repo = self._open_or_init_repository()
        self.scope = Scope(self.repo.id, self.app.cluster)
        return self.repo

    def _open_or_init_repository(self) -> Repository:
        storage = self.app.storage()
        try:
            return self.app.repository()
        except RepositoryNotFound:
            pass
        with _INIT_LOCK:  # clusters sharing a repository start at once: one initialises it
            try:
                return self.app.repository()
            except RepositoryNotFound:
                pass
            if next(iter(storage.list("")), None) is not None:
                raise RepositoryError(
                    f"{storage.url} holds objects but no repo.json: refusing to initialise a repository",
                    hint="point BACKUPD_REPOSITORY at an empty location or at an existing repository",
                ) from None
            repo = self.app.init_repository()
            log.info(
                "repository_initialised", url=repo.storage.url, repository_id=repo.id, key_id=repo.kek_id
            )
            return repo

    def adopt_old_rows(self) -> None:
        """Catalog rows from before revision 0008 whose backups are in this repository become
        this repository's (``ops.repo.scope``); the repository id is remembered for this URL."""
        from contentflow_backupd.ops.repo.scope import resolve_scope

        assert self.repo is not None
        try:
            resolve_scope(self.repo.storage, self.catalog, self.app.cluster)
        except BackupdError as exc:
            log.warning("catalog_rows_not_attributed", error=exc.message)

    def start(self) -> None:
        """The notifier, the job runner (seeded from the catalog) and the WAL socket."""
        self.notifier = self.app.notifier()
        self._build_runner()
        self._start_wal_service()

    def _build_runner(self) -> None:
        from contentflow_backupd.daemon.runtime import JobRunner

        app = self.app
        assert self.repo is not None
        wal_tick = None
        wal_job = {spec.id: spec for spec in app.job_specs}["wal"]
        if app.mode == "physical" and wal_job.schedule.kind != "off":
            self.walwatch = app.wal_watcher(self.repo, self.metrics, self.catalog)
            wal_tick = self.walwatch.tick
            try:  # the WAL counter from the start, not only from the first WAL check
                self.walwatch.update_archived_total()
            except BackupdError as exc:
                log.warning("wal_archive_unreadable", error=exc.message)
        self.runner = JobRunner(app, self.repo, self.catalog, self.metrics, self.notifier, wal_tick=wal_tick)

    def _start_wal_service(self) -> None:
        """The WAL socket ``wal push`` hands segments to: served by every daemon of the
        repository and cluster, leader or not (a push needs only the repository)."""
        assert self.repo is not None
        service = self.app.wal_service(self.repo, self.metrics)
        if service is not None and service.start():
            self.walservice = service

    # -- leadership --------------------------------------------------------------------------
    def schedule(self, scheduler: Any, *, bare: bool = False) -> None:
        """Add this cluster's job store to ``scheduler`` and register its jobs (``bare``: the
        implicit cluster's bare ids); without any good backup yet, a full one runs soon."""
        scheduler.add_cluster(
            self.name, self.scope, self.app.job_specs, bare=bare, timezone=self.app.timezone
        )
        if self.app.full_scheduled and not self.catalog.list_backups(self.scope, ["succeeded"]):
            # no backup yet: do not wait for the first fire time
            scheduler.run_soon(scheduler.job_id("full", self.name), store=self.name)

    def start_stream(self) -> None:
        """The supervised ``pg_receivewal`` when the WAL method is (or resolves to) stream."""
        from contentflow_backupd.daemon.walwatch import choose_wal_method

        if (
            self.walwatch is not None
            and self.repo is not None
            and choose_wal_method(self.app.wal_method, self.walwatch) == "stream"
        ):
            self.walwatch.stream = self.app.stream_supervisor(self.repo, self.metrics)
            self.walwatch.stream.start()
            log.info("wal_stream_supervised", slot=self.app.wal_slot)

    def stop_stream(self, timeout: float = 30.0, *, forget: bool = False) -> None:
        """Stop the WAL stream if it runs; ``forget``: drop it too (the leadership is lost, a
        new leadership starts a new one)."""
        if self.walwatch is not None and self.walwatch.stream is not None:
            self.walwatch.stream.stop(timeout=timeout)
            if forget:
                self.walwatch.stream = None

    # -- jobs --------------------------------------------------------------------------------
    def run_job(self, job: str, trigger: RunTrigger) -> None:
        """Run ``job`` (a bare name: ``full``) on the calling scheduler worker thread."""
        if self.runner is None:
            log.error("job_before_start", cluster=self.name, job=job)
            return
        self.runner(job, trigger)

    def running(self) -> list[Any]:
        """The jobs running now (``RunningJob``)."""
        return [] if self.runner is None else list(self.runner.running())

    def record_skipped(self, job: str, reason: str) -> None:
        """A fire the scheduler skipped, recorded as a ``skipped`` run of this cluster."""
        try:
            run = self.catalog.start_run(
                self.scope, job, "scheduled", pid=os.getpid(), host=socket.gethostname()
            )
            self.catalog.finish_run(run.id, "skipped", error=reason)
        except BackupdError as exc:
            log.error("catalog_update_failed", error=exc.message)

    # -- probes ------------------------------------------------------------------------------
    def probe_dependencies(self, catalog_state: DependencyState | None = None) -> dict[str, Any]:
        """The database, the storage and the catalog (``catalog_state`` when the daemon probed
        it already), for /healthz, /readyz and ``backupd_dependency_up``."""
        from contentflow_backupd.ops.health.inputs import probe_dependencies

        assert self.repo is not None
        deps = probe_dependencies(
            self.app.database_probe(),
            self.repo.storage,
            self.catalog,
            self.app.open_catalog,
            catalog_state=catalog_state,
        )
        for name, state in deps.items():
            self.metrics.set_dependency(name, state.up)
        self.deps = deps
        return deps

    def probe_state(self, *, leader: bool) -> None:
        """After ``probe_dependencies()``: migrations (catalog up), the WAL archive's state in
        physical mode (the leader's watcher guards on it), the recovery objectives."""
        from contentflow_backupd.ops.health.evaluate import WalState
        from contentflow_backupd.ops.health.inputs import wal_health_state
        from contentflow_backupd.repository.walarchive import WalArchive

        app = self.app
        assert self.repo is not None
        if self.deps["catalog"].up:
            self._probe_migrations()
        if app.mode == "physical":
            try:
                self.wal_state = wal_health_state(WalArchive(self.repo, app.cluster), app.archiver_status())
            except BackupdError as exc:
                self.wal_state = WalState(None, None, False, f"cannot read the WAL archive: {exc.message}")
            self._count_wal(self.wal_state)
            if leader and self.walwatch is not None:
                self.walwatch.guard(self.wal_state)
        if time.monotonic() >= self._next_objectives:
            self._next_objectives = time.monotonic() + OBJECTIVES_INTERVAL
            self._probe_objectives()

    def _count_wal(self, state: Any) -> None:
        """``backupd_wal_archived_segments_total`` from the listing the probe just made: the
        segments stored plus those retention deleted (the catalog), whoever pushed them."""
        if state is None or state.segments is None:
            return
        try:
            deleted = self.catalog.count_deleted_wal_segments(self.scope)
        except BackupdError as exc:
            log.warning("wal_deletions_unreadable", error=exc.message)
            return
        self.metrics.set_wal_archived_total(state.segments + deleted)

    def _probe_objectives(self) -> None:
        """The recovery window and the RPO if the server died now (``backupd_recovery_point_age_
        seconds``), the RTO estimate; for /healthz."""
        from contentflow_backupd.ops.health.inputs import recovery_state
        from contentflow_backupd.ops.health.objectives import recovery_objectives

        app = self.app
        assert self.repo is not None
        try:
            report = recovery_objectives(
                self.repo,
                self.catalog,
                app.cluster,
                app.mode,
                rto_objective_s=app.rto_objective_s,
                rpo_objective_s=app.rpo_objective_s,
            )
        except BackupdError as exc:
            log.warning("recovery_objectives_unknown", error=exc.message)
            return
        self.metrics.set_recovery_point_age(report.get("recovery_point_age_seconds"))
        self.recovery = recovery_state(report)

    def _probe_migrations(self) -> None:
        """``backupd_migration_*`` from the catalog (``migrate`` runs as its own command)."""
        try:
            runs = [r for r in self.catalog.list_migration_runs(self.scope) if not r.dry_run]
        except BackupdError as exc:
            log.warning("migration_runs_unreadable", error=exc.message)
            return
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        done = [r for r in runs if r.finished_at is not None]
        last = done[-1].details.get("duration_seconds") if done else None
        self.metrics.set_migration_runs(counts, None if last is None else float(last))

    def health(self, *, leader: bool, objectives: Any) -> Any:
        """This cluster's ``HealthReport`` from the last probes and the catalog; while it has
        not started, one failing ``cluster_start`` check (``ops/health/fleet.py``)."""
        from contentflow_backupd.ops.health.evaluate import evaluate_health
        from contentflow_backupd.ops.health.fleet import starting_report
        from contentflow_backupd.ops.health.inputs import collect_health_inputs

        if self.state != "running" or not self.deps:
            if self.state == "running":  # started, not probed yet
                return starting_report("starting", "the first probe has not run yet", utcnow())
            return starting_report(self.state, self.start_error, utcnow())

        try:
            inputs = collect_health_inputs(
                self.catalog,
                self.scope,
                dependencies=dict(self.deps),
                wal=self.wal_state,
                leader=leader,
                drills=self.app.drills_scheduled,
                recovery=self.recovery,
            )
        except BackupdError as exc:
            log.warning("catalog_unavailable", error=exc.message)
            inputs = collect_health_inputs(
                None, self.scope, dependencies=dict(self.deps), wal=self.wal_state, leader=leader
            )
        return evaluate_health(inputs, objectives, utcnow())

    # -- shutdown ----------------------------------------------------------------------------
    def stop_wal_service(self, timeout: float) -> None:
        """New pushes go direct; the running ones get ``timeout`` seconds to finish."""
        if self.walservice is not None:
            self.walservice.stop(timeout=timeout)

    def close_notifier(self, timeout: float) -> None:
        if self.notifier is not None:
            self.notifier.close(timeout)
