"""The daemon process: start-up, the supervising main loop, leadership and two-signal shutdown.
See the package docstring for the order of events."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime
from typing import Any

import structlog

from contentflow_backupd import __version__
from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.daemon.parts import DaemonApp
from contentflow_backupd.errors import BackupdError, RepositoryError, RepositoryNotFound
from contentflow_backupd.model import Scope, utcnow
from contentflow_backupd.observability import progress
from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.procs import terminate_children
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.sdnotify import SystemdNotifier
from contentflow_backupd.signals import Interrupted, SignalWatch

log = structlog.get_logger(__name__)

LOOP_INTERVAL = 1.0
LEADER_POLL = 5.0
PROBE_INTERVAL = 15.0
OBJECTIVES_INTERVAL = 60.0
"""The recovery window needs a LIST of the WAL archive: once a minute is enough for a metric
whose alert waits 5 minutes."""
CHILD_STOP_WAIT = 10.0
"""After the grace period: how long the stopped jobs get to record their runs ``interrupted``."""
EXIT_MARGIN = 25.0
"""The process is gone at the latest ``BACKUPD_SHUTDOWN_GRACE`` + this after the first signal,
whatever blocks (a hung catalog, a child that ignores SIGTERM): then it exits 1."""
STOP_NOW_WAIT = 15.0
"""After a second signal the process is gone within this (exit 128 + the signal's number)."""
PROGRESS_FILE = "progress.json"
"""In the state directory: what the daemon's running jobs have done (``status`` reads it)."""


def run_daemon(app: DaemonApp) -> int:
    return Daemon(app).run()


class Daemon:
    def __init__(self, app: DaemonApp) -> None:
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
        self._deps: dict[str, Any] = {}
        self._catalog_up = False
        self._wal_state: Any = None
        self._recovery: Any = None
        self._next_objectives = 0.0
        self._scheduler: Any = None
        self._http: Any = None
        self._runner: Any = None
        self._walwatch: Any = None
        self._walservice: Any = None
        self._lock: Any = None
        self._catalog: Catalog | None = None
        self._repo: Repository | None = None
        self._scope = Scope("", app.cluster)
        """(repository id, cluster) of every catalog row the daemon reports; set once the
        repository is open (the empty id before matches no row)."""
        self._notifier: Any = None

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
        if self._runner is not None and self._runner.running():
            # A job thread that did not stop would keep the interpreter from exiting (it joins
            # the scheduler's worker threads): leave now, its run is reaped as interrupted.
            _exit_now(code)
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
        self._repo = self._open_or_init_repository()
        self._scope = Scope(self._repo.id, app.cluster)
        if self._lock.mode == "shared":
            # One leader per repository and cluster: daemons of other clusters or repositories
            # on this PostgreSQL catalog lead their own (the lock is taken in _poll_leadership).
            self._lock = app.leader_lock(self._scope)
        self._adopt_old_rows()
        self._audit_config()
        self._cleanup_drills()
        self._notifier = app.notifier()
        self._build_runner()
        self._start_wal_service()
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

    def _audit_config(self) -> None:
        """``config_changed`` in the audit trail when the settings differ from the last start's."""
        from contentflow_backupd.ops.audit import record_config

        assert self._catalog is not None
        view = {row["name"]: row["value"] for row in self.app.settings_view({})}
        record_config(self._catalog, view, self._repo)

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

    def _open_or_init_repository(self) -> Repository:
        storage = self.app.storage()
        try:
            return self.app.repository()
        except RepositoryNotFound:
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

    def _adopt_old_rows(self) -> None:
        """Catalog rows from before revision 0008 whose backups are in this repository become
        this repository's (``ops.repo.scope``); the repository id is remembered for this URL."""
        from contentflow_backupd.ops.repo.scope import resolve_scope

        assert self._repo is not None and self._catalog is not None
        try:
            resolve_scope(self._repo.storage, self._catalog, self.app.cluster)
        except BackupdError as exc:
            log.warning("catalog_rows_not_attributed", error=exc.message)

    def _build_runner(self) -> None:
        from contentflow_backupd.daemon.runtime import JobRunner
        from contentflow_backupd.scheduling import jobs

        app = self.app
        assert self._repo is not None and self._catalog is not None
        wal_tick = None
        wal_job = {spec.id: spec for spec in app.job_specs}["wal"]
        if app.mode == "physical" and wal_job.schedule.kind != "off":
            self._walwatch = app.wal_watcher(self._repo, self.metrics, self._catalog)
            wal_tick = self._walwatch.tick
            try:  # the WAL counter from the start, not only from the first WAL check
                self._walwatch.update_archived_total()
            except BackupdError as exc:
                log.warning("wal_archive_unreadable", error=exc.message)
        self._runner = JobRunner(
            app, self._repo, self._catalog, self.metrics, self._notifier, wal_tick=wal_tick
        )
        jobs.install(self._runner)

    def _start_wal_service(self) -> None:
        """The WAL socket ``wal push`` hands segments to: served by every daemon of the
        repository and cluster, leader or not (a push needs only the repository)."""
        assert self._repo is not None
        service = self.app.wal_service(self._repo, self.metrics)
        if service is not None and service.start():
            self._walservice = service

    def _start_http(self) -> None:
        if self.app.http_listen == "off":
            return
        from contentflow_backupd.http.server import HttpServer

        self._http = HttpServer(self.app.http_listen, self.all_metrics, self)
        self._http.start()
        log.info("http_listening", listen=self.app.http_listen, port=self._http.port)

    # -- leadership --------------------------------------------------------------------------
    def _become_leader(self) -> None:
        from contentflow_backupd.daemon.walwatch import choose_wal_method
        from contentflow_backupd.scheduling.scheduler import Scheduler

        app = self.app
        assert self._catalog is not None
        self.leader = True
        self.metrics.set_leader(True)
        log.info("leader_acquired", mode=self._lock.mode)
        assert self._scope is not None
        sched = Scheduler(
            self._catalog.engine,
            app.timezone,
            scope=self._scope,
            max_workers=app.max_concurrent_jobs,
            on_queue_wait=self.all_metrics.scheduler_queue_wait,
        )
        sched.register(app.job_specs)
        if app.full_scheduled and not self._catalog.list_backups(self._scope, ["succeeded"]):
            sched.run_soon("full")  # no backup yet: do not wait for the first fire time
        sched.resume()
        self._scheduler = sched
        if (
            self._walwatch is not None
            and self._repo is not None
            and choose_wal_method(app.wal_method, self._walwatch) == "stream"
        ):
            self._walwatch.stream = app.stream_supervisor(self._repo, self.metrics)
            self._walwatch.stream.start()
            log.info("wal_stream_supervised", slot=app.wal_slot)

    def _lose_leadership(self) -> None:
        log.error("leader_lost", action="stopped scheduling; trying to get the lock back")
        self.leader = False
        self.metrics.set_leader(False)
        if self._scheduler is not None:
            self._scheduler.shutdown()
            self._scheduler = None
        if self._walwatch is not None and self._walwatch.stream is not None:
            self._walwatch.stream.stop()
            self._walwatch.stream = None

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
        if self._scheduler is None or self._catalog is None:
            return
        from contentflow_backupd.scheduling.jobs import parse_job_id

        for job_id, reason in self._scheduler.take_skipped():
            try:
                job = parse_job_id(job_id)[1]
                run = self._catalog.start_run(
                    self._scope, job, "scheduled", pid=os.getpid(), host=socket.gethostname()
                )
                self._catalog.finish_run(run.id, "skipped", error=reason)
            except BackupdError as exc:
                log.error("catalog_update_failed", error=exc.message)

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
        """Dependencies, and the WAL archive's state in physical mode, for /healthz, /readyz
        and ``backupd_dependency_up`` (on this thread: a hanging server never blocks a probe)."""
        from contentflow_backupd.ops.health.evaluate import WalState
        from contentflow_backupd.ops.health.inputs import probe_dependencies, wal_health_state
        from contentflow_backupd.repository.walarchive import WalArchive

        app = self.app
        assert self._catalog is not None and self._repo is not None
        deps = probe_dependencies(app.database_probe(), self._repo.storage, self._catalog, app.open_catalog)
        for name, state in deps.items():
            self.metrics.set_dependency(name, state.up)
        self._deps = deps
        self._catalog_up = deps["catalog"].up
        if self._catalog_up:
            self._probe_migrations()
        if app.mode == "physical":
            try:
                self._wal_state = wal_health_state(WalArchive(self._repo, app.cluster), app.archiver_status())
            except BackupdError as exc:
                self._wal_state = WalState(None, None, False, f"cannot read the WAL archive: {exc.message}")
            self._count_wal(self._wal_state)
            if self.leader and self._walwatch is not None:
                self._walwatch.guard(self._wal_state)
        if time.monotonic() >= self._next_objectives:
            self._next_objectives = time.monotonic() + OBJECTIVES_INTERVAL
            self._probe_objectives()

    def _count_wal(self, state: Any) -> None:
        """``backupd_wal_archived_segments_total`` from the listing the probe just made: the
        segments stored plus those retention deleted (the catalog), whoever pushed them."""
        if state is None or state.segments is None or self._catalog is None:
            return
        try:
            deleted = self._catalog.count_deleted_wal_segments(self._scope)
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
        assert self._catalog is not None and self._repo is not None
        try:
            report = recovery_objectives(
                self._repo,
                self._catalog,
                app.cluster,
                app.mode,
                rto_objective_s=app.rto_objective_s,
                rpo_objective_s=app.rpo_objective_s,
            )
        except BackupdError as exc:
            log.warning("recovery_objectives_unknown", error=exc.message)
            return
        self.metrics.set_recovery_point_age(report.get("recovery_point_age_seconds"))
        self._recovery = recovery_state(report)

    def _probe_migrations(self) -> None:
        """``backupd_migration_*`` from the catalog (``migrate`` runs as its own command)."""
        assert self._catalog is not None
        try:
            runs = [r for r in self._catalog.list_migration_runs(self._scope) if not r.dry_run]
        except BackupdError as exc:
            log.warning("migration_runs_unreadable", error=exc.message)
            return
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        done = [r for r in runs if r.finished_at is not None]
        last = done[-1].details.get("duration_seconds") if done else None
        self.metrics.set_migration_runs(counts, None if last is None else float(last))

    # -- probes for the HTTP endpoints -----------------------------------------------------
    def live(self) -> bool:
        if time.monotonic() - self._heartbeat > 10 * LOOP_INTERVAL + 5:
            return False
        return not self.leader or self._scheduler is None or self._scheduler.alive()

    def ready(self) -> bool:
        return self.started and not self.stopping.is_set() and self._catalog_up

    def health(self) -> Any:
        from contentflow_backupd.ops.health.evaluate import evaluate_health
        from contentflow_backupd.ops.health.inputs import collect_health_inputs

        try:
            inputs = collect_health_inputs(
                self._catalog,
                self._scope,
                dependencies=dict(self._deps),
                wal=self._wal_state,
                leader=self.leader,
                drills=self.app.drills_scheduled,
                recovery=self._recovery,
            )
        except BackupdError as exc:
            log.warning("catalog_unavailable", error=exc.message)
            inputs = collect_health_inputs(
                None, self._scope, dependencies=dict(self._deps), wal=self._wal_state, leader=self.leader
            )
        return evaluate_health(inputs, self._objectives, utcnow())

    # -- signals and shutdown --------------------------------------------------------------
    def _install_signals(self) -> None:
        """SIGTERM and SIGINT are only recorded in their handler; ``_on_signal`` runs on the
        signal-watch thread (see ``contentflow_backupd.signals``), so a main thread blocked
        anywhere (a stalled notify socket, a hung catalog) never keeps the daemon from stopping."""
        self._watch = SignalWatch(self._on_signal).install()

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
            _arm_exit(grace + EXIT_MARGIN, EXIT_FAILED_STOP, "the shutdown did not finish in time")
        elif count == 2:
            log.warning("daemon_stopping_now", signal=name)
            self._abort_signal = signum
            self._abort.set()
            self.stopping.set()
            _arm_exit(STOP_NOW_WAIT, 128 + signum, "a second signal: stop now")

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
        if self._walservice is not None:
            # First: new pushes go direct; the running ones get a few seconds to finish.
            self._walservice.stop(timeout=self._left(5.0))
        if self._scheduler is not None:
            self._scheduler.shutdown()  # no new runs
        runner = self._runner
        if runner is not None:
            deadline = (self._stop_at or time.monotonic()) + self._grace()
            while runner.running() and time.monotonic() < deadline and not self._abort.is_set():
                self._abort.wait(0.2)
            if runner.running():
                self._stop_running_jobs(runner)
        if self._walwatch is not None and self._walwatch.stream is not None:
            self._walwatch.stream.stop(timeout=self._left(10.0))
        if self._http is not None:
            self._http.stop()
        if self._notifier is not None:
            self._notifier.close(self._left(10.0))
        if self._lock is not None:
            self._lock.release()
        if self._catalog is not None:
            self._catalog.close()
        from contentflow_backupd.scheduling import jobs

        jobs.install(None)
        log.info("daemon_stopped")

    def _stop_running_jobs(self, runner: Any) -> None:
        """The grace period is over: stop the running jobs' children and let them record the run
        as interrupted."""
        names = [r.job for r in runner.running()]
        log.warning("stopping_running_jobs", jobs=names)
        runner.cancel_all()
        for job in runner.running():
            _raise_in_thread(job.thread, Interrupted)
        time.sleep(0.5)
        for pid in terminate_children(None):  # every child, not only the jobs' (owner None)
            log.info("child_stopped", pid=pid)
        # A job blocked in a query (a drill's check, a lock wait) returns to Python only then.
        cancelled = self.app.pg_drivers().admin.cancel_queries(None)
        if cancelled:
            log.info("queries_cancelled", connections=cancelled)
        deadline = time.monotonic() + CHILD_STOP_WAIT
        while runner.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        if runner.running():
            log.error("jobs_did_not_stop", jobs=[r.job for r in runner.running()])


EXIT_FAILED_STOP = 1


def _arm_exit(delay: float, code: int, reason: str) -> None:
    """End the process with ``code`` in ``delay`` seconds unless it ended before."""
    timer = threading.Timer(delay, _forced_exit, args=(code, reason))
    timer.name = "shutdown-deadline"
    timer.daemon = True
    timer.start()


def _forced_exit(code: int, reason: str) -> None:
    # Logging is tried on its own thread: a stuck stderr or a log lock held by a stuck thread
    # must not keep us from leaving.
    names = sorted(t.name for t in threading.enumerate() if t is not threading.current_thread())
    message = threading.Thread(
        target=lambda: log.error("daemon_exit_forced", reason=reason, exit_code=code, threads=names),
        daemon=True,
    )
    message.start()
    message.join(1.0)
    os._exit(code)  # no flush: the main thread may hold a stream's lock, blocked in a write


def _exit_now(code: int) -> None:
    """Leave without waiting for threads (a stuck job thread would keep ``sys.exit`` waiting)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _raise_in_thread(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    """Raise ``exc_type`` in ``thread`` at its next Python instruction (a blocked system call
    returns first: ``terminate_children`` ends the pipes it waits on)."""
    if thread.ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))


def _fmt(when: datetime | None) -> str | None:
    return when.isoformat() if when else None
