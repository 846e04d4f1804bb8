"""The daemon process: start-up, the supervising main loop, the probes and two-signal shutdown.
See the package docstring for the order of events.

``Daemon`` is the process: signals, the main loop, HTTP, the scheduler, the watchdog, the
shutdown and the catalog. What belongs to one cluster (its repository and scope, its leader lock,
its jobs, its WAL, its probes and health) is a ``daemon/cluster.py: ClusterRuntime``, one per
cluster served in ``Daemon.runtimes``, each started on a thread of its own and stopped or
rescheduled one at a time (``daemon/control.py: ClusterControl``); a fired job is routed to its
cluster's runtime (``cluster.runtime_for``). ``READY=1`` waits for the catalog, the scheduler, the
HTTP listener and each cluster's first start attempt (``FIRST_ATTEMPT_WAIT`` at most), never for
a cluster to start."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from contentflow_backupd import __version__
from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.daemon.cluster import ClusterRuntime
from contentflow_backupd.daemon.control import ClusterControl
from contentflow_backupd.daemon.exits import EXIT_FAILED_STOP, arm_exit, exit_now, raise_in_thread
from contentflow_backupd.daemon.fleetrun import FleetRun
from contentflow_backupd.daemon.parts import FleetApp
from contentflow_backupd.daemon.reload import Reloader, ReloadSource
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.observability import progress
from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.ops.health.evaluate import DependencyState
from contentflow_backupd.procs import terminate_children
from contentflow_backupd.sdnotify import SystemdNotifier
from contentflow_backupd.signals import Interrupted, SignalWatch

log = structlog.get_logger(__name__)

LOOP_INTERVAL = 1.0
LEADER_POLL = 5.0
PROBE_INTERVAL = 15.0
FIRST_ATTEMPT_WAIT = 30.0
"""``READY=1`` waits at most this long for each cluster's first start attempt (done or failed),
never for a cluster to start."""
PROBE_WORKERS = 8
"""Threads probing clusters at once; a cluster whose last probe still runs is skipped."""
CHILD_STOP_WAIT = 10.0
"""After the grace period: how long the stopped jobs get to record their runs ``interrupted``."""
EXIT_MARGIN = 25.0
"""The process is gone at the latest ``BACKUPD_SHUTDOWN_GRACE`` + this after the first signal,
whatever blocks (a hung catalog, a child that ignores SIGTERM): then it exits 1."""
STOP_NOW_WAIT = 15.0
"""After a second signal the process is gone within this (exit 128 + the signal's number)."""
PROGRESS_FILE = "progress.json"
"""In the state directory: what the daemon's running jobs have done (``status`` reads it)."""


def run_daemon(fleet: FleetApp, clusters: list[str] | None = None, reload: ReloadSource | None = None) -> int:
    """Serve ``clusters`` (default: every configured cluster) until a signal stops the daemon."""
    return Daemon(fleet, clusters, reload).run()


class Daemon(ClusterControl, FleetRun):
    def __init__(
        self, fleet: FleetApp, clusters: list[str] | None = None, reload: ReloadSource | None = None
    ) -> None:
        self.fleet = fleet
        self.clusters = list(fleet.cluster_names if clusters is None else clusters)
        """The clusters served from the start."""
        self.sd = SystemdNotifier.from_env()
        self.all_metrics = Metrics(__version__)
        """The registry /metrics exposes: the daemon-level series and each cluster's."""
        self.stopping = threading.Event()
        self.started = False
        self._watch: SignalWatch | None = None
        self._stop_signal: int | None = None
        self._stop_at = 0.0
        self._abort_signal: int | None = None
        self._abort = threading.Event()
        self._heartbeat = time.monotonic()
        self._catalog_up = False
        self._catalog_dep: DependencyState | None = None
        self._scheduler: Any = None
        self._http: Any = None
        self._lock: Any = None
        self._catalog: Catalog | None = None
        self._fatal: BaseException | None = None
        self._clusters_lock = threading.Lock()
        self._probes: ThreadPoolExecutor | None = None
        self.runtimes: dict[str, ClusterRuntime] = {}
        """The clusters this daemon serves, by name (in a fleet: those whose lease it holds)."""
        self._init_fleet()
        self._reloader = Reloader(
            reload, metrics=self.all_metrics, stopping=self.stopping, target=self, audit=self._audit_config
        )
        """SIGHUP: daemon/reload.py, applied through start/stop/reschedule_cluster."""

    @property
    def leader(self) -> bool:
        """Whether this daemon runs the jobs of at least one cluster."""
        return any(r.leader for r in list(self.runtimes.values()))

    # -- start-up ----------------------------------------------------------------------------
    def run(self) -> int:
        from contentflow_backupd.scheduling.scheduler import build_trigger

        for name in self.clusters:
            app = self.fleet.cluster(name)
            for spec in app.job_specs:
                if spec.schedule.kind != "off":
                    build_trigger(spec, app.timezone)  # ConfigError (exit 2) names the setting
        self._install_signals()
        try:
            self._start()
            self._main_loop()
        finally:
            self._shutdown()
        if self._fatal is not None:
            raise self._fatal  # a cluster's configuration error at start-up: exit 2
        code = 0 if self._abort_signal is None else 128 + self._abort_signal
        if self._running_jobs():
            # A job thread that did not stop would keep the interpreter from exiting (it joins
            # the scheduler's worker threads): leave now, its run is reaped as interrupted.
            exit_now(code)
        return code

    def _start(self) -> None:
        from contentflow_backupd.scheduling.scheduler import Scheduler

        fleet = self.fleet
        log.info("daemon_starting", version=__version__, clusters=self.clusters, pid=os.getpid())
        self._catalog = fleet.open_catalog()
        self._catalog_up = True
        self._lock = fleet.leader_lock()
        if self._lock.mode == "exclusive":
            self._lock.require()  # a second daemon on one SQLite catalog is refused
        self._audit_config()
        self._cleanup_drills()
        self._scheduler = Scheduler(
            self._catalog.engine,
            fleet.timezone,
            max_workers=fleet.max_concurrent_jobs,
            on_queue_wait=self.all_metrics.scheduler_queue_wait,
        )
        self._scheduler.resume()
        self._start_http()
        self._probe_catalog()
        if self._lock.mode == "shared":
            self._start_fleet()  # PostgreSQL: a cluster starts when its lease is gained
        else:
            for name in self.clusters:
                self._add_runtime(name, fleet.cluster(name), at_startup=True)
        deadline = time.monotonic() + FIRST_ATTEMPT_WAIT
        for runtime in list(self.runtimes.values()):
            while not runtime.first_attempt.wait(0.2) and time.monotonic() < deadline:
                if self.stopping.is_set():
                    return
        if self.stopping.is_set():
            return  # a signal, or a configuration error (``_fatal``) in a first attempt
        self.started = True
        self._probes = ThreadPoolExecutor(max_workers=PROBE_WORKERS, thread_name_prefix="probe")
        threading.Thread(target=self._probe_loop, name="dependency-probes", daemon=True).start()
        self.sd.ready()
        self.sd.status(self._status_text())
        log.info("daemon_ready", clusters=len(self.clusters), http=fleet.http_listen)

    def _audit_config(self, view: Mapping[str, str] | None = None) -> None:
        """``config_changed`` in the audit trail when the settings (``view``: this start's, or a
        reload's) differ from the last recorded ones."""
        from contentflow_backupd.ops.audit import record_config

        assert self._catalog is not None
        record_config(self._catalog, view if view is not None else self.fleet.config_view())

    def _cleanup_drills(self) -> None:
        """Scratch instances and files of drills a crash left behind (``kill -9``) go first."""
        from contentflow_backupd.ops.drill.workspace import cleanup_stale_drills

        pg = self.fleet.pg_drivers()
        try:
            removed = cleanup_stale_drills(
                self.fleet.state_dir(),
                scratch=pg.scratch,
                admin=pg.admin,
                database=self.fleet.drill_database(),
            )
        except BackupdError as exc:
            log.warning("drill_cleanup_failed", error=exc.message)
            return
        if removed:
            log.info("stale_drills_removed", drills=removed)

    def _running_jobs(self) -> list[Any]:
        return [job for runtime in list(self.runtimes.values()) for job in runtime.running()]

    def _start_http(self) -> None:
        if self.fleet.http_listen == "off":
            return
        from contentflow_backupd.http.server import HttpServer

        self._http = HttpServer(self.fleet.http_listen, self.all_metrics, self)
        self._http.start()
        log.info("http_listening", listen=self.fleet.http_listen, port=self._http.port)

    # -- main loop -----------------------------------------------------------------------------
    def _main_loop(self) -> None:
        next_leader_poll = time.monotonic() + LEADER_POLL
        while not self.stopping.is_set():
            self._heartbeat = time.monotonic()
            if time.monotonic() >= next_leader_poll:
                self._poll_fleet()
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
            progress.publish(self.fleet.state_dir() / PROGRESS_FILE)
        except (OSError, BackupdError) as exc:
            log.debug("progress_not_published", error=str(exc))

    def _update_next_runs(self) -> None:
        from contentflow_backupd.scheduling.scheduler import JOB_IDS

        for runtime in list(self.runtimes.values()):
            runs = self._scheduler.next_runs(runtime.name) if self._scheduler is not None else {}
            for job in JOB_IDS:
                when = runs.get(job)
                runtime.metrics.set_next_run(job, when.timestamp() if when else None)

    def _status_text(self) -> str:
        """systemd's ``STATUS=``: the next fires and how many clusters are served."""
        from contentflow_backupd.scheduling.jobs import job_id_for

        runtimes = list(self.runtimes.values())
        served = f"serving {len(runtimes)} cluster{'s' if len(runtimes) != 1 else ''}"
        starting = sum(1 for r in runtimes if r.state != "running")
        standby = sum(1 for r in runtimes if r.state == "running" and not r.leader)
        extra = [f"{n} {what}" for n, what in ((starting, "not started"), (standby, "standby")) if n]
        if extra:
            served += f" ({', '.join(extra)})"
        fires = []
        for runtime in runtimes:
            runs = self._scheduler.next_runs(runtime.name) if self._scheduler is not None else {}
            key = None if self.fleet.implicit else runtime.name
            fires += [(when, job_id_for(key, job)) for job, when in runs.items() if when is not None]
        if not self.fleet.implicit:  # many clusters: the soonest fire only
            fires = sorted(fires)[:1]
        parts = [f"{job} {when:%Y-%m-%d %H:%M:%S}" for when, job in fires]
        return "next: " + (", ".join(parts) if parts else "nothing scheduled") + "; " + served

    # -- probes --------------------------------------------------------------------------------
    def _probe_loop(self) -> None:
        last_status = ""
        self._probe_clusters()
        while not self.stopping.wait(PROBE_INTERVAL):
            self._probe_catalog()
            self._probe_clusters()
            text = self._status_text()
            if text != last_status:
                self.sd.status(text)
                last_status = text

    def _probe_catalog(self) -> None:
        """The catalog, once for every cluster (``backupd_dependency_up{dependency="catalog"}``
        of each is set by its own probe)."""
        from contentflow_backupd.ops.health.inputs import check_dependencies

        catalog = self._catalog
        if catalog is None:
            return
        state = check_dependencies({"catalog": lambda: catalog.get_meta("catalog_probe")})["catalog"]
        self._catalog_dep = state
        self._catalog_up = state.up
        self._probe_owners()

    def _probe_clusters(self) -> None:
        """One probe task per started cluster in the probe pool; a cluster whose last probe
        still runs (a hanging server) is skipped this time."""
        if self._probes is None:
            return
        for runtime in list(self.runtimes.values()):
            if runtime.state != "running":
                continue
            if runtime.probing is not None and not runtime.probing.done():
                log.warning("probe_skipped", cluster=runtime.name, reason="its last probe still runs")
                continue
            try:
                runtime.probing = self._probes.submit(self._probe_cluster, runtime)
            except RuntimeError:  # the pool is shut down: the daemon stops
                return

    def _probe_cluster(self, runtime: ClusterRuntime) -> None:
        """On a probe thread: one cluster's dependencies, WAL archive state and objectives."""
        try:
            runtime.probe_dependencies(self._catalog_dep)
            runtime.probe_state(leader=runtime.leader)
        except Exception as exc:  # noqa: BLE001 - a probe never kills its thread
            log.error("probe_failed", cluster=runtime.name, error=f"{type(exc).__name__}: {exc}")

    # -- probes for the HTTP endpoints -----------------------------------------------------
    def live(self) -> bool:
        if time.monotonic() - self._heartbeat > 10 * LOOP_INTERVAL + 5:
            return False
        return self._scheduler is None or self._scheduler.alive()

    def ready(self) -> bool:
        return self.started and not self.stopping.is_set() and self._catalog_up

    def cluster_names(self) -> list[str]:
        """The clusters served (``/healthz?cluster=`` knows these)."""
        return sorted(self.runtimes)

    def health(self, cluster: str | None = None) -> Any:
        """The whole's ``FleetHealth``, or one cluster's ``ClusterHealth`` (``KeyError`` for a
        cluster not served)."""
        from contentflow_backupd.model import utcnow
        from contentflow_backupd.ops.health.fleet import ClusterHealth, fleet_health

        if cluster is not None:
            runtime = self.runtimes[cluster]
            return ClusterHealth(
                cluster, runtime.health(leader=runtime.leader, objectives=runtime.app.objectives)
            )
        reports = {
            r.name: r.health(leader=r.leader, objectives=r.app.objectives)
            for r in list(self.runtimes.values())
        }
        now = utcnow()
        checks, elsewhere = self._fleet_health(now)
        return fleet_health(
            reports,
            implicit=self.fleet.implicit,
            catalog=self._catalog_dep,
            now=now,
            fleet_checks=checks,
            elsewhere=elsewhere,
        )

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
            log.info("daemon_stopping", signal=name, grace=self.fleet.shutdown_grace)
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
        return self.fleet.shutdown_grace_s

    def _shutdown(self) -> None:
        self.stopping.set()
        self.sd.stopping()
        self._reloader.join(self._left(10.0))  # a reload in progress ends (refused) or finishes
        for runtime in list(self.runtimes.values()):
            runtime.stop_event.set()  # a start being retried ends
            # First: new pushes go direct; the running ones get a few seconds to finish.
            runtime.stop_wal_service(self._left(5.0))
        if self._scheduler is not None:
            self._scheduler.shutdown()  # no new runs
        runners = [r.runner for r in list(self.runtimes.values()) if r.runner is not None]
        if runners:
            deadline = (self._stop_at or time.monotonic()) + self._grace()
            while self._running_jobs() and time.monotonic() < deadline and not self._abort.is_set():
                self._abort.wait(0.2)
            if self._running_jobs():
                self._stop_running_jobs(runners)
        for runtime in list(self.runtimes.values()):
            runtime.stop_stream(self._left(10.0))
        if self._http is not None:
            self._http.stop()
        if self._probes is not None:
            self._probes.shutdown(wait=False, cancel_futures=True)
        for runtime in list(self.runtimes.values()):
            runtime.close_notifier(self._left(10.0))
        self._leave_fleet(self._left(10.0))  # jobs and streams stopped: the others take over
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
        cancelled = self.fleet.pg_drivers().admin.cancel_queries(None)
        if cancelled:
            log.info("queries_cancelled", connections=cancelled)
        deadline = time.monotonic() + CHILD_STOP_WAIT
        while self._running_jobs() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._running_jobs():
            log.error("jobs_did_not_stop", jobs=[r.job for r in self._running_jobs()])
