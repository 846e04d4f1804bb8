"""The daemon process: start-up, the supervising main loop, leadership and two-signal shutdown.
See the package docstring for the order of events.

``Daemon`` is the process: signals, the main loop, HTTP, the scheduler, the watchdog, the
shutdown, the catalog and the leader lock. What belongs to one cluster (its repository and scope,
its jobs, its WAL, its probes and health) is a ``daemon/cluster.py: ClusterRuntime``, one per
cluster served in ``Daemon.runtimes`` (one today); a fired job is routed to its cluster's runtime
(``cluster.runtime_for``)."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog

from contentflow_backupd import __version__
from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.daemon.cluster import ClusterRuntime, runtime_for
from contentflow_backupd.daemon.exits import EXIT_FAILED_STOP, arm_exit, exit_now, raise_in_thread
from contentflow_backupd.daemon.parts import DaemonApp
from contentflow_backupd.daemon.reload import Reloader, ReloadSource
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import RunTrigger, Scope
from contentflow_backupd.observability import progress
from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.procs import terminate_children
from contentflow_backupd.sdnotify import SystemdNotifier
from contentflow_backupd.signals import Interrupted, SignalWatch

log = structlog.get_logger(__name__)

LOOP_INTERVAL = 1.0
LEADER_POLL = 5.0
PROBE_INTERVAL = 15.0
CHILD_STOP_WAIT = 10.0
"""After the grace period: how long the stopped jobs get to record their runs ``interrupted``."""
EXIT_MARGIN = 25.0
"""The process is gone at the latest ``BACKUPD_SHUTDOWN_GRACE`` + this after the first signal,
whatever blocks (a hung catalog, a child that ignores SIGTERM): then it exits 1."""
STOP_NOW_WAIT = 15.0
"""After a second signal the process is gone within this (exit 128 + the signal's number)."""
PROGRESS_FILE = "progress.json"
"""In the state directory: what the daemon's running jobs have done (``status`` reads it)."""


def run_daemon(app: DaemonApp, reload: ReloadSource | None = None) -> int:
    return Daemon(app, reload).run()


class Daemon:
    def __init__(self, app: DaemonApp, reload: ReloadSource | None = None) -> None:
        self.app = app
        self.sd = SystemdNotifier.from_env()
        self.all_metrics = Metrics(__version__)
        """The registry /metrics exposes: the daemon-level series and each cluster's."""
        self.metrics = self.all_metrics.add_cluster(app.cluster)
        """This daemon's one cluster's series (``cluster="<BACKUPD_CLUSTER>"``)."""
        self.stopping = threading.Event()
        self.started = False
        self.leader = False
        self._watch: SignalWatch | None = None
        self._stop_signal: int | None = None
        self._stop_at = 0.0
        self._abort_signal: int | None = None
        self._abort = threading.Event()
        self._heartbeat = time.monotonic()
        self._catalog_up = False
        self._scheduler: Any = None
        self._http: Any = None
        self._lock: Any = None
        self._catalog: Catalog | None = None
        self.runtimes: dict[str, ClusterRuntime] = {}
        """The clusters this daemon serves, by name: one today, ``app.cluster``'s."""
        self._reloader = Reloader(
            reload, metrics=self.all_metrics, stopping=self.stopping, audit=self._audit_config
        )
        """SIGHUP (daemon/reload.py); no target yet: only a reload that changes no cluster applies."""

    # -- start-up ----------------------------------------------------------------------------
    def run(self) -> int:
        from contentflow_backupd.scheduling.scheduler import build_trigger

        app = self.app
        specs = app.job_specs
        self._objectives = app.objectives
        for spec in specs:
            if spec.schedule.kind != "off":
                build_trigger(spec, app.timezone)  # ConfigError (exit 2) names the setting
        self._install_signals()
        try:
            self._start()
            self._main_loop()
        finally:
            self._shutdown()
        code = 0 if self._abort_signal is None else 128 + self._abort_signal
        if self._running_jobs():
            # A job thread that did not stop would keep the interpreter from exiting (it joins
            # the scheduler's worker threads): leave now, its run is reaped as interrupted.
            exit_now(code)
        return code

    def _start(self) -> None:
        app = self.app
        log.info("daemon_starting", version=__version__, cluster=app.cluster, mode=app.mode, pid=os.getpid())
        from contentflow_backupd.daemon.clientcheck import check_client_tools

        # client tools older than the server: ConfigError, exit 2
        check_client_tools(app.conninfo, app.mode, app.pg_bin)
        self._catalog = app.open_catalog()
        self._catalog_up = True
        self._lock = app.leader_lock()
        if self._lock.mode == "exclusive":
            self._lock.require()  # a second daemon on one SQLite catalog is refused
        runtime = ClusterRuntime(app, self._catalog, self.metrics)
        self.runtimes[runtime.name] = runtime
        runtime.open_repository()
        if self._lock.mode == "shared":
            # One leader per repository and cluster: daemons of other clusters or repositories
            # on this PostgreSQL catalog lead their own (the lock is taken in _poll_leadership).
            self._lock = app.leader_lock(self._scope)
        runtime.adopt_old_rows()
        self._audit_config()
        self._cleanup_drills()
        runtime.start()
        self._install_job_handlers()
        self._start_http()
        if self._lock.mode == "exclusive":
            self._become_leader()
        else:
            self._poll_leadership()
        self.started = True
        self._probe_dependencies()
        threading.Thread(target=self._probe_loop, name="dependency-probes", daemon=True).start()
        self.sd.ready()
        self.sd.status(self._status_text())
        log.info("daemon_ready", leader=self.leader, http=app.http_listen)

    def _audit_config(self, view: Mapping[str, str] | None = None) -> None:
        """``config_changed`` in the audit trail when the settings (``view``: this start's, or a
        reload's) differ from the last recorded ones."""
        from contentflow_backupd.ops.audit import record_config

        assert self._catalog is not None
        view = view if view is not None else {row["name"]: row["value"] for row in self.app.settings_view({})}
        record_config(self._catalog, view, self._runtime().repo)

    def _cleanup_drills(self) -> None:
        """Scratch instances and files of drills a crash left behind (``kill -9``) go first."""
        from contentflow_backupd.ops.drill.workspace import cleanup_stale_drills

        pg = self.app.pg_drivers()
        try:
            removed = cleanup_stale_drills(
                self.app.state_dir(),
                scratch=pg.scratch,
                admin=pg.admin,
                database=self.app.drill_options().database,
            )
        except BackupdError as exc:
            log.warning("drill_cleanup_failed", error=exc.message)
            return
        if removed:
            log.info("stale_drills_removed", drills=removed)

    @property
    def _scope(self) -> Scope:
        """The scope of the daemon's leader lock and job table: its one runtime's."""
        return self._runtime().scope

    def _runtime(self) -> ClusterRuntime:
        """The one cluster this daemon serves (step 5 of docs/design/fleet.md: several)."""
        return next(iter(self.runtimes.values()))

    def _install_job_handlers(self) -> None:
        """Fired jobs go to their cluster's runtime (``_run_job``): bare ids (the job table of
        this daemon's scope) and ``<cluster>:<job>`` ids of each runtime's cluster."""
        from contentflow_backupd.scheduling import jobs

        for cluster in [None, *self.runtimes]:
            jobs.install(functools.partial(self._run_job, cluster), cluster)

    def _run_job(self, cluster: str | None, job: str, trigger: RunTrigger) -> None:
        """On a scheduler worker thread: run ``job`` of ``cluster`` (None: a bare id) on its
        runtime; a job of no runtime of this daemon is logged and not run."""
        runtime = runtime_for(self.runtimes, cluster)
        if runtime is None:
            from contentflow_backupd.scheduling.jobs import job_id_for

            log.error("job_cluster_unknown", job=job_id_for(cluster, job), clusters=sorted(self.runtimes))
            return
        runtime.run_job(job, trigger)

    def _running_jobs(self) -> list[Any]:
        return [job for runtime in self.runtimes.values() for job in runtime.running()]

    def _start_http(self) -> None:
        if self.app.http_listen == "off":
            return
        from contentflow_backupd.http.server import HttpServer

        self._http = HttpServer(self.app.http_listen, self.all_metrics, self)
        self._http.start()
        log.info("http_listening", listen=self.app.http_listen, port=self._http.port)

    # -- leadership --------------------------------------------------------------------------
    def _become_leader(self) -> None:
        from contentflow_backupd.scheduling.scheduler import Scheduler

        app = self.app
        assert self._catalog is not None
        self.leader = True
        self.metrics.set_leader(True)
        log.info("leader_acquired", mode=self._lock.mode)
        sched = Scheduler(
            self._catalog.engine,
            app.timezone,
            scope=self._scope,
            max_workers=app.max_concurrent_jobs,
            on_queue_wait=self.all_metrics.scheduler_queue_wait,
        )
        for runtime in self.runtimes.values():
            runtime.schedule(sched)
        sched.resume()
        self._scheduler = sched
        for runtime in self.runtimes.values():
            runtime.start_stream()

    def _lose_leadership(self) -> None:
        log.error("leader_lost", action="stopped scheduling; trying to get the lock back")
        self.leader = False
        self.metrics.set_leader(False)
        if self._scheduler is not None:
            self._scheduler.shutdown()
            self._scheduler = None
        for runtime in self.runtimes.values():
            runtime.stop_stream(forget=True)

    def _poll_leadership(self) -> None:
        if self.stopping.is_set():
            return
        if self.leader:
            if not self._lock.check():
                self._lose_leadership()
            return
        if self._lock.try_acquire():
            self._become_leader()
        else:
            self.metrics.set_leader(False)

    # -- main loop -----------------------------------------------------------------------------
    def _main_loop(self) -> None:
        next_leader_poll = time.monotonic() + LEADER_POLL
        while not self.stopping.is_set():
            self._heartbeat = time.monotonic()
            if self._lock.mode == "shared" and time.monotonic() >= next_leader_poll:
                self._poll_leadership()
                next_leader_poll = time.monotonic() + LEADER_POLL
            self._update_next_runs()
            self._record_skipped()
            self._publish_progress()
            self._reloader.poll()
            if self.live():
                self.sd.watchdog()
            self.stopping.wait(LOOP_INTERVAL)

    def _publish_progress(self) -> None:
        """The running jobs' progress for `status` (another process): ``progress.json`` in the
        state directory, removed when nothing runs (observability/progress.py)."""
        try:
            progress.publish(self.app.state_dir() / PROGRESS_FILE)
        except (OSError, BackupdError) as exc:
            log.debug("progress_not_published", error=str(exc))

    def _update_next_runs(self) -> None:
        runs = self._scheduler.next_runs() if self._scheduler is not None else {}
        from contentflow_backupd.scheduling.scheduler import JOB_IDS

        for job in JOB_IDS:
            when = runs.get(job)
            self.metrics.set_next_run(job, when.timestamp() if when else None)

    def _record_skipped(self) -> None:
        """The fires the scheduler skipped, recorded by their cluster's runtime."""
        if self._scheduler is None or self._catalog is None:
            return
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

    def _status_text(self) -> str:
        if not self.leader:
            return "standby: another daemon is the leader"
        runs = self._scheduler.next_runs() if self._scheduler is not None else {}
        parts = [f"{job} {when:%Y-%m-%d %H:%M:%S}" for job, when in runs.items() if when is not None]
        return "next: " + (", ".join(parts) if parts else "nothing scheduled")

    def _probe_loop(self) -> None:
        last_status = ""
        while not self.stopping.wait(PROBE_INTERVAL):
            self._probe_dependencies()
            text = self._status_text()
            if text != last_status:
                self.sd.status(text)
                last_status = text

    def _probe_dependencies(self) -> None:
        """Each runtime's dependencies, and the WAL archive's state in physical mode, for
        /healthz, /readyz and ``backupd_dependency_up`` (on this thread: a hanging server never
        blocks a probe)."""
        for runtime in self.runtimes.values():
            deps = runtime.probe_dependencies()
            self._catalog_up = deps["catalog"].up
            runtime.probe_state(leader=self.leader)

    # -- probes for the HTTP endpoints -----------------------------------------------------
    def live(self) -> bool:
        if time.monotonic() - self._heartbeat > 10 * LOOP_INTERVAL + 5:
            return False
        return not self.leader or self._scheduler is None or self._scheduler.alive()

    def ready(self) -> bool:
        return self.started and not self.stopping.is_set() and self._catalog_up

    def health(self) -> Any:
        """The health of the one cluster served (``ClusterRuntime.health``)."""
        return self._runtime().health(leader=self.leader, objectives=self._objectives)

    # -- signals and shutdown --------------------------------------------------------------
    def _install_signals(self) -> None:
        """SIGTERM and SIGINT are only recorded in their handler; ``_on_signal`` runs on the
        signal-watch thread (see ``contentflow_backupd.signals``), so a main thread blocked
        anywhere (a stalled notify socket, a hung catalog) never keeps the daemon from stopping.
        SIGHUP too, when the daemon has a reload source: it asks for a reload (``_reloader``)."""
        self._watch = SignalWatch(self._on_signal, on_reload=self._reloader.on_reload).install()

    def _on_signal(self, signum: int, count: int) -> None:
        """On the signal-watch thread, never in a handler: log, wake the main loop, arm the
        deadline by which the process is gone whatever blocks."""
        name = signal.Signals(signum).name
        if count == 1:
            self._stop_signal = signum
            self._stop_at = time.monotonic()
            grace = self._grace()
            log.info("daemon_stopping", signal=name, grace=self.app.shutdown_grace)
            self.stopping.set()
            self.sd.stopping()
            arm_exit(grace + EXIT_MARGIN, EXIT_FAILED_STOP, "the shutdown did not finish in time")
        elif count == 2:
            log.warning("daemon_stopping_now", signal=name)
            self._abort_signal = signum
            self._abort.set()
            self.stopping.set()
            arm_exit(STOP_NOW_WAIT, 128 + signum, "a second signal: stop now")

    def _left(self, cap: float) -> float:
        """How long a step of the shutdown may take: at most ``cap``, 2 s after a second signal,
        and within the deadline armed at the first signal (keeping 5 s for the rest)."""
        if self._abort.is_set():
            return 2.0
        if not self._stop_at:
            return cap
        left = self._stop_at + self._grace() + EXIT_MARGIN - time.monotonic() - 5.0
        return max(1.0, min(cap, left))

    def _grace(self) -> float:
        return self.app.shutdown_grace_s

    def _shutdown(self) -> None:
        self.stopping.set()
        self.sd.stopping()
        self._reloader.join(self._left(10.0))  # a reload in progress ends (refused) or finishes
        for runtime in self.runtimes.values():
            # First: new pushes go direct; the running ones get a few seconds to finish.
            runtime.stop_wal_service(self._left(5.0))
        if self._scheduler is not None:
            self._scheduler.shutdown()  # no new runs
        runners = [r.runner for r in self.runtimes.values() if r.runner is not None]
        if runners:
            deadline = (self._stop_at or time.monotonic()) + self._grace()
            while self._running_jobs() and time.monotonic() < deadline and not self._abort.is_set():
                self._abort.wait(0.2)
            if self._running_jobs():
                self._stop_running_jobs(runners)
        for runtime in self.runtimes.values():
            runtime.stop_stream(self._left(10.0))
        if self._http is not None:
            self._http.stop()
        for runtime in self.runtimes.values():
            runtime.close_notifier(self._left(10.0))
        if self._lock is not None:
            self._lock.release()
        if self._catalog is not None:
            self._catalog.close()
        from contentflow_backupd.scheduling import jobs

        jobs.install(None)
        log.info("daemon_stopped")

    def _stop_running_jobs(self, runners: list[Any]) -> None:
        """The grace period is over: stop the running jobs' children and let them record the run
        as interrupted."""
        names = [r.job for r in self._running_jobs()]
        log.warning("stopping_running_jobs", jobs=names)
        for runner in runners:
            runner.cancel_all()
        for job in self._running_jobs():
            raise_in_thread(job.thread, Interrupted)
        time.sleep(0.5)
        for pid in terminate_children(None):  # every child, not only the jobs' (owner None)
            log.info("child_stopped", pid=pid)
        # A job blocked in a query (a drill's check, a lock wait) returns to Python only then.
        cancelled = self.app.pg_drivers().admin.cancel_queries(None)
        if cancelled:
            log.info("queries_cancelled", connections=cancelled)
        deadline = time.monotonic() + CHILD_STOP_WAIT
        while self._running_jobs() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._running_jobs():
            log.error("jobs_did_not_stop", jobs=[r.job for r in self._running_jobs()])
