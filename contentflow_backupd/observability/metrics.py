"""Prometheus metrics of the daemon (prometheus_client lives here and in ``http/`` only).

Every :class:`Metrics` owns its registry: nothing is registered globally, so tests and several
daemons in one process never collide. Every per-cluster series carries ``cluster``, the name of
a cluster added with ``Metrics.add_cluster`` (the implicit one too: ``cluster="main"`` by
default); ``Metrics.for_cluster(name)`` is that cluster's :class:`ClusterMetrics`, the view the
jobs write to. The series, exactly (README "Metrics", docs/observability.md, issues 4 and 18)::

    backupd_build_info{version}                                   1 (daemon-level: no cluster)
    backupd_backup_runs_total{cluster,kind,result}                result: success | failure
    backupd_backup_last_success_timestamp_seconds{cluster,kind}   0 = never
    backupd_backup_last_failure_timestamp_seconds{cluster,kind}   0 = never
    backupd_backup_duration_seconds{cluster,kind}                 histogram, 10 s .. 8 h
    backupd_backup_last_source_bytes{cluster,kind}
    backupd_backup_last_stored_bytes{cluster,kind}
    backupd_backup_size_anomaly{cluster,kind}                     0 or 1
    backupd_wal_archived_segments_total{cluster}                  segments of the cluster that reached
                                                                  the repository (read, not counted)
    backupd_wal_archive_failures_total{cluster}
    backupd_wal_socket_pushes_total{cluster,result}               stored | duplicate | error | refused
    backupd_wal_last_archived_timestamp_seconds{cluster}          0 = never
    backupd_wal_pending_segments{cluster}
    backupd_recovery_window_start_timestamp_seconds{cluster}      0 = no recovery window
    backupd_retention_deleted_backups_total{cluster,kind}
    backupd_retention_deleted_bytes_total{cluster}
    backupd_repository_stored_bytes{cluster}
    backupd_scheduler_next_run_timestamp_seconds{cluster,job}     absent while the job is off
    backupd_leader{cluster}                                       0 or 1
    backupd_scheduler_queue_wait_seconds{class}                   histogram, 0.1 s .. 4 h: a fired
                                                                  job's wait for a pool worker;
                                                                  class: wal | backup | maintenance
                                                                  (daemon-level: no cluster)
    backupd_config_reloads_total{result}                          SIGHUP reloads: applied | refused |
                                                                  failed (daemon-level: no cluster)
    backupd_dependency_up{cluster,dependency}                     database | storage | catalog
    backupd_verify_runs_total{cluster,result}                     deep verification runs
    backupd_verify_last_success_timestamp_seconds{cluster}        0 = never
    backupd_verify_corrupt_objects{cluster}                       objects known bad, not resolved
    backupd_restore_test_runs_total{cluster,result}               restore drills
    backupd_restore_test_last_success_timestamp_seconds{cluster}  0 = never
    backupd_restore_test_duration_seconds{cluster}                the last drill's measured RTO
    backupd_restore_test_restored_bytes{cluster}                  what the last drill restored
    backupd_recovery_point_age_seconds{cluster}                   now - newest restorable moment
    backupd_migration_runs_total{cluster,result}                  guarded migrations (not dry runs):
                                                                  applied | noop | refused | failed |
                                                                  rolled_back; from the catalog
    backupd_migration_last_duration_seconds{cluster}              the newest of them (0: none yet)
    backupd_job_progress_done{cluster,job}                        the running job's current phase:
    backupd_job_progress_total{cluster,job}                       units done, units in all (0: idle
                                                                  or unknown); observability/progress.py

plus prometheus_client's standard ``process_*`` series (start time, CPU, memory, open files),
daemon-level like ``backupd_build_info``, ``backupd_scheduler_queue_wait_seconds`` and
``backupd_config_reloads_total``.

For every added cluster, every ``{kind}`` series (``full``, ``incremental``), every kind x result
pair and every dependency exist from the start at 0, so alerts and ``rate()`` see them before the
first event; ``remove_cluster`` drops them all. Label values come from these fixed sets and the
configured cluster names (``job``: a short lowercase name): never backup ids, LSNs or file names.
``_created`` samples are left out of the exposition.

Setters (``set_*``) are idempotent and safe for seeding from the catalog at start; the event
methods (``backup_succeeded``, ``wal_archived``, ...) also advance counters, so call them once per
event. All methods are thread-safe.
"""

from __future__ import annotations

import contextlib
import copy
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

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
WAL_SOCKET_RESULTS: tuple[str, ...] = ("stored", "duplicate", "error", "refused")
RELOAD_RESULTS: tuple[str, ...] = ("applied", "refused", "failed")
"""A configuration reload (``daemon/reload.py``): applied to every cluster; refused, the old
configuration kept; failed, applied but not to every cluster."""
_JOB = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""What ``cluster`` may hold: a cluster name (repository/layout.py: check_cluster)."""
_M = TypeVar("_M", bound=MetricWrapperBase)


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


class Metrics:
    """The daemon's metrics in their own registry: the daemon-level series, and those of each
    cluster added (see the module docstring). No cluster exists until ``add_cluster``."""

    def __init__(self, version: str = __version__) -> None:
        self._lock = threading.RLock()
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
            "backupd_backup_runs",
            "Finished backup runs by kind and result",
            ["cluster", "kind", "result"],
            registry=reg,
        )
        self._last_success = Gauge(
            "backupd_backup_last_success_timestamp_seconds",
            "End of the newest successful backup of each kind (0: never)",
            ["cluster", "kind"],
            registry=reg,
        )
        self._last_failure = Gauge(
            "backupd_backup_last_failure_timestamp_seconds",
            "Time of the newest failed backup run of each kind (0: never)",
            ["cluster", "kind"],
            registry=reg,
        )
        self._duration = Histogram(
            "backupd_backup_duration_seconds",
            "Duration of successful backups",
            ["cluster", "kind"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self._source_bytes = Gauge(
            "backupd_backup_last_source_bytes",
            "Bytes read from the database by the newest successful backup",
            ["cluster", "kind"],
            registry=reg,
        )
        self._stored_bytes = Gauge(
            "backupd_backup_last_stored_bytes",
            "Bytes newly stored in the repository by the newest successful backup",
            ["cluster", "kind"],
            registry=reg,
        )
        self._anomaly = Gauge(
            "backupd_backup_size_anomaly",
            "1 when the newest backup's size is outside the expected band of its kind",
            ["cluster", "kind"],
            registry=reg,
        )
        self._wal_archived = Counter(
            "backupd_wal_archived_segments",
            "WAL segments of the cluster that reached the repository, by any process (stored now "
            "plus deleted by retention)",
            ["cluster"],
            registry=reg,
        )
        self._wal_failures = Counter(
            "backupd_wal_archive_failures",
            "WAL archive failures seen by this daemon",
            ["cluster"],
            registry=reg,
        )
        self._wal_socket = Counter(
            "backupd_wal_socket_pushes",
            "wal push requests this daemon answered on its WAL socket, by result (stored, "
            "duplicate, error: refused for good, refused: the client pushed itself)",
            ["cluster", "result"],
            registry=reg,
        )
        self._wal_last = Gauge(
            "backupd_wal_last_archived_timestamp_seconds",
            "Time the newest WAL segment was archived (0: never)",
            ["cluster"],
            registry=reg,
        )
        self._wal_pending = Gauge(
            "backupd_wal_pending_segments",
            "Completed WAL segments not archived yet",
            ["cluster"],
            registry=reg,
        )
        self._window_start = Gauge(
            "backupd_recovery_window_start_timestamp_seconds",
            "The earliest point in time that can be restored (0: none)",
            ["cluster"],
            registry=reg,
        )
        self._ret_backups = Counter(
            "backupd_retention_deleted_backups",
            "Backups deleted by retention",
            ["cluster", "kind"],
            registry=reg,
        )
        self._ret_bytes = Counter(
            "backupd_retention_deleted_bytes",
            "Bytes deleted from the repository by retention",
            ["cluster"],
            registry=reg,
        )
        self._repo_bytes = Gauge(
            "backupd_repository_stored_bytes", "Bytes stored in the repository", ["cluster"], registry=reg
        )
        self._next_run = Gauge(
            "backupd_scheduler_next_run_timestamp_seconds",
            "Next planned run of each scheduled job",
            ["cluster", "job"],
            registry=reg,
        )
        self._leader = Gauge(
            "backupd_leader",
            "1 when this daemon leads the cluster (runs its jobs), 0 on standby",
            ["cluster"],
            registry=reg,
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
        self._reloads = Counter(
            "backupd_config_reloads",
            "Configuration reloads (SIGHUP) by result: applied, refused (the old configuration "
            "kept), failed (not applied to every cluster)",
            ["result"],
            registry=reg,
        )
        for result in RELOAD_RESULTS:
            self._reloads.labels(result)
        self._dependency = Gauge(
            "backupd_dependency_up",
            "1 when the dependency answered its last check",
            ["cluster", "dependency"],
            registry=reg,
        )
        self._verify_runs = Counter(
            "backupd_verify_runs", "Deep verification runs by result", ["cluster", "result"], registry=reg
        )
        self._verify_last = Gauge(
            "backupd_verify_last_success_timestamp_seconds",
            "End of the newest successful deep verification (0: never)",
            ["cluster"],
            registry=reg,
        )
        self._corrupt = Gauge(
            "backupd_verify_corrupt_objects",
            "Repository objects known to be damaged or missing that a kept backup still needs",
            ["cluster"],
            registry=reg,
        )
        self._drill_runs = Counter(
            "backupd_restore_test_runs", "Restore drills by result", ["cluster", "result"], registry=reg
        )
        self._drill_last = Gauge(
            "backupd_restore_test_last_success_timestamp_seconds",
            "End of the newest successful restore drill (0: never)",
            ["cluster"],
            registry=reg,
        )
        self._drill_rto = Gauge(
            "backupd_restore_test_duration_seconds",
            "Measured recovery time of the newest restore drill: from its start to a server that answers",
            ["cluster"],
            registry=reg,
        )
        self._drill_bytes = Gauge(
            "backupd_restore_test_restored_bytes",
            "Bytes restored by the newest restore drill",
            ["cluster"],
            registry=reg,
        )
        self._rpo_age = Gauge(
            "backupd_recovery_point_age_seconds",
            "Now minus the newest moment the repository can restore to (the RPO if the server died now)",
            ["cluster"],
            registry=reg,
        )
        self._migration_runs = Counter(
            "backupd_migration_runs",
            "Guarded schema migrations (`migrate`, not dry runs) by result, as recorded in the catalog",
            ["cluster", "result"],
            registry=reg,
        )
        self._migration_duration = Gauge(
            "backupd_migration_last_duration_seconds",
            "Duration of the newest guarded migration (0: none yet)",
            ["cluster"],
            registry=reg,
        )
        self._clusters: dict[str, ClusterMetrics] = {}
        self._progress = _JobProgress(self)
        reg.register(self._progress)

    # -- clusters ----------------------------------------------------------------------------
    def add_cluster(self, name: str) -> ClusterMetrics:
        """Start exporting the series of cluster ``name``, every fixed label set at 0 (each
        kind, kind x result, dependency...), and return its view. Idempotent: adding a cluster
        again returns the view it has, values untouched."""
        if not CLUSTER_NAME.match(name):
            raise ValueError(f"{name!r} is not a cluster name")
        with self._lock:
            view = self._clusters.get(name)
            if view is None:
                view = ClusterMetrics(self, name)
                self._clusters[name] = view
                view._precreate()
            return view

    def for_cluster(self, name: str) -> ClusterMetrics:
        """The view of cluster ``name``, added before (KeyError otherwise: the label's values are
        the configured clusters, never a name met at run time)."""
        with self._lock:
            return self._clusters[name]

    def remove_cluster(self, name: str) -> None:
        """Stop exporting every series of cluster ``name`` (idempotent). Its view stays usable
        but records nothing: a job that finishes after the removal brings no series back."""
        with self._lock:
            view = self._clusters.pop(name, None)
            if view is None:
                return
            for metric, labels in view._series:
                with contextlib.suppress(KeyError):
                    metric.remove(name, *labels)
            view._series.clear()

    def set_standby(self, name: str) -> None:
        """``backupd_leader{cluster=name} 0`` alone: a cluster this daemon has configured but
        does not own (another daemon of the fleet does, or nobody yet), whose other series only
        its owner exports. Idempotent; ``add_cluster`` takes the series over when it is owned."""
        if not CLUSTER_NAME.match(name):
            raise ValueError(f"{name!r} is not a cluster name")
        with self._lock:
            if name not in self._clusters:
                self._leader.labels(name).set(0)

    def clear_standby(self, name: str) -> None:
        """Stop exporting ``set_standby``'s series (the cluster is no longer configured)."""
        with self._lock:
            if name not in self._clusters:
                with contextlib.suppress(KeyError):
                    self._leader.remove(name)

    @property
    def clusters(self) -> tuple[str, ...]:
        """The clusters exported, in the order they were added."""
        with self._lock:
            return tuple(self._clusters)

    # -- daemon-level --------------------------------------------------------------------------
    def scheduler_queue_wait(self, job_class: str, seconds: float) -> None:
        """A scheduled job started after ``seconds`` in the queue (``job_class``: ``wal``,
        ``backup`` or ``maintenance``). Daemon-level: no cluster label."""
        if job_class not in QUEUE_CLASSES:
            raise ValueError(f"{job_class!r} is not one of {', '.join(QUEUE_CLASSES)}")
        self._queue_wait.labels(job_class).observe(seconds)

    def config_reloaded(self, result: str) -> None:
        """A configuration reload ended with ``result`` (``RELOAD_RESULTS``). Daemon-level."""
        if result not in RELOAD_RESULTS:
            raise ValueError(f"{result!r} is not one of {', '.join(RELOAD_RESULTS)}")
        self._reloads.labels(result).inc()

    # -- exposition --------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type (``text/plain; version=0.0.4``,
        which every Prometheus server parses)."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


def running_jobs(
    snapshots: Iterable[Mapping[str, Any]], clusters: Sequence[str]
) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(cluster, job) -> the progress snapshot of that running job (observability/progress.py),
    for the ``clusters`` exported. A snapshot names its cluster in ``cluster`` when it has one
    (one outside ``clusters`` is left out); one without belongs to the first cluster (the
    daemon's own). Of two snapshots of one (cluster, job), the first (the oldest) wins."""
    out: dict[tuple[str, str], Mapping[str, Any]] = {}
    for snap in snapshots:
        cluster = snap.get("cluster")
        if cluster is None and clusters:
            cluster = clusters[0]
        if cluster in clusters:
            out.setdefault((str(cluster), str(snap["operation"])), snap)
    return out


class _JobProgress:
    """``backupd_job_progress_done`` and ``_total`` ``{cluster,job}``: one collector reading
    ``progress.snapshots()`` at each scrape, for every exported cluster and job name (0: idle)."""

    NAMES: tuple[tuple[str, str, str], ...] = (
        (
            "backupd_job_progress_done",
            "done",
            "Units (bytes, objects, segments, rows) the running job has done in its current phase "
            "(0 while it does not run)",
        ),
        (
            "backupd_job_progress_total",
            "total",
            "Units the running job's current phase has in all (0: not running, or not known)",
        ),
    )
    LABELS: tuple[str, ...] = ("cluster", "job")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        for name, _, doc in self.NAMES:
            yield GaugeMetricFamily(name, doc, labels=self.LABELS)

    def collect(self) -> Iterable[Metric]:
        from contentflow_backupd.observability import progress

        clusters = self._metrics.clusters
        values = running_jobs(progress.snapshots(), clusters)
        for name, field, doc in self.NAMES:
            family = GaugeMetricFamily(name, doc, labels=self.LABELS)
            for cluster in clusters:
                for job in JOB_NAMES:
                    running = values.get((cluster, job), {})
                    family.add_metric([cluster, job], float(running.get(field) or 0))
            yield family


class ClusterMetrics:
    """One cluster's series in a :class:`Metrics` registry, with the methods the daemon's jobs
    call (``Metrics.add_cluster``/``for_cluster`` make it). Every value it sets carries
    ``cluster=<name>``; after ``Metrics.remove_cluster`` it records nothing."""

    def __init__(self, parent: Metrics, name: str) -> None:
        self.parent = parent
        """The registry it writes to (``render()`` is there)."""
        self.name = name
        self._wal_count = 0
        """What ``backupd_wal_archived_segments_total`` shows (prometheus_client hides it)."""
        self._seeded_failures: dict[str, float] = {}
        self._migration_seen: dict[str, int] = {}
        self._series: set[tuple[MetricWrapperBase, tuple[str, ...]]] = set()
        """Every (metric, other label values) this view created: what ``remove_cluster`` removes
        (``remove_by_labels`` needs prometheus_client 0.24)."""

    def _precreate(self) -> None:
        m = self.parent
        for status in MIGRATION_RESULTS:
            self._child(m._migration_runs, status)
        for result in RESULTS:
            self._child(m._verify_runs, result)
            self._child(m._drill_runs, result)
        for kind in BACKUP_KINDS:
            for result in RESULTS:
                self._child(m._runs, kind, result)
            for gauge in (m._last_success, m._last_failure, m._source_bytes, m._stored_bytes, m._anomaly):
                self._set(gauge, 0, kind)
            self._child(m._duration, kind)
            self._child(m._ret_backups, kind)
        for dep in DEPENDENCIES:
            self._set(m._dependency, 0, dep)
        for result in WAL_SOCKET_RESULTS:
            self._child(m._wal_socket, result)
        for counter in (m._wal_archived, m._wal_failures, m._ret_bytes):
            self._child(counter)
        for gauge in (
            m._wal_last,
            m._wal_pending,
            m._window_start,
            m._repo_bytes,
            m._leader,
            m._verify_last,
            m._corrupt,
            m._drill_last,
            m._drill_rto,
            m._drill_bytes,
            m._rpo_age,
            m._migration_duration,
        ):
            self._set(gauge, 0)

    def _child(self, metric: _M, *labels: str) -> _M | None:
        """``metric``'s child for this cluster and ``labels``; None once the cluster is removed
        (taken under the registry's lock, so a removal never races a re-creation)."""
        with self.parent._lock:
            if self.parent._clusters.get(self.name) is not self:
                return None
            self._series.add((metric, labels))
            return metric.labels(self.name, *labels)

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
        if (runs := self._child(self.parent._runs, kind, "success")) is not None:
            runs.inc()
        if (duration := self._child(self.parent._duration, kind)) is not None:
            duration.observe(max(float(duration_s), 0.0))
        self.set_last_backup(
            kind, succeeded_at=finished_at, source_bytes=source_bytes, stored_bytes=stored_bytes
        )

    def backup_failed(self, kind: str, at: datetime | float) -> None:
        """One failed backup run: counts it and sets the last-failure time."""
        kind = _kind(kind)
        if (runs := self._child(self.parent._runs, kind, "failure")) is not None:
            runs.inc()
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
        m = self.parent
        if succeeded_at is not None:
            self._set(m._last_success, _ts(succeeded_at), kind)
        if failed_at is not None:
            self._set(m._last_failure, _ts(failed_at), kind)
        if source_bytes is not None:
            self._set(m._source_bytes, source_bytes, kind)
        if stored_bytes is not None:
            self._set(m._stored_bytes, stored_bytes, kind)

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
        with self.parent._lock:
            newest = max(self._seeded_failures.get(kind, 0.0), _ts(at))
            self._seeded_failures[kind] = newest
            self._set(self.parent._last_failure, newest, kind)

    def set_size_anomaly(self, kind: str, anomaly: bool) -> None:
        self._set(self.parent._anomaly, 1 if anomaly else 0, _kind(kind))

    # -- WAL -------------------------------------------------------------------------------
    def wal_archived(self, count: int, last_at: datetime | float | None = None) -> None:
        """``count`` more segments archived; ``last_at`` is when the newest of them was."""
        if count > 0:
            with self.parent._lock:
                if (archived := self._child(self.parent._wal_archived)) is not None:
                    archived.inc(count)
                    self._wal_count += count
        if last_at is not None:
            self.set_wal_last_archived(last_at)

    def set_wal_archived_total(self, total: int) -> None:
        """The counter read from the sources of truth (segments stored plus deleted): raised to
        ``total``, never lowered (a counter; a segment deleted by hand is not un-archived)."""
        with self.parent._lock:
            if total > self._wal_count and (archived := self._child(self.parent._wal_archived)) is not None:
                archived.inc(total - self._wal_count)
                self._wal_count = total

    def wal_socket_push(self, result: str) -> None:
        """One ``wal push`` answered on the WAL socket (daemon/walservice.py)."""
        if (pushes := self._child(self.parent._wal_socket, result)) is not None:
            pushes.inc()

    def set_wal_last_archived(self, at: datetime | float | None) -> None:
        """When the newest WAL segment was archived (None: never, exposed as 0)."""
        self._set(self.parent._wal_last, _ts(at))

    def wal_archive_failures(self, count: int) -> None:
        """``count`` more failed archive attempts."""
        if count > 0 and (failures := self._child(self.parent._wal_failures)) is not None:
            failures.inc(count)

    def set_wal_pending(self, segments: int) -> None:
        self._set(self.parent._wal_pending, max(int(segments), 0))

    def set_recovery_window_start(self, at: datetime | float | None) -> None:
        """The earliest restorable point in time (None: nothing restorable, exposed as 0)."""
        self._set(self.parent._window_start, _ts(at))

    # -- verification, drills, recovery objectives --------------------------------------------
    def verify_finished(self, ok: bool, at: datetime | float) -> None:
        """One deep verification run: ``ok`` when it found nothing wrong."""
        if (runs := self._child(self.parent._verify_runs, "success" if ok else "failure")) is not None:
            runs.inc()
        if ok:
            self._set(self.parent._verify_last, _ts(at))

    def set_verify_last_success(self, at: datetime | float | None) -> None:
        self._set(self.parent._verify_last, _ts(at))

    def set_corrupt_objects(self, n: int) -> None:
        self._set(self.parent._corrupt, max(int(n), 0))

    def restore_test_finished(
        self, ok: bool, at: datetime | float, rto_s: float | None, restored_bytes: int | None
    ) -> None:
        """One restore drill; its measured RTO and size when it got that far."""
        if (runs := self._child(self.parent._drill_runs, "success" if ok else "failure")) is not None:
            runs.inc()
        if ok:
            self._set(self.parent._drill_last, _ts(at))
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
            self._set(self.parent._drill_last, _ts(succeeded_at))
        if rto_s is not None:
            self._set(self.parent._drill_rto, max(float(rto_s), 0.0))
        if restored_bytes is not None:
            self._set(self.parent._drill_bytes, max(int(restored_bytes), 0))

    def set_recovery_point_age(self, seconds: float | None) -> None:
        """None (nothing restorable): the series is NaN, so `>` alerts do not fire on it and an
        absent()-style alert can."""
        self._set(self.parent._rpo_age, float("nan") if seconds is None else max(float(seconds), 0.0))

    # -- migrations ------------------------------------------------------------------------
    def set_migration_runs(self, counts: Mapping[str, int], last_duration_s: float | None) -> None:
        """Bring the migration series up to the catalog's counts (migrations run as separate
        ``migrate`` commands, so the daemon reads them from the catalog): each counter advances
        by what was added since the last call; it never goes back."""
        with self.parent._lock:
            for status, count in counts.items():
                if status not in MIGRATION_RESULTS:
                    continue
                added = count - self._migration_seen.get(status, 0)
                if added > 0 and (runs := self._child(self.parent._migration_runs, status)) is not None:
                    runs.inc(added)
                    self._migration_seen[status] = count
        if last_duration_s is not None:
            self._set(self.parent._migration_duration, max(float(last_duration_s), 0.0))

    # -- retention and repository ------------------------------------------------------------
    def retention_deleted(
        self, per_kind: Mapping[BackupKind, int] | Mapping[str, int], deleted_bytes: int
    ) -> None:
        """One retention pass deleted ``per_kind[kind]`` backups and ``deleted_bytes`` bytes."""
        for kind, count in per_kind.items():
            if count > 0 and (deleted := self._child(self.parent._ret_backups, _kind(kind))) is not None:
                deleted.inc(count)
        if deleted_bytes > 0 and (freed := self._child(self.parent._ret_bytes)) is not None:
            freed.inc(deleted_bytes)

    def set_repository_stored_bytes(self, n: int) -> None:
        self._set(self.parent._repo_bytes, max(int(n), 0))

    # -- daemon ------------------------------------------------------------------------------
    def set_next_run(self, job: str, at: datetime | float | None) -> None:
        """The next planned run of ``job``; None (job off or paused) removes its series."""
        if not _JOB.match(job):
            raise ValueError(f"{job!r} is not a job name")
        if at is None:
            with self.parent._lock, contextlib.suppress(KeyError):
                self._series.discard((self.parent._next_run, (job,)))
                self.parent._next_run.remove(self.name, job)
            return
        self._set(self.parent._next_run, _ts(at), job)

    def set_leader(self, leader: bool) -> None:
        """Whether this daemon owns (leads) the cluster: 1 runs its jobs, 0 on standby."""
        self._set(self.parent._leader, 1 if leader else 0)

    def set_dependency(self, name: str, up: bool) -> None:
        if name not in DEPENDENCIES:
            raise ValueError(f"{name!r} is not one of {', '.join(DEPENDENCIES)}")
        self._set(self.parent._dependency, 1 if up else 0, name)

    def _set(self, gauge: Gauge, value: float, *labels: str) -> None:
        if (child := self._child(gauge, *labels)) is not None:
            child.set(value)


def _kind(kind: str) -> str:
    if kind not in BACKUP_KINDS:
        raise ValueError(f"{kind!r} is not a backup kind ({', '.join(BACKUP_KINDS)})")
    return kind
