"""What a scheduled job does in the daemon: thin wrappers around one ``ops`` call each.

Each wrapper binds ``run_id``/``job`` to the log context, runs the use case, records the outcome
in the catalog and the metrics, and sends the webhook notifications (a failed run, the first
success after failures, a size anomaly, retention deletions). A job never raises into the
scheduler: an error is a recorded, counted, notified failed run.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.daemon.parts import DaemonApp
from contentflow_backupd.daemon.stall import Stalled, watching
from contentflow_backupd.errors import BackupdError, LockedError, VerificationFailed
from contentflow_backupd.model import (
    BackupRecord,
    JobCancel,
    RunStatus,
    RunTrigger,
    Scope,
    cancel_failure,
    utcnow,
)
from contentflow_backupd.observability import progress
from contentflow_backupd.observability.metrics import ClusterMetrics
from contentflow_backupd.observability.notify import Notifier
from contentflow_backupd.ops.backup.anomaly import check_size
from contentflow_backupd.ops.backup.run import run_backup
from contentflow_backupd.procs import owned_by, terminate_children
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.signals import Interrupted

log = structlog.get_logger(__name__)


class DrillFailed(BackupdError):
    """A restore drill whose checks failed (the run is recorded as failed and notified)."""


RETENTION_LOCK_WAIT = 30 * 60.0
"""How long the retention job waits for a running backup of the cluster before it is skipped."""


@dataclass
class RunningJob:
    job: str
    thread: threading.Thread
    owner: str
    """``"<cluster>:<job>"``: the ``procs.owner`` of this job's children and connections."""
    cancel: JobCancel = field(default_factory=JobCancel)
    """Set to stop this job (``BackupOptions.cancel``, ``run_drill(cancel=...)``): its run is then
    recorded ``interrupted``, not ``failed``; failed by the stall watchdog (``stall()``)."""
    started: float = field(default_factory=time.monotonic)


class JobRunner:
    """The daemon's handler for ``scheduling.jobs``: one method per job id."""

    def __init__(
        self,
        app: DaemonApp,
        repo: Repository,
        catalog: Catalog,
        metrics: ClusterMetrics,
        notifier: Notifier,
        *,
        wal_tick: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        self.app = app
        self.repo = repo
        self.scope = Scope(repo.id, app.cluster)
        """Every catalog row this runner reads or writes is of this repository and cluster."""
        self.catalog = catalog
        self.metrics = metrics
        self.notifier = notifier
        self._stopping = False
        """Set by ``cancel_all()`` (the daemon's stop): a job starting after it starts cancelled."""
        self._wal_tick = wal_tick
        self._running: dict[int, RunningJob] = {}
        self._lock = threading.Lock()
        self._failing: dict[str, bool] = {}
        self.host = socket.gethostname()
        self._seed_from_catalog()

    # -- bookkeeping -----------------------------------------------------------------------
    def running(self) -> list[RunningJob]:
        with self._lock:
            return list(self._running.values())

    def owner_of(self, job_id: str) -> str:
        """The ``procs.owner`` of ``job_id``'s children and connections."""
        return f"{self.app.cluster}:{job_id}"

    def cancel_all(self) -> list[RunningJob]:
        """Cancel every running job and every job that starts from now on (the daemon's stop);
        the jobs cancelled. Their children and queries are the caller's to stop."""
        with self._lock:
            self._stopping = True
            jobs = list(self._running.values())
        for job in jobs:
            job.cancel.set()
        return jobs

    def cancel_job(self, job_id: str) -> RunningJob | None:
        """Cancel the running ``job_id`` alone: its cancel event, then SIGTERM to its children
        and a cancel request to its queries (the other jobs' are untouched); None when it does
        not run. The job records its run ``interrupted``."""
        with self._lock:
            job = next((j for j in self._running.values() if j.job == job_id), None)
        if job is None:
            return None
        job.cancel.set()
        stopped = terminate_children(job.owner)
        cancelled = self.app.pg_drivers().admin.cancel_queries(job.owner)
        log.warning("job_cancelled", job=job_id, owner=job.owner, children=stopped, queries=cancelled)
        return job

    def stall(self, job: RunningJob, stalled: Stalled) -> None:
        """The stall watchdog's verdict on ``job`` (``daemon/stall.py``): stop it as
        ``cancel_job`` does, but its run is recorded ``failed``, with the reason."""
        reason = stalled.reason(self.app.stall_timeout_s or 0.0)
        job.cancel.fail(reason)
        stopped = terminate_children(job.owner)
        cancelled = self.app.pg_drivers().admin.cancel_queries(job.owner)
        log.error(
            "job_stalled",
            job=job.job,
            owner=job.owner,
            phase=stalled.phase,
            stalled_seconds=round(stalled.seconds),
            reason=reason,
            children=stopped,
            queries=cancelled,
        )

    def _seed_from_catalog(self) -> None:
        """Metrics and failure state as the catalog left them, so a restart does not forget that
        the last full backup failed or when the last success was."""
        runs = self.catalog.list_runs(self.scope, limit=500)
        for run in runs:
            if run.status in ("succeeded", "failed"):
                self._failing[run.job] = run.status == "failed"
        backups = self.catalog.list_backups(self.scope, ["succeeded"])
        for kind in ("full", "incremental"):
            done = [b for b in backups if b.kind == kind and b.finished_at is not None]
            if done:
                last = done[-1]
                self.metrics.seed_backup(
                    kind,
                    finished_at=last.finished_at,
                    source_bytes=last.source_bytes,
                    stored_bytes=last.stored_bytes,
                )
        failures = [r for r in runs if r.job in ("full", "incremental") and r.status == "failed"]
        for run in failures:
            self.metrics.seed_failure(run.job, run.finished_at or run.started_at)
        self._update_window(backups)
        try:
            from contentflow_backupd.ops.verify.sweep import open_corrupt_count

            state = self.catalog.get_verify_state(self.scope)
            self.metrics.set_verify_last_success(state.last_deep_success_at)
            self.metrics.set_corrupt_objects(open_corrupt_count(self.catalog, self.scope))
        except BackupdError as exc:
            log.warning("verify_state_unreadable", error=exc.message)
        try:
            drills = self.catalog.list_drills(self.scope, limit=1)
            good = self.catalog.list_drills(self.scope, status="succeeded", limit=1)
            if drills:
                self.metrics.set_last_drill(
                    rto_s=drills[0].rto_seconds, restored_bytes=drills[0].restored_bytes
                )
            if good:
                self.metrics.set_last_drill(succeeded_at=good[0].finished_at)
        except BackupdError as exc:
            log.warning("drills_unreadable", error=exc.message)

    def _update_window(self, backups: list[BackupRecord] | None = None) -> None:
        if backups is None:
            backups = self.catalog.list_backups(self.scope, ["succeeded"])
        ends = [b.finished_at for b in backups if b.finished_at is not None]
        self.metrics.set_recovery_window_start(min(ends) if ends else None)
        if not self._repository_bytes_known:
            self.metrics.set_repository_stored_bytes(sum(b.stored_bytes for b in backups))

    _repository_bytes_known = False

    def __call__(self, job_id: str, trigger: RunTrigger) -> None:
        """Run one job (called on a scheduler worker thread, or by the daemon itself)."""
        job = RunningJob(job_id, threading.current_thread(), self.owner_of(job_id))
        with self._lock:
            if self._stopping:
                job.cancel.set()
            self._running[threading.get_ident()] = job
        cancel = job.cancel
        try:
            with (
                structlog.contextvars.bound_contextvars(
                    cluster=self.app.cluster, job=job_id, trigger=trigger
                ),
                progress.tracking(job_id, cluster=self.app.cluster) as tracker,
                owned_by(job.owner),
                watching(tracker.position, self.app.stall_timeout_s, lambda why: self.stall(job, why)),
            ):
                log.info("job_started")
                if job_id in ("full", "incremental"):
                    self.backup(job_id, trigger, cancel)
                elif job_id == "wal":
                    self._simple_run("wal", trigger, cancel, self._wal)
                elif job_id == "retention":
                    self._simple_run(
                        "retention", trigger, cancel, lambda run_id: self._retention(run_id, cancel)
                    )
                elif job_id == "verify":
                    self._simple_run("verify", trigger, cancel, self._verify)
                elif job_id == "restore_test":
                    self._simple_run(
                        "restore_test",
                        trigger,
                        cancel,
                        lambda run_id: self._restore_test(run_id, trigger, cancel),
                    )
                else:
                    log.error("unknown_job", job=job_id)
        except (Interrupted, KeyboardInterrupt):
            log.warning("job_interrupted", job=job_id)
        except BaseException as exc:  # noqa: BLE001 - a job never raises into the scheduler
            log.error("job_crashed", job=job_id, error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running.pop(threading.get_ident(), None)

    # -- backups ---------------------------------------------------------------------------
    def backup(self, kind: str, trigger: RunTrigger, cancel: threading.Event) -> BackupRecord | None:
        app = self.app
        began = time.monotonic()
        opts = app.backup_options(kind, trigger=trigger, cancel=cancel)
        try:
            record = run_backup(
                self.repo,
                self.catalog,
                opts,
                logical=app.logical_source() if app.mode == "logical" else None,
                physical=app.physical_source() if app.mode == "physical" else None,
                archive=WalArchive(self.repo, app.cluster) if app.mode == "physical" else None,
            )
        except LockedError:
            return None  # recorded as skipped by run_backup
        except (Interrupted, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded by run_backup; counted and notified here
            failure = cancel_failure(cancel)
            if cancel.is_set() and failure is None:
                return None  # recorded as interrupted
            error = exc.message if isinstance(exc, BackupdError) else f"{type(exc).__name__}: {exc}"
            if failure is not None:
                error = f"{failure}: {error}"
            self.metrics.backup_failed(kind, utcnow())
            self._failed(kind, error)
            return None
        self.metrics.backup_succeeded(
            record.kind,
            finished_at=record.finished_at or utcnow(),
            duration_s=time.monotonic() - began,
            source_bytes=record.source_bytes,
            stored_bytes=record.stored_bytes,
        )
        self._succeeded(kind, f"{record.kind} backup {record.id} succeeded", backup_id=record.id)
        self._quick_check(record)
        self._check_anomaly(record)
        self._update_window()
        return record

    def _quick_check(self, record: BackupRecord) -> None:
        """Right after a backup: every object its manifest names exists with its stored size."""
        from contentflow_backupd.ops.verify.sweep import open_corrupt_count, quick_check_backup, record_faults

        try:
            faults = quick_check_backup(self.repo, self.app.cluster, record.id, self.app.concurrency)
            if faults:
                record_faults(self.catalog, self.scope, faults)
                self._corrupt_found([f"{f.key} ({f.problem})" for f in faults], f"the new backup {record.id}")
            self.metrics.set_corrupt_objects(open_corrupt_count(self.catalog, self.scope))
        except BackupdError as exc:
            log.warning("quick_check_failed", backup_id=record.id, error=exc.message)

    def _corrupt_found(self, objects: list[str], where: str) -> None:
        log.error("corrupt_objects_found", where=where, objects=objects[:20], count=len(objects))
        self.notifier.notify(
            "corrupt_objects",
            f"contentflow-backupd: {len(objects)} damaged or missing object(s) in {where}: "
            + "; ".join(objects[:5])
            + (" ..." if len(objects) > 5 else ""),
            objects=objects[:20],
            count=len(objects),
        )

    def _check_anomaly(self, record: BackupRecord) -> None:
        a = self.app.anomaly_limits
        history = [
            b.source_bytes
            for b in self.catalog.list_backups(self.scope, ["succeeded"])
            if b.kind == record.kind and b.mode == record.mode and b.id != record.id
        ][-a.window :]
        verdict = check_size(record.source_bytes, history, low=a.low, high=a.high, min_history=a.min_history)
        self.metrics.set_size_anomaly(record.kind, verdict.anomaly)
        if verdict.anomaly:
            log.warning(
                "backup_size_anomaly",
                backup_id=record.id,
                source_bytes=record.source_bytes,
                median_bytes=verdict.median,
                ratio=verdict.ratio,
                reason=verdict.reason,
            )
            self.notifier.notify(
                "size_anomaly",
                f"contentflow-backupd: {record.kind} backup {record.id} is a size anomaly: {verdict.reason}",
                kind=record.kind,
                backup_id=record.id,
                source_bytes=record.source_bytes,
                median_bytes=verdict.median,
                ratio=verdict.ratio,
            )

    # -- other jobs ------------------------------------------------------------------------
    def _simple_run(
        self, job: str, trigger: RunTrigger, cancel: threading.Event, body: Callable[[int], str | None]
    ) -> None:
        run = self.catalog.start_run(self.scope, job, trigger, pid=_pid(), host=self.host)
        with structlog.contextvars.bound_contextvars(run_id=run.id):
            try:
                note = body(run.id)
            except (Interrupted, KeyboardInterrupt):
                self.catalog.finish_run(run.id, "interrupted", error="stopped at shutdown")
                raise
            except LockedError as exc:  # a backup of the cluster is running: try next time
                log.warning(f"{job}_run_skipped", reason=exc.message)
                self.catalog.finish_run(run.id, "skipped", error=exc.message)
                return
            except BaseException as exc:  # noqa: BLE001 - every failure is a recorded run
                error = exc.message if isinstance(exc, BackupdError) else f"{type(exc).__name__}: {exc}"
                failure = cancel_failure(cancel)
                if failure is not None:  # the stall watchdog stopped it
                    error = f"{failure}: {error}"
                status: RunStatus = "interrupted" if cancel.is_set() and failure is None else "failed"
                log.error(f"{job}_run_failed", error=error)
                self.catalog.finish_run(run.id, status, error=error)
                if status == "failed":
                    self._failed(job, error)
                return
            self.catalog.finish_run(run.id, "succeeded", error=None)
            self._succeeded(job, note or f"{job} run succeeded")

    def _wal(self, run_id: int) -> str | None:
        if self._wal_tick is None:
            return "WAL job: nothing to do in logical mode"
        result = self._wal_tick(run_id)
        return str(result.get("summary", "wal run succeeded"))

    def _verify(self, run_id: int) -> str | None:
        from contentflow_backupd.ops.verify.sweep import open_corrupt_summary, verify_since_last

        app = self.app
        result = verify_since_last(
            self.repo,
            self.catalog,
            app.cluster,
            full_sweep_s=app.verify_sweep_s,
            interval_s=app.verify_interval_s,
            concurrency=app.concurrency,
            lock_dir=app.lock_dir(),
        )
        self.metrics.verify_finished(result.ok, result.finished_at)
        self.metrics.set_corrupt_objects(len(result.open_corrupt))
        if result.found:
            self._corrupt_found([f"{f.key} ({f.problem})" for f in result.found], "the repository")
        summary = (
            f"read {result.new_objects_read + result.sweep_objects_read} objects "
            f"({len(result.new_backups)} new backups, {result.sweep_objects_read} in the sweep)"
        )
        if not result.ok:
            raise VerificationFailed(
                f"{len(result.open_corrupt)} damaged object(s) open: "
                + "; ".join(open_corrupt_summary(result.open_corrupt))
            )
        return summary

    def _restore_test(self, run_id: int, trigger: RunTrigger, cancel: threading.Event) -> str | None:
        """A restore drill: restore into a scratch instance, check it, measure the RTO."""
        from contentflow_backupd.ops.drill.run import run_drill

        result = run_drill(
            self.repo,
            self.catalog,
            self.app.drill_options(),
            pg=self.app.pg_drivers(),
            run_id=run_id,
            trigger=trigger,
            cancel=cancel,
        )
        self.metrics.restore_test_finished(
            result.succeeded, result.finished_at or utcnow(), result.rto_seconds, result.restored_bytes
        )
        rto = f"{result.rto_seconds:.1f}s" if result.rto_seconds is not None else "-"
        if not result.succeeded:
            raise DrillFailed(
                f"restore drill of {result.backup_id or 'no backup'} to {result.target} failed: "
                f"{result.error or 'no check ran'}"
            )
        return f"restore drill of {result.backup_id} to {result.target} succeeded: RTO {rto}"

    def _retention(self, run_id: int, cancel: threading.Event) -> str | None:
        from contentflow_backupd.ops.retention.apply import expire

        app = self.app
        deadline = time.monotonic() + RETENTION_LOCK_WAIT
        while True:
            try:
                _plan, result = expire(
                    self.repo,
                    self.catalog,
                    app.cluster,
                    app.retention_policy,
                    utcnow(),
                    apply=True,
                    run_id=run_id,
                    lock_dir=app.lock_dir(),
                )
                break
            except LockedError:
                # A backup is running (schedules often coincide): wait for it rather than skip,
                # a wait bounded by its own deadline (the stall watchdog leaves it to that).
                bound = max(0.0, deadline - time.monotonic())
                progress.phase("waiting for the running backup", quiet_s=bound)
                if time.monotonic() > deadline or cancel.wait(5.0):
                    raise
        if result is None:
            return "nothing to delete"
        self.metrics.retention_deleted(result.deleted_backups, result.deleted_bytes)
        self.metrics.set_repository_stored_bytes(result.stored_bytes_after)
        self._repository_bytes_known = True
        self._update_window()
        deleted = sum(result.deleted_backups.values())
        if deleted or result.deleted_bytes:
            text = (
                f"contentflow-backupd: retention deleted {deleted} backup(s) and {result.deleted_bytes} bytes"
            )
            self.notifier.notify(
                "retention_deleted",
                text,
                deleted_backups=result.deleted_backups,
                deleted_bytes=result.deleted_bytes,
            )
            return text
        return "nothing to delete"

    # -- notifications ---------------------------------------------------------------------
    def _failed(self, job: str, error: str) -> None:
        self._failing[job] = True
        self.notifier.notify(
            "run_failed",
            f"contentflow-backupd: the {job} run failed: {error}",
            job=job,
            error=error,
        )

    def _succeeded(self, job: str, text: str, **fields: Any) -> None:
        if self._failing.get(job):
            self.notifier.notify(
                "run_recovered",
                f"contentflow-backupd: the {job} run succeeded again: {text}",
                job=job,
                **fields,
            )
        self._failing[job] = False


def _pid() -> int:
    import os

    return os.getpid()


def utc_ts(when: datetime | None) -> float | None:
    return when.timestamp() if when is not None else None
