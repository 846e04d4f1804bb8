"""The application, built once from ``Settings``: what the commands and the daemon use.

``App(settings)`` reads the settings and opens nothing. Each part is built when a command first
asks for it, and the parts that open something are cached, so a command opens only what it uses
(``wal-push``: the storage and the WAL archive; never the catalog, psycopg or the scheduler):

- ``storage()``, ``repository()``, ``wal_archive()``: opened once, closed by ``close()``;
- ``catalog()``: a context manager, the catalog is closed when the block ends; ``open_catalog()``
  for the daemon, which owns its catalog for its lifetime;
- sources (``logical_source()``, ``physical_source()``, ``restore_target(url)``), the notifier,
  the options objects (``backup_options``, ``drill_options``, ``retention_policy``, ``job_specs``,
  ``objectives``, ``recovery_config``), the health probes: built when asked, connecting to
  nothing until they are used.

The daemon takes the ``App`` as a ``daemon.parts.DaemonApp`` (a protocol of the daemon's own):
the daemon never imports ``wiring`` or ``settings``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contentflow_backupd.settings import Settings
from contentflow_backupd.wiring import storage as _storage

if TYPE_CHECKING:
    from contentflow_backupd.catalog.base import Catalog
    from contentflow_backupd.catalog.leader import LeaderLock
    from contentflow_backupd.daemon.parts import AnomalyLimits
    from contentflow_backupd.daemon.walservice import WalService
    from contentflow_backupd.daemon.walwatch import StreamSupervisor, WalWatcher
    from contentflow_backupd.model import Scope
    from contentflow_backupd.observability.metrics import ClusterMetrics
    from contentflow_backupd.observability.notify import Notifier
    from contentflow_backupd.ops.backup.run import BackupOptions
    from contentflow_backupd.ops.drill.run import DrillOptions
    from contentflow_backupd.ops.health.evaluate import HealthObjectives
    from contentflow_backupd.ops.health.inputs import ArchiverStatus
    from contentflow_backupd.ops.retention.plan import RetentionPolicy
    from contentflow_backupd.repository.crypto import KekSecret
    from contentflow_backupd.repository.repository import Repository
    from contentflow_backupd.repository.walarchive import WalArchive
    from contentflow_backupd.scheduling.scheduler import JobSpec
    from contentflow_backupd.source.base import PostgresDrivers
    from contentflow_backupd.source.conninfo import ConnInfo
    from contentflow_backupd.source.logical import PgDumpSource, PgRestoreTarget
    from contentflow_backupd.source.pgdata import RecoveryConfig
    from contentflow_backupd.source.physical import PgBaseBackupSource
    from contentflow_backupd.storage.base import Storage
    from contentflow_backupd.wiring.migrate import MigrateLimits

RESTORE_WRITERS_MAX_DEFAULT = 8


def default_restore_writers() -> int:
    """``BACKUPD_RESTORE__PROCESS_MAX`` unset: the CPUs this process may run on, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, RESTORE_WRITERS_MAX_DEFAULT))


class App:
    """The application of one process (a command, or the daemon), built from ``settings``."""

    def __init__(self, settings: Settings, file_data: dict[str, Any] | None = None) -> None:
        s = settings
        self._settings = s
        self._file_data = file_data or {}
        self._storage: Storage | None = None
        self._repository: Repository | None = None
        self._wal_archive: WalArchive | None = None
        self.cluster = s.cluster
        self.named_cluster = s.named_cluster
        """One of several named clusters: a command printed for the user needs ``--cluster``."""
        self.mode = s.mode
        self.concurrency = s.upload_concurrency
        """Parallel uploads and downloads of one command (``BACKUPD_UPLOAD_CONCURRENCY``)."""
        self.restore_writers = s.restore.process_max or default_restore_writers()
        """Threads that write a physical restore's files (``BACKUPD_RESTORE__PROCESS_MAX``)."""
        self.pg_bin = s.pg_bin
        """The PostgreSQL client tools (``BACKUPD_PG_BIN``; None: found by server major)."""
        self.drill_pg_bin = s.drill.pg_bin
        self.drill_checks = s.drill.checks
        self.drill_scratch_dir = s.drill.scratch_dir
        self.config_file = s.config
        self.repository_url = s.repository or ""
        self.s3_endpoint_url = s.s3.endpoint_url
        self.object_lock = s.s3.object_lock
        self.state_path = s.state_dir
        """The state directory, not created (``state_dir()`` creates it)."""
        self.timezone = s.schedule.timezone
        self.http_listen = s.http.listen
        self.shutdown_grace = s.shutdown_grace
        self.wal_method = s.wal.method
        self.wal_slot = s.wal.slot
        self.wal_archive_timeout = s.wal.archive_timeout
        self.wal_prefetch = s.wal.prefetch
        self.wal_prefetch_idle = s.wal.prefetch_idle
        self.gc_grace = s.retention.gc_grace
        self.full_scheduled = s.schedule.full != "off"
        self.drills_scheduled = s.schedule.restore_test != "off"
        self.catalog_url = s.catalog_sqlalchemy_url

    @property
    def lease_name(self) -> str:
        """This cluster's lease in the fleet: ``<cluster>@<repository hash>``, one per repository
        and cluster as the advisory lock was (:func:`lease_name`)."""
        return lease_name(self.cluster, self.repository_url, self.s3_endpoint_url)

    # -- the repository ------------------------------------------------------------------------
    def storage(self) -> Storage:
        """The repository's storage (``BACKUPD_REPOSITORY``), opened once."""
        if self._storage is None:
            self._storage = _storage.open_storage(self._settings)
        return self._storage

    def open_storage(self) -> Storage:
        """A storage of its own (not the cached one), which the caller closes."""
        return _storage.open_storage(self._settings)

    def repository(self) -> Repository:
        """The repository, opened once (its key first: a missing key is a configuration error)."""
        if self._repository is None:
            self._repository = _storage.open_repository(self._settings, self._storage)
            self._storage = self._repository.storage
        return self._repository

    def init_repository(self) -> Repository:
        """A new repository at ``BACKUPD_REPOSITORY`` (``init``; the daemon on an empty location)."""
        self._repository = _storage.init_repository(self._settings, self._storage)
        self._storage = self._repository.storage
        return self._repository

    def wal_archive(self) -> WalArchive:
        """The cluster's WAL archive, compressing at ``WAL_COMPRESSION_LEVEL`` (the ``wal-*``
        commands), opened once."""
        if self._wal_archive is None:
            self._wal_archive = _storage.open_wal_archive(self._settings, self._storage)
            self._storage = self._wal_archive.repo.storage
        return self._wal_archive

    def extra_kek_secret(
        self, *, passphrase_file: Path | None, key_file: Path | None, kms_key_id: str | None
    ) -> KekSecret:
        """The secret of a key-encryption key to add (``keys add``): exactly one source."""
        return _storage.extra_kek_secret(
            self._settings, passphrase_file=passphrase_file, key_file=key_file, kms_key_id=kms_key_id
        )

    def state_dir(self) -> Path:
        """The state directory, created (0700) when missing."""
        return _storage.state_dir(self._settings)

    def lock_dir(self) -> Path:
        return _storage.lock_dir(self._settings)

    def close(self) -> None:
        """Close what this application opened (the storage)."""
        storage, self._storage, self._repository, self._wal_archive = self._storage, None, None, None
        if storage is not None:
            storage.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the catalog -----------------------------------------------------------------------------
    def open_catalog(self, *, read_only: bool = False) -> Catalog:
        """The catalog, opened (and migrated); the caller closes it (the daemon, at shutdown).
        ``read_only`` (commands that only read): nothing is written, not even the schema."""
        from contentflow_backupd.wiring.catalog import open_catalog

        return open_catalog(self._settings, read_only=read_only)

    @contextlib.contextmanager
    def catalog(self, *, read_only: bool = False) -> Iterator[Catalog]:
        """``with app.catalog() as catalog:``: opened for the block, always closed."""
        opened = self.open_catalog(read_only=read_only)
        try:
            yield opened
        finally:
            opened.close()

    @contextlib.contextmanager
    def catalog_or_none(
        self, event: str, *, level: str = "warning", hint: str | None = None, read_only: bool = False
    ) -> Iterator[Catalog | None]:
        """``with app.catalog_or_none(event) as catalog:``: the catalog, or None (logged as
        ``event`` at ``level``) when it cannot be opened, for commands that go on without it."""
        import structlog

        from contentflow_backupd.errors import BackupdError

        try:
            opened = self.open_catalog(read_only=read_only)
        except BackupdError as exc:
            fields = {"error": exc.message} | ({"hint": hint} if hint else {})
            getattr(structlog.get_logger("contentflow_backupd.cli"), level)(event, **fields)
            yield None
            return
        try:
            yield opened
        finally:
            opened.close()

    def audit_catalog(self) -> contextlib.AbstractContextManager[Catalog | None]:
        """The catalog for the audit trail, or None (``audit_unavailable``): a restore during a
        disaster must not depend on the catalog."""
        return self.catalog_or_none("audit_unavailable", hint="this operation is not audited")

    def scope(self, catalog: Catalog, *, read_only: bool = False) -> Scope:
        """(repository id, ``BACKUPD_CLUSTER``): what every catalog query of a command is limited
        to. ``read_only``: remember nothing, attribute no old row (``ops.repo.scope``)."""
        from contentflow_backupd.ops.repo.scope import resolve_scope

        found = resolve_scope(self.storage(), catalog, self.cluster, read_only=read_only)
        assert found is not None
        return found

    def leader_lock(self, scope: Scope | None = None) -> LeaderLock:
        """The daemon's leader lock on the catalog. On PostgreSQL its key is one repository's
        cluster (``scope``): daemons of other clusters or repositories sharing the catalog lead
        their own. On SQLite (one daemon per catalog file) the scope does not matter."""
        from contentflow_backupd.catalog.leader import LeaderLock

        name = self.cluster if scope is None else f"{scope.repository_id}/{scope.cluster}"
        return LeaderLock.for_url(self.catalog_url, name)

    # -- the PostgreSQL side ---------------------------------------------------------------------
    @cached_property
    def conninfo(self) -> ConnInfo:
        """The configured server (``BACKUPD_DATABASE_URL``), parsed; nothing connects."""
        from contentflow_backupd.wiring.sources import source_conninfo

        return source_conninfo(self._settings)

    def logical_source(self) -> PgDumpSource:
        from contentflow_backupd.wiring.sources import logical_source

        return logical_source(self._settings)

    def physical_source(self) -> PgBaseBackupSource:
        from contentflow_backupd.wiring.sources import physical_source

        return physical_source(self._settings)

    def pg_drivers(self, *, restore_writers: int | None = None) -> PostgresDrivers:
        """The PostgreSQL side the use cases are given (``source.base.PostgresDrivers``: scratch
        servers, database facts and admin, data directories, pg_combinebackup).
        ``restore_writers``: overrides ``BACKUPD_RESTORE__PROCESS_MAX`` (``--process-max``)."""
        from contentflow_backupd.source.drivers import LocalDataDirectories, PgDrivers

        return PgDrivers(datadir=LocalDataDirectories(restore_writers or self.restore_writers))

    def restore_target(self, url: str) -> PgRestoreTarget:
        """The database ``--to-database URL`` names."""
        from contentflow_backupd.wiring.sources import restore_target

        return restore_target(self._settings, url)

    def restore_point_maker(self) -> Callable[[str], tuple[str, int, datetime]]:
        from contentflow_backupd.wiring.sources import restore_point_maker

        return restore_point_maker(self._settings)

    def self_command(self) -> list[str]:
        from contentflow_backupd.wiring.sources import self_command

        return self_command()

    def recovery_config(self) -> RecoveryConfig:
        """The settings ``restore_command`` will use."""
        from contentflow_backupd.wiring.sources import recovery_config

        return recovery_config(self._settings)

    # -- options of the use cases ----------------------------------------------------------------
    def backup_options(self, kind: str, *, mode: str | None = None, **extra: Any) -> BackupOptions:
        from contentflow_backupd.wiring.options import backup_options

        return backup_options(self._settings, kind, mode=mode, **extra)

    def drill_options(self, *, backup: str = "latest", target_time: str | None = "random") -> DrillOptions:
        from contentflow_backupd.wiring.options import drill_options

        return drill_options(self._settings, backup=backup, target_time=target_time)

    @cached_property
    def retention_policy(self) -> RetentionPolicy:
        from contentflow_backupd.wiring.options import retention_policy

        return retention_policy(self._settings)

    @cached_property
    def gc_grace_s(self) -> float:
        """``BACKUPD_RETENTION__GC_GRACE`` in seconds."""
        from contentflow_backupd.timespec import parse_duration

        return parse_duration(self._settings.retention.gc_grace)

    @cached_property
    def verify_sweep_s(self) -> float:
        """``BACKUPD_VERIFY__FULL_SWEEP`` in seconds: one full pass of the sweep."""
        from contentflow_backupd.timespec import parse_duration

        return parse_duration(self._settings.verify.full_sweep)

    @cached_property
    def verify_interval_s(self) -> float:
        """The verify job's period (a manual run with the job off paces the sweep as a daily job)."""
        from contentflow_backupd.scheduling.periods import schedule_period
        from contentflow_backupd.timespec import parse_schedule

        s = self._settings.schedule
        return schedule_period(parse_schedule(s.verify), s.timezone) or 86400.0

    @cached_property
    def anomaly_limits(self) -> AnomalyLimits:
        from contentflow_backupd.daemon.parts import AnomalyLimits

        a = self._settings.anomaly
        return AnomalyLimits(window=a.window, low=a.low, high=a.high, min_history=a.min_history)

    @cached_property
    def migrate_limits(self) -> MigrateLimits:
        from contentflow_backupd.wiring.migrate import migrate_limits

        return migrate_limits(self._settings)

    @cached_property
    def progress_interval_s(self) -> float:
        from contentflow_backupd.timespec import parse_duration

        return parse_duration(self._settings.progress_interval)

    @cached_property
    def shutdown_grace_s(self) -> float:
        from contentflow_backupd.timespec import parse_duration

        return parse_duration(self._settings.shutdown_grace)

    @cached_property
    def stall_timeout_s(self) -> float | None:
        """``jobs.stall_timeout`` in seconds; None: off (``0`` or ``off``)."""
        from contentflow_backupd.timespec import parse_duration

        value = self._settings.jobs.stall_timeout
        seconds = 0.0 if value == "off" else parse_duration(value, allow_zero=True)
        return seconds or None

    def settings_view(self, file_data: dict[str, Any] | None = None) -> list[dict[str, str]]:
        """Every resolved setting: name, value (secrets masked), source (``config show``)."""
        from contentflow_backupd.wiring.configshow import describe_settings

        return describe_settings(self._settings, self._file_data if file_data is None else file_data)

    # -- the daemon ------------------------------------------------------------------------------
    @cached_property
    def job_specs(self) -> list[JobSpec]:
        from contentflow_backupd.wiring.daemon import job_specs

        return job_specs(self._settings, named_clusters=self._settings.named_cluster)

    @property
    def max_concurrent_jobs(self) -> int:
        return self._settings.max_concurrent_jobs

    def notifier(self) -> Notifier:
        from contentflow_backupd.wiring.daemon import notifier

        return notifier(self._settings)

    def wal_watcher(
        self, repo: Repository, metrics: ClusterMetrics, catalog: Catalog | None = None
    ) -> WalWatcher:
        from contentflow_backupd.wiring.daemon import wal_watcher

        return wal_watcher(self._settings, repo, metrics, catalog)

    def stream_supervisor(self, repo: Repository, metrics: ClusterMetrics) -> StreamSupervisor:
        from contentflow_backupd.wiring.daemon import stream_supervisor

        return stream_supervisor(self._settings, repo, metrics)

    def wal_service(self, repo: Repository, metrics: ClusterMetrics) -> WalService | None:
        from contentflow_backupd.wiring.daemon import wal_service

        return wal_service(self._settings, repo, metrics)

    def wal_prefetch_dir(self) -> Path:
        """The prefetch spool of ``wal fetch`` (``<state_dir>/wal-prefetch/<cluster>``)."""
        from contentflow_backupd.walconf import prefetch_dir

        return Path(prefetch_dir(str(self.state_dir()), self.cluster))

    def wal_spool_dir(self) -> Path:
        from contentflow_backupd.wiring.daemon import wal_spool_dir

        return wal_spool_dir(self._settings)

    def tmp_dir(self) -> Path:
        return _storage.tmp_dir(self._settings)

    # -- health ----------------------------------------------------------------------------------
    @cached_property
    def objectives(self) -> HealthObjectives:
        from contentflow_backupd.wiring.health import objectives

        return objectives(self._settings)

    @cached_property
    def rto_objective_s(self) -> float:
        from contentflow_backupd.timespec import parse_duration

        return parse_duration(self._settings.drill.rto_objective)

    @cached_property
    def rpo_objective_s(self) -> float:
        from contentflow_backupd.timespec import parse_duration

        return parse_duration(self._settings.drill.rpo_objective)

    def database_probe(self) -> Callable[[], object]:
        """One connection to the configured server, when called (the ``database`` dependency)."""
        from contentflow_backupd.wiring.health import database_probe

        return database_probe(self._settings)

    def archiver_status(self) -> Callable[[], ArchiverStatus]:
        """The server's WAL position and ``pg_stat_archiver``, when called."""
        from contentflow_backupd.wiring.health import archiver_status

        return archiver_status(self._settings)


def lease_name(cluster: str, repository_url: str, s3_endpoint_url: str | None = None) -> str:
    """The fleet lease of ``cluster`` in the repository at ``repository_url`` (trailing ``/``
    stripped; with the S3 endpoint when set): ``<cluster>@<8 hex digits of BLAKE2b>``. A cluster
    name holds no ``@`` (``repository/layout.py: check_cluster``), so ``lease.split("@")[0]`` is
    the cluster. Daemons of two repositories with one cluster name hold two leases."""
    import hashlib

    location = "\n".join(part for part in (repository_url.rstrip("/"), s3_endpoint_url) if part)
    return f"{cluster}@{hashlib.blake2b(location.encode(), digest_size=4).hexdigest()}"
