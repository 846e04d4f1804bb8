"""Settings -> the options objects of the use cases: a backup, a drill, the retention policy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from contentflow_backupd.observability.logging import register_secret
from contentflow_backupd.settings import Settings
from contentflow_backupd.wiring.sources import recovery_config, self_command
from contentflow_backupd.wiring.storage import lock_dir, state_dir

if TYPE_CHECKING:
    from contentflow_backupd.ops.backup.run import BackupOptions
    from contentflow_backupd.ops.drill.run import DrillOptions
    from contentflow_backupd.ops.retention.plan import RetentionPolicy


def backup_options(settings: Settings, kind: str, *, mode: str | None = None, **extra: Any) -> BackupOptions:
    """A backup of ``kind`` (``mode`` default: ``BACKUPD_MODE``) with the settings' cluster,
    concurrency, lock directory and WAL archive timeout; ``extra``: trigger, cancel."""
    from contentflow_backupd.ops.backup.run import BackupOptions

    return BackupOptions(
        cluster=settings.cluster,
        kind=kind,  # type: ignore[arg-type]
        mode=mode or settings.mode,
        concurrency=settings.upload_concurrency,
        lock_dir=lock_dir(settings),
        archive_timeout=settings.wal.archive_timeout,
        packs=settings.chunking.packs,
        **extra,
    )


def retention_policy(settings: Settings) -> RetentionPolicy:
    """``BACKUPD_RETENTION__*`` as a ``RetentionPolicy`` in seconds."""
    from contentflow_backupd.ops.retention.plan import RetentionPolicy
    from contentflow_backupd.timespec import parse_duration

    r = settings.retention
    return RetentionPolicy(
        full_s=parse_duration(r.full),
        incremental_s=parse_duration(r.incremental),
        wal_s=parse_duration(r.wal),
        min_full=r.min_full,
        gc_grace_s=parse_duration(r.gc_grace),
        lock_margin_s=(
            parse_duration(settings.s3.object_lock_margin, allow_zero=True)
            if settings.s3.object_lock is not None
            else None
        ),
    )


def drill_options(
    settings: Settings, *, backup: str = "latest", target_time: str | None = "random"
) -> DrillOptions:
    """Restore drills (``restore-test``, the ``restore_test`` job) from ``BACKUPD_DRILL__*``."""
    from contentflow_backupd.ops.drill.run import DrillOptions
    from contentflow_backupd.source.conninfo import ConnInfo

    url = settings.drill.database_url.get_secret_value() if settings.drill.database_url else None
    database = ConnInfo.parse(url, setting="BACKUPD_DRILL__DATABASE_URL") if url else None
    if database is not None:
        register_secret(database.password)
    return DrillOptions(
        cluster=settings.cluster,
        state_dir=state_dir(settings),
        mode=settings.mode,
        backup=backup,
        target_time=target_time,
        pg_bin=settings.drill.pg_bin,
        client_bin=settings.pg_bin,
        database=database,
        checks_file=settings.drill.checks,
        scratch_dir=settings.drill.scratch_dir,
        tool=self_command(),
        recovery=recovery_config(settings),
        concurrency=settings.upload_concurrency,
        lock_dir=lock_dir(settings),
    )
