"""Prometheus metrics of the daemon (prometheus_client lives here and in ``http/`` only).

Every :class:`Metrics` owns its registry: nothing is registered globally, so tests and several
daemons in one process never collide. The series, exactly (README "Metrics" and issue 4)::

    backupd_build_info{version}                                   1
    backupd_backup_runs_total{kind,result}                        result: success | failure
    backupd_backup_last_success_timestamp_seconds{kind}           0 = never
    backupd_backup_last_failure_timestamp_seconds{kind}           0 = never
    backupd_backup_duration_seconds{kind}                         histogram, 10 s .. 8 h
    backupd_backup_last_source_bytes{kind}
    backupd_backup_last_stored_bytes{kind}
    backupd_backup_size_anomaly{kind}                             0 or 1
    backupd_wal_archived_segments_total                           segments of the cluster that reached
                                                                  the repository (read, not counted)
    backupd_wal_archive_failures_total
    backupd_wal_last_archived_timestamp_seconds                   0 = never
    backupd_wal_pending_segments
    backupd_recovery_window_start_timestamp_seconds               0 = no recovery window
    backupd_retention_deleted_backups_total{kind}
    backupd_retention_deleted_bytes_total
    backupd_repository_stored_bytes
    backupd_scheduler_next_run_timestamp_seconds{job}             absent while the job is off
    backupd_leader                                                0 or 1
    backupd_scheduler_queue_wait_seconds{class}                   histogram, 0.1 s .. 4 h: a fired
                                                                  job's wait for a pool worker;
                                                                  class: wal | backup | maintenance
    backupd_dependency_up{dependency}                             database | storage | catalog
    backupd_verify_runs_total{result}                             deep verification runs
    backupd_verify_last_success_timestamp_seconds                 0 = never
    backupd_verify_corrupt_objects                                objects known bad, not resolved
    backupd_restore_test_runs_total{result}                       restore drills
    backupd_restore_test_last_success_timestamp_seconds           0 = never
    backupd_restore_test_duration_seconds                         the last drill's measured RTO
    backupd_restore_test_restored_bytes                           what the last drill restored
    backupd_recovery_point_age_seconds                            now - newest restorable moment
    backupd_migration_runs_total{result}                          guarded migrations (not dry runs):
                                                                  applied | noop | refused | failed |
                                                                  rolled_back; from the catalog
    backupd_migration_last_duration_seconds                       the newest of them (0: none yet)
    backupd_job_progress_done{job}                                the running job's current phase:
    backupd_job_progress_total{job}                               units done, units in all (0: idle
                                                                  or unknown); observability/progress.py

plus prometheus_client's standard ``process_*`` series (start time, CPU, memory, open files).

Every ``{kind}`` series (``full``, ``incremental``), every kind x result pair and every
dependency exist from the start at 0, so alerts and ``rate()`` see them before the first event.
Label values come from these fixed sets (``job``: a short lowercase name): never backup ids,
LSNs or file names. ``_created`` samples are left out of the exposition.

Setters (``set_*``) are idempotent and safe for seeding from the catalog at start; the event
methods (``backup_succeeded``, ``wal_archived``, ...) also advance counters, so call them once per
event. All methods are thread-safe.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric

from contentflow_backupd import __version__
from contentflow_backupd.model import BACKUP_KINDS, JOB_NAMES, BackupKind

QUEUE_CLASSES = ("wal", "backup", "maintenance")
"""The scheduler pool's priority classes (``scheduling/pool.py: CLASS_NAMES``)."""
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (0.1, 1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600)
DURATION_BUCKETS: tuple[float, ...] = (
    10,
    30,
    60,
    120,
    300,
    600,
    1200,
    1800,
    3600,
    7200,
    14400,
    28800,
)
"""Backup durations: 10 s to 8 h (and +Inf)."""
DEPENDENCIES: tuple[str, ...] = ("database", "storage", "catalog")
RESULTS: tuple[str, ...] = ("success", "failure")
_JOB = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _ts(when: datetime | float | None) -> float:
    if when is None:
        return 0.0
    if isinstance(when, datetime):
        return when.timestamp()
    return float(when)


class _WithoutCreated:
    """Exposes the collectors of ``source`` without their ``_created`` samples."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        for metric in self._source.collect():
            clean = copy.copy(metric)
            clean.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield clean


MIGRATION_RESULTS = ("applied", "unverified", "noop", "refused", "failed", "rolled_back")


def _progress_of(job: str, field: str) -> float:
    """``done`` or ``total`` of the running ``job`` (observability/progress.py); 0 when idle."""
    from contentflow_backupd.observability import progress

    for snap in progress.snapshots():
        if snap["operation"] == job:
            return float(snap[field] or 0)
    return 0.0


class Metrics:
    """The daemon's metrics in their own registry. See the module docstring for the series."""

    def __init__(self, version: str = __version__) -> None:
        self._lock = threading.Lock()
        self._wal_count = 0
        """What ``backupd_wal_archived_segments_total`` shows (prometheus_client hides it)."""
        self._seeded_failures: dict[str, float] = {}
        self._source = CollectorRegistry(auto_describe=True)
        self.registry = CollectorRegistry()
        """What ``render`` exposes (the metrics below, without ``_created`` samples)."""
        self.registry.register(_WithoutCreated(self._source))
        reg = self._source
        ProcessCollector(registry=reg)  # process_start_time_seconds and friends (alerts use it)
        self._build_info = Gauge(
            "backupd_build_info", "Version of contentflow-backupd (value 1)", ["version"], registry=reg
        )
        self._build_info.labels(version=version).set(1)
        self._runs = Counter(
            "backupd_backup_runs", "Finished backup runs by kind and result", ["kind", "result"], registry=reg
        )
        self._last_success = Gauge(
            "backupd_backup_last_success_timestamp_seconds",
            "End of the newest successful backup of each kind (0: never)",
            ["kind"],
            registry=reg,
        )
        self._last_failure = Gauge(
            "backupd_backup_last_failure_timestamp_seconds",
            "Time of the newest failed backup run of each kind (0: never)",
            ["kind"],
            registry=reg,
        )
        self._duration = Histogram(
            "backupd_backup_duration_seconds",
            "Duration of successful backups",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self._source_bytes = Gauge(
            "backupd_backup_last_source_bytes",
            "Bytes read from the database by the newest successful backup",
            ["kind"],
            registry=reg,
        )
        self._stored_bytes = Gauge(
            "backupd_backup_last_stored_bytes",
            "Bytes newly stored in the repository by the newest successful backup",
            ["kind"],
            registry=reg,
        )
        self._anomaly = Gauge(
            "backupd_backup_size_anomaly",
            "1 when the newest backup's size is outside the expected band of its kind",
            ["kind"],
            registry=reg,
        )
        self._wal_archived = Counter(
            "backupd_wal_archived_segments",
            "WAL segments of the cluster that reached the repository, by any process (stored now "
            "plus deleted by retention)",
            registry=reg,
        )
        self._wal_failures = Counter(
            "backupd_wal_archive_failures", "WAL archive failures seen by this daemon", registry=reg
        )
        self._wal_socket = Counter(
            "backupd_wal_socket_pushes",
            "wal push requests this daemon answered on its WAL socket, by result (stored, "
            "duplicate, error: refused for good, refused: the client pushed itself)",
            ["result"],
            registry=reg,
        )
        self._wal_last = Gauge(
            "backupd_wal_last_archived_timestamp_seconds",
            "Time the newest WAL segment was archived (0: never)",
            registry=reg,
        )
        self._wal_pending = Gauge(
            "backupd_wal_pending_segments", "Completed WAL segments not archived yet", registry=reg
        )
        self._window_start = Gauge(
            "backupd_recovery_window_start_timestamp_seconds",
            "The earliest point in time that can be restored (0: none)",
            registry=reg,
        )
        self._ret_backups = Counter(
            "backupd_retention_deleted_backups", "Backups deleted by retention", ["kind"], registry=reg
        )
        self._ret_bytes = Counter(
            "backupd_retention_deleted_bytes", "Bytes deleted from the repository by retention", registry=reg
        )
        self._repo_bytes = Gauge(
            "backupd_repository_stored_bytes", "Bytes stored in the repository", registry=reg
        )
        self._next_run = Gauge(
            "backupd_scheduler_next_run_timestamp_seconds",
            "Next planned run of each scheduled job",
            ["job"],
            registry=reg,
        )
        self._leader = Gauge(
            "backupd_leader", "1 when this daemon is the leader that runs jobs, 0 on standby", registry=reg
        )
        self._queue_wait = Histogram(
            "backupd_scheduler_queue_wait_seconds",
            "Time a scheduled job waited in the scheduler's queue for a worker, by priority class",
            ["class"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=reg,
        )
        for job_class in QUEUE_CLASSES:
            self._queue_wait.labels(job_class)
        self._dependency = Gauge(
            "backupd_dependency_up",
            "1 when the dependency answered its last check",
            ["dependency"],
            registry=reg,
        )
        self._verify_runs = Counter(
            "backupd_verify_runs", "Deep verification runs by result", ["result"], registry=reg
        )
        self._verify_last = Gauge(
            "backupd_verify_last_success_timestamp_seconds",
            "End of the newest successful deep verification (0: never)",
            registry=reg,
        )
        self._corrupt = Gauge(
            "backupd_verify_corrupt_objects",
            "Repository objects known to be damaged or missing that a kept backup still needs",
            registry=reg,
        )
        self._drill_runs = Counter(
            "backupd_restore_test_runs", "Restore drills by result", ["result"], registry=reg
        )
        self._drill_last = Gauge(
            "backupd_restore_test_last_success_timestamp_seconds",
            "End of the newest successful restore drill (0: never)",
            registry=reg,
        )
        self._drill_rto = Gauge(
            "backupd_restore_test_duration_seconds",
            "Measured recovery time of the newest restore drill: from its start to a server that answers",
            registry=reg,
        )
        self._drill_bytes = Gauge(
            "backupd_restore_test_restored_bytes", "Bytes restored by the newest restore drill", registry=reg
        )
        self._rpo_age = Gauge(
            "backupd_recovery_point_age_seconds",
            "Now minus the newest moment the repository can restore to (the RPO if the server died now)",
            registry=reg,
        )
        self._migration_runs = Counter(
            "backupd_migration_runs",
            "Guarded schema migrations (`migrate`, not dry runs) by result, as recorded in the catalog",
            ["result"],
            registry=reg,
        )
        self._migration_duration = Gauge(
            "backupd_migration_last_duration_seconds",
            "Duration of the newest guarded migration (0: none yet)",
            registry=reg,
        )
        self._progress_done = Gauge(
            "backupd_job_progress_done",
            "Units (bytes, objects, segments, rows) the running job has done in its current phase "
            "(0 while it does not run)",
            ["job"],
            registry=reg,
        )
        self._progress_total = Gauge(
            "backupd_job_progress_total",
            "Units the running job's current phase has in all (0: not running, or not known)",
            ["job"],
            registry=reg,
        )
        for job in JOB_NAMES:
            self._progress_done.labels(job=job).set_function(functools.partial(_progress_of, job, "done"))
            self._progress_total.labels(job=job).set_function(functools.partial(_progress_of, job, "total"))
        self._migration_seen: dict[str, int] = {}
        for status in MIGRATION_RESULTS:
            self._migration_runs.labels(result=status)
        for result in RESULTS:
            self._verify_runs.labels(result=result)
            self._drill_runs.labels(result=result)
        for kind in BACKUP_KINDS:
            for result in RESULTS:
                self._runs.labels(kind=kind, result=result)
            for gauge in (self._last_success, self._last_failure, self._source_bytes, self._stored_bytes):
                gauge.labels(kind=kind).set(0)
            self._anomaly.labels(kind=kind).set(0)
            self._duration.labels(kind=kind)
            self._ret_backups.labels(kind=kind)
        for dep in DEPENDENCIES:
            self._dependency.labels(dependency=dep).set(0)
        for result in ("stored", "duplicate", "error", "refused"):
            self._wal_socket.labels(result=result)

    # -- backups ---------------------------------------------------------------------------
    def backup_succeeded(
        self,
        kind: str,
        finished_at: datetime | float,
        duration_s: float,
        source_bytes: int,
        stored_bytes: int,
    ) -> None:
        """One successful backup run: counts it, observes its duration, sets the last-success
        time and sizes."""
        kind = _kind(kind)
        self._runs.labels(kind=kind, result="success").inc()
        self._duration.labels(kind=kind).observe(max(float(duration_s), 0.0))
        self.set_last_backup(
            kind, succeeded_at=finished_at, source_bytes=source_bytes, stored_bytes=stored_bytes
        )

    def backup_failed(self, kind: str, at: datetime | float) -> None:
        """One failed backup run: counts it and sets the last-failure time."""
        kind = _kind(kind)
        self._runs.labels(kind=kind, result="failure").inc()
        self.set_last_backup(kind, failed_at=at)

    def set_last_backup(
        self,
        kind: str,
        *,
        succeeded_at: datetime | float | None = None,
        failed_at: datetime | float | None = None,
        source_bytes: int | None = None,
        stored_bytes: int | None = None,
    ) -> None:
        """Set (never count) what is known of the newest backups of ``kind``, e.g. from the
        catalog at start. None leaves a value as it is."""
        kind = _kind(kind)
        if succeeded_at is not None:
            self._last_success.labels(kind=kind).set(_ts(succeeded_at))
        if failed_at is not None:
            self._last_failure.labels(kind=kind).set(_ts(failed_at))
        if source_bytes is not None:
            self._source_bytes.labels(kind=kind).set(source_bytes)
        if stored_bytes is not None:
            self._stored_bytes.labels(kind=kind).set(stored_bytes)

    def seed_backup(
        self,
        kind: str,
        *,
        finished_at: datetime | float | None,
        source_bytes: int,
        stored_bytes: int,
    ) -> None:
        """The newest successful backup of ``kind`` as the catalog knows it (no counting; a
        None time leaves the last-success time as it is)."""
        self.set_last_backup(
            kind, succeeded_at=finished_at, source_bytes=source_bytes, stored_bytes=stored_bytes
        )

    def seed_failure(self, kind: str, at: datetime | float) -> None:
        """A failed run of ``kind`` from the catalog (no counting); an older one than the time
        already set is ignored, so seeding in any order ends at the newest failure."""
        kind = _kind(kind)
        with self._lock:
            newest = max(self._seeded_failures.get(kind, 0.0), _ts(at))
            self._seeded_failures[kind] = newest
            self._last_failure.labels(kind=kind).set(newest)

    def set_size_anomaly(self, kind: str, anomaly: bool) -> None:
        self._anomaly.labels(kind=_kind(kind)).set(1 if anomaly else 0)

    # -- WAL -------------------------------------------------------------------------------
    def wal_archived(self, count: int, last_at: datetime | float | None = None) -> None:
        """``count`` more segments archived; ``last_at`` is when the newest of them was."""
        if count > 0:
            with self._lock:
                self._wal_archived.inc(count)
                self._wal_count += count
        if last_at is not None:
            self.set_wal_last_archived(last_at)

    def set_wal_archived_total(self, total: int) -> None:
        """The counter read from the sources of truth (segments stored plus deleted): raised to
        ``total``, never lowered (a counter; a segment deleted by hand is not un-archived)."""
        with self._lock:
            if total > self._wal_count:
                self._wal_archived.inc(total - self._wal_count)
                self._wal_count = total

    def wal_socket_push(self, result: str) -> None:
        """One ``wal push`` answered on the WAL socket (daemon/walservice.py)."""
        self._wal_socket.labels(result=result).inc()

    def set_wal_last_archived(self, at: datetime | float | None) -> None:
        """When the newest WAL segment was archived (None: never, exposed as 0)."""
        self._wal_last.set(_ts(at))

    def wal_archive_failures(self, count: int) -> None:
        """``count`` more failed archive attempts."""
        if count > 0:
            self._wal_failures.inc(count)

    def set_wal_pending(self, segments: int) -> None:
        self._wal_pending.set(max(int(segments), 0))

    def set_recovery_window_start(self, at: datetime | float | None) -> None:
        """The earliest restorable point in time (None: nothing restorable, exposed as 0)."""
        self._window_start.set(_ts(at))

    # -- verification, drills, recovery objectives --------------------------------------------
    def verify_finished(self, ok: bool, at: datetime | float) -> None:
        """One deep verification run: ``ok`` when it found nothing wrong."""
        self._verify_runs.labels(result="success" if ok else "failure").inc()
        if ok:
            self._verify_last.set(_ts(at))

    def set_verify_last_success(self, at: datetime | float | None) -> None:
        self._verify_last.set(_ts(at))

    def set_corrupt_objects(self, n: int) -> None:
        self._corrupt.set(max(int(n), 0))

    def restore_test_finished(
        self, ok: bool, at: datetime | float, rto_s: float | None, restored_bytes: int | None
    ) -> None:
        """One restore drill; its measured RTO and size when it got that far."""
        self._drill_runs.labels(result="success" if ok else "failure").inc()
        if ok:
            self._drill_last.set(_ts(at))
        self.set_last_drill(rto_s=rto_s, restored_bytes=restored_bytes)

    def set_last_drill(
        self,
        *,
        succeeded_at: datetime | float | None = None,
        rto_s: float | None = None,
        restored_bytes: int | None = None,
    ) -> None:
        """Seed or set what the newest drill measured (None leaves a value as it is)."""
        if succeeded_at is not None:
            self._drill_last.set(_ts(succeeded_at))
        if rto_s is not None:
            self._drill_rto.set(max(float(rto_s), 0.0))
        if restored_bytes is not None:
            self._drill_bytes.set(max(int(restored_bytes), 0))

    def set_recovery_point_age(self, seconds: float | None) -> None:
        """None (nothing restorable): the series is NaN, so `>` alerts do not fire on it and an
        absent()-style alert can."""
        self._rpo_age.set(float("nan") if seconds is None else max(float(seconds), 0.0))

    # -- migrations ------------------------------------------------------------------------
    def set_migration_runs(self, counts: Mapping[str, int], last_duration_s: float | None) -> None:
        """Bring the migration series up to the catalog's counts (migrations run as separate
        ``migrate`` commands, so the daemon reads them from the catalog): each counter advances
        by what was added since the last call; it never goes back."""
        with self._lock:
            for status, count in counts.items():
                if status not in MIGRATION_RESULTS:
                    continue
                added = count - self._migration_seen.get(status, 0)
                if added > 0:
                    self._migration_runs.labels(result=status).inc(added)
                    self._migration_seen[status] = count
        if last_duration_s is not None:
            self._migration_duration.set(max(float(last_duration_s), 0.0))

    # -- retention and repository ------------------------------------------------------------
    def retention_deleted(
        self, per_kind: Mapping[BackupKind, int] | Mapping[str, int], deleted_bytes: int
    ) -> None:
        """One retention pass deleted ``per_kind[kind]`` backups and ``deleted_bytes`` bytes."""
        for kind, count in per_kind.items():
            if count > 0:
                self._ret_backups.labels(kind=_kind(kind)).inc(count)
        if deleted_bytes > 0:
            self._ret_bytes.inc(deleted_bytes)

    def set_repository_stored_bytes(self, n: int) -> None:
        self._repo_bytes.set(max(int(n), 0))

    # -- daemon ------------------------------------------------------------------------------
    def set_next_run(self, job: str, at: datetime | float | None) -> None:
        """The next planned run of ``job``; None (job off or paused) removes its series."""
        if not _JOB.match(job):
            raise ValueError(f"{job!r} is not a job name")
        if at is None:
            with contextlib.suppress(KeyError):
                self._next_run.remove(job)
            return
        self._next_run.labels(job=job).set(_ts(at))

    def scheduler_queue_wait(self, job_class: str, seconds: float) -> None:
        """A scheduled job started after ``seconds`` in the queue (``job_class``: ``wal``,
        ``backup`` or ``maintenance``). Daemon-level: no cluster label."""
        if job_class not in QUEUE_CLASSES:
            raise ValueError(f"{job_class!r} is not one of {', '.join(QUEUE_CLASSES)}")
        self._queue_wait.labels(job_class).observe(seconds)

    def set_leader(self, leader: bool) -> None:
        self._leader.set(1 if leader else 0)

    def set_dependency(self, name: str, up: bool) -> None:
        if name not in DEPENDENCIES:
            raise ValueError(f"{name!r} is not one of {', '.join(DEPENDENCIES)}")
        self._dependency.labels(dependency=name).set(1 if up else 0)

    # -- exposition --------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type (``text/plain; version=0.0.4``,
        which every Prometheus server parses)."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


def _kind(kind: str) -> str:
    if kind not in BACKUP_KINDS:
        raise ValueError(f"{kind!r} is not a backup kind ({', '.join(BACKUP_KINDS)})")
    return kind
