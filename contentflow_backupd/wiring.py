"""Settings -> concrete objects. The only module that reads settings; composition happens here."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import structlog

from contentflow_backupd.errors import BackupdError, ConfigError
from contentflow_backupd.observability.logging import configure_logging, register_secret
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret, read_key_file
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.settings import ENV_PREFIX, Settings
from contentflow_backupd.storage.base import Storage

if TYPE_CHECKING:  # psycopg, the catalog and the source layer: only in the commands that need them
    from contentflow_backupd.catalog.base import Catalog
    from contentflow_backupd.model import Scope
    from contentflow_backupd.ops.backup.run import BackupOptions
    from contentflow_backupd.ops.retention.plan import RetentionPolicy
    from contentflow_backupd.source.conninfo import ConnInfo
    from contentflow_backupd.source.logical import PgDumpSource, PgRestoreTarget
    from contentflow_backupd.source.pgdata import RecoveryConfig
    from contentflow_backupd.source.physical import PgBaseBackupSource

log = structlog.get_logger(__name__)

KNOWN_ENV = {"BACKUPD_CONFIG"}


def setup_logging(settings: Settings) -> None:
    configure_logging(settings.log.format, settings.log.level)
    secrets = (
        settings.database_url,
        settings.encryption.passphrase,
        settings.catalog_url,
        settings.notify.webhook_url,
        settings.drill.database_url,
    )
    for secret in secrets:
        if secret is not None:
            value = secret.get_secret_value()
            register_secret(value)
            info_pw = _password_of(value)
            register_secret(info_pw)
    register_secret(os.environ.get("AWS_SECRET_ACCESS_KEY"))
    register_secret(os.environ.get("PGPASSWORD"))


def _password_of(url: str) -> str | None:
    """The password in a libpq URI or key=value string, without importing psycopg (wal-push is
    started once per WAL segment and must start fast)."""
    if "://" in url:
        return unquote(urlsplit(url).password or "") or None
    m = re.search(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", url)
    if not m:
        return None
    value = m.group(1)
    return value[1:-1].replace("\\'", "'").replace("\\\\", "\\") if value.startswith("'") else value


def state_dir(settings: Settings) -> Path:
    path = settings.state_dir
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"BACKUPD_STATE_DIR: cannot create {path}: {exc.strerror}") from None
    return path


def tmp_dir(settings: Settings) -> Path:
    return state_dir(settings) / "tmp"


def open_storage(settings: Settings) -> Storage:
    url = settings.repository
    if not url:
        raise ConfigError(
            "BACKUPD_REPOSITORY is not set",
            hint="set it to file:///absolute/path or s3://bucket/prefix",
        )
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"BACKUPD_REPOSITORY: file URLs take no host ({url}); use file:///abs/path")
        path = Path(unquote(parts.path))
        if not path.is_absolute() or not parts.path:
            raise ConfigError(f"BACKUPD_REPOSITORY: {url} is not an absolute path; use file:///abs/path")
        from contentflow_backupd.storage.local import LocalStorage

        storage: Storage = LocalStorage(path)
        _no_s3_only_settings(settings)
    elif parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"BACKUPD_REPOSITORY: {url} names no bucket; use s3://bucket/prefix")
        from contentflow_backupd.storage.s3 import S3Storage

        ca_bundle = settings.s3.ca_bundle
        if ca_bundle is not None and not ca_bundle.is_file():
            # botocore would report it only at the first request, as a network error, retried
            raise ConfigError(f"BACKUPD_S3__CA_BUNDLE: {ca_bundle} is not a readable PEM file")
        storage = S3Storage(
            parts.netloc,
            parts.path.strip("/"),
            endpoint_url=settings.s3.endpoint_url,
            region=settings.s3.region,
            force_path_style=settings.s3.force_path_style,
            ca_bundle=str(settings.s3.ca_bundle) if settings.s3.ca_bundle else None,
            max_concurrency=settings.upload_concurrency,
            **_object_lock_args(settings),
        )
    else:
        raise ConfigError(
            f"BACKUPD_REPOSITORY: unknown URL scheme {parts.scheme or '(none)'!r} in {url!r}",
            hint="use file:///absolute/path or s3://bucket/prefix",
        )
    from contentflow_backupd.storage.retry import RetryingStorage

    # Throttling and 5xx are normal on object stores: up to 10 attempts with full-jitter backoff.
    return RetryingStorage(storage, attempts=10, base_delay=0.1, max_delay=5.0)


def _no_s3_only_settings(settings: Settings) -> None:
    if settings.s3.object_lock is not None or settings.s3.as_of is not None:
        name = "OBJECT_LOCK" if settings.s3.object_lock is not None else "AS_OF"
        raise ConfigError(
            f"BACKUPD_S3__{name} needs an s3:// repository (BACKUPD_REPOSITORY is {settings.repository})",
            hint=f"unset BACKUPD_S3__{name}, or use an S3 bucket",
        )


def _object_lock_args(settings: Settings) -> dict[str, Any]:
    """``S3Storage`` arguments of ``BACKUPD_S3__OBJECT_LOCK`` and ``BACKUPD_S3__AS_OF``: the
    retain-until rule is ``ops.retention.lock_rule.retain_until`` of the retention settings, at write time."""
    from contentflow_backupd.model import utcnow
    from contentflow_backupd.ops.retention.lock_rule import retain_until

    args: dict[str, Any] = {"as_of": settings.s3.as_of}
    if settings.s3.object_lock is not None:
        policy = retention_policy(settings)
        args["object_lock"] = settings.s3.object_lock.upper()
        args["retain_until"] = lambda key: retain_until(policy, key, utcnow())
    return args


def kek_secret(settings: Settings) -> KekSecret:
    enc = settings.encryption
    if enc.passphrase is not None:
        value = enc.passphrase.get_secret_value()
        if not value:
            raise ConfigError("BACKUPD_ENCRYPTION__PASSPHRASE is empty")
        return KekSecret("passphrase", value.encode(), "BACKUPD_ENCRYPTION__PASSPHRASE")
    if enc.passphrase_file is not None:
        data = _read_secret_file(enc.passphrase_file, "BACKUPD_ENCRYPTION__PASSPHRASE_FILE")
        value = data.decode("utf-8", errors="strict").rstrip("\r\n")
        if not value:
            raise ConfigError(f"BACKUPD_ENCRYPTION__PASSPHRASE_FILE: {enc.passphrase_file} is empty")
        register_secret(value)
        return KekSecret(
            "passphrase",
            value.encode(),
            f"BACKUPD_ENCRYPTION__PASSPHRASE_FILE={enc.passphrase_file}",
        )
    if enc.key_file is not None:
        data = _read_secret_file(enc.key_file, "BACKUPD_ENCRYPTION__KEY_FILE")
        try:
            key = read_key_file(data, str(enc.key_file))
        except BackupdError as exc:
            raise ConfigError(f"BACKUPD_ENCRYPTION__KEY_FILE: {exc.message}", hint=exc.hint) from None
        return KekSecret("keyfile", key, f"BACKUPD_ENCRYPTION__KEY_FILE={enc.key_file}")
    if enc.kms_key_id:
        return kms_secret(settings, enc.kms_key_id, "BACKUPD_ENCRYPTION__KMS_KEY_ID")
    raise ConfigError(
        "no encryption key configured",
        hint="set one of BACKUPD_ENCRYPTION__PASSPHRASE, BACKUPD_ENCRYPTION__PASSPHRASE_FILE, "
        "BACKUPD_ENCRYPTION__KEY_FILE or BACKUPD_ENCRYPTION__KMS_KEY_ID; keep a copy somewhere safe: "
        "without it the backups are lost",
    )


def kms_secret(settings: Settings, key_id: str, setting: str) -> KekSecret:
    """A KEK held by the AWS KMS key ``key_id`` (region: ``BACKUPD_ENCRYPTION__KMS_REGION``, else
    the key's ARN, else the AWS environment; endpoint: ``BACKUPD_ENCRYPTION__KMS_ENDPOINT_URL``)."""
    from contentflow_backupd.repository.kms import KmsKeyService

    enc = settings.encryption
    region = enc.kms_region
    if region is None and key_id.startswith("arn:") and len(key_id.split(":")) > 4:
        region = key_id.split(":")[3] or None
    service = KmsKeyService(
        key_id,
        region=region,
        endpoint_url=enc.kms_endpoint_url,
        ca_bundle=str(settings.s3.ca_bundle) if settings.s3.ca_bundle else None,
    )
    return KekSecret.for_kms(service, f"{setting}={key_id}")


def extra_kek_secret(
    settings: Settings,
    *,
    passphrase_file: Path | None = None,
    key_file: Path | None = None,
    kms_key_id: str | None = None,
) -> KekSecret:
    """The secret of a KEK to add (``keys add``): exactly one of the three sources."""
    if passphrase_file is not None:
        data = _read_secret_file(passphrase_file, "--passphrase-file")
        value = data.decode("utf-8", errors="strict").rstrip("\r\n")
        if not value:
            raise ConfigError(f"--passphrase-file: {passphrase_file} is empty")
        register_secret(value)
        return KekSecret("passphrase", value.encode(), f"--passphrase-file={passphrase_file}")
    if key_file is not None:
        data = _read_secret_file(key_file, "--key-file")
        try:
            key = read_key_file(data, str(key_file))
        except BackupdError as exc:
            raise ConfigError(f"--key-file: {exc.message}", hint=exc.hint) from None
        return KekSecret("keyfile", key, f"--key-file={key_file}")
    if kms_key_id:
        return kms_secret(settings, kms_key_id, "--kms-key-id")
    raise ConfigError("give one of --passphrase-file, --key-file or --kms-key-id")


def _read_secret_file(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{setting}: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def chunker_params(settings: Settings) -> ChunkerParams:
    params = ChunkerParams(avg_size=settings.chunking.avg_size)
    params.check()
    return params


def init_repository(settings: Settings) -> Repository:
    return Repository.init(
        open_storage(settings),
        kek_secret(settings),
        chunker=chunker_params(settings),
        compression_level=settings.compression.level,
    )


def open_repository(settings: Settings, storage: Storage | None = None) -> Repository:
    try:
        secret = kek_secret(settings)  # a missing key is a configuration error: check it first
    except ConfigError as exc:
        raise _name_repository_keys(exc, settings, storage) from None
    return Repository.open(
        storage or open_storage(settings), secret, compression_level=settings.compression.level
    )


def _name_repository_keys(exc: ConfigError, settings: Settings, storage: Storage | None) -> ConfigError:
    """``exc`` (no or an unusable secret) with the ids and kinds of the repository's KEKs, when
    the repository can be read (nothing is written)."""
    from contentflow_backupd.repository.keys import KeyStore

    try:
        store = storage or open_storage(settings)
        config = Repository.read_config(store)
        keks = KeyStore(store, config.repository_id).keks()
    except BackupdError:
        return exc
    named = ", ".join(f"{k.id} ({k.kind})" for k in keks) or "none"
    return ConfigError(f"{exc.message}; repository {config.repository_id} has keys: {named}", hint=exc.hint)


def open_catalog(settings: Settings, *, read_only: bool = False) -> Catalog:
    """The catalog, its schema brought up to date; ``read_only``: changing nothing, not even
    creating the state directory (``catalog.sql.open_catalog``)."""
    if settings.catalog_url is None and not read_only:
        state_dir(settings)
    from contentflow_backupd.catalog.sql import open_catalog as _open

    return _open(settings.catalog_sqlalchemy_url, read_only=read_only)


def scope(
    settings: Settings, catalog: Catalog, storage: Storage | None = None, *, read_only: bool = False
) -> Scope:
    """The (repository id, ``BACKUPD_CLUSTER``) every catalog query of a command is limited to
    (``ops.repo.scope.resolve_scope``): the id from ``repo.json``, else the one the catalog
    remembers for this repository URL. Errors reading ``repo.json`` propagate when the catalog
    remembers none. ``read_only``: remember nothing, attribute no old row."""
    from contentflow_backupd.ops.repo.scope import resolve_scope

    opened = storage or open_storage(settings)
    try:
        found = resolve_scope(opened, catalog, settings.cluster, read_only=read_only)
    finally:
        if storage is None:
            opened.close()
    assert found is not None
    return found


def source_conninfo(settings: Settings) -> ConnInfo:
    from contentflow_backupd.source.conninfo import ConnInfo

    url = settings.database_url.get_secret_value() if settings.database_url else None
    return ConnInfo.parse(url)


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
        **extra,
    )


def logical_source(settings: Settings) -> PgDumpSource:
    from contentflow_backupd.source.logical import PgDumpSource

    return PgDumpSource(source_conninfo(settings), bin_dir=settings.pg_bin, tmp_root=tmp_dir(settings))


def physical_source(settings: Settings) -> PgBaseBackupSource:
    from contentflow_backupd.source.physical import PgBaseBackupSource

    return PgBaseBackupSource(source_conninfo(settings), bin_dir=settings.pg_bin, tmp_root=tmp_dir(settings))


def restore_target(settings: Settings, url: str) -> PgRestoreTarget:
    from contentflow_backupd.source.conninfo import ConnInfo
    from contentflow_backupd.source.logical import PgRestoreTarget

    info = ConnInfo.parse(url, setting="--to-database")
    register_secret(info.password)
    return PgRestoreTarget(info, bin_dir=settings.pg_bin, tmp_root=tmp_dir(settings))


def lock_dir(settings: Settings) -> Path:
    return state_dir(settings) / "locks"


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


WAL_COMPRESSION_LEVEL = 1
"""zstd level of the WAL that the ``wal-*`` commands archive, whatever ``BACKUPD_COMPRESSION__LEVEL``
says: ``wal-push`` runs once per 16 MiB segment, and WAL compresses as well at level 1 as at 2
(pgbench segments: 1.88 vs 1.89 MB) in ~80% of the time. The level is not part of the format."""


def open_wal_archive(settings: Settings) -> WalArchive:
    """The WAL archive of ``BACKUPD_CLUSTER``, compressing at ``WAL_COMPRESSION_LEVEL``."""
    secret = kek_secret(settings)  # a missing key is a configuration error: check it first
    repo = Repository.open(open_storage(settings), secret, compression_level=WAL_COMPRESSION_LEVEL)
    return WalArchive(repo, settings.cluster)


def self_command() -> list[str]:
    """How another process (PostgreSQL's ``restore_command``) runs this program: the absolute
    path of the installed command, else this interpreter with ``-m``."""
    import sys

    argv0 = Path(sys.argv[0])
    if argv0.name == "contentflow-backupd" and argv0.is_file():
        return [os.path.abspath(argv0)]
    beside = Path(sys.executable).parent / "contentflow-backupd"
    if beside.is_file():
        return [str(beside)]
    return [sys.executable, "-m", "contentflow_backupd"]


def recovery_config(settings: Settings) -> RecoveryConfig:
    """The settings ``restore_command`` will use. The configuration file of this run, when it
    holds them all (no ``BACKUPD_*`` variable overrides it and its paths are absolute); else the
    resolved settings without secrets, the encryption secret as a file reference."""
    from contentflow_backupd.source.pgdata import RecoveryConfig

    enc = settings.encryption
    secret_setting = "key_file" if enc.key_file is not None else "passphrase_file"
    secret_path = enc.key_file or enc.passphrase_file
    secret_file = Path(os.path.abspath(secret_path)) if secret_path is not None else None
    notes: tuple[str, ...] = ()
    if (settings.repository or "").startswith("s3:"):
        notes = (
            "restore_command reaches S3 with the credentials of the server's environment (AWS_* "
            "variables or ~/.aws of the server's user); the restore does not copy them",
        )
    if enc.kms_key_id is not None:
        notes += (
            f"restore_command opens the repository's keys with KMS key {enc.kms_key_id}: the server's "
            "user needs AWS credentials allowed kms:Decrypt on it",
        )
    overrides = [
        name
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() != "BACKUPD_CONFIG"
        and not name.upper().startswith("BACKUPD_LOG__")
    ]
    paths = (enc.passphrase_file, enc.key_file, settings.s3.ca_bundle, settings.pg_bin, settings.state_dir)
    if settings.config is not None and not overrides and all(p is None or p.is_absolute() for p in paths):
        return RecoveryConfig(
            config_file=Path(os.path.abspath(settings.config)), secret_file=secret_file, notes=notes
        )
    secrets = {"config", "database_url", "catalog_url", "encryption"}
    document = settings.model_dump(mode="json", exclude=secrets)
    document["state_dir"] = os.path.abspath(settings.state_dir)
    if settings.pg_bin is not None:
        document["pg_bin"] = os.path.abspath(settings.pg_bin)
    if settings.s3.ca_bundle is not None:
        document["s3"]["ca_bundle"] = os.path.abspath(settings.s3.ca_bundle)
    passphrase = enc.passphrase.get_secret_value() if enc.passphrase is not None else None
    if enc.kms_key_id is not None:  # not a secret: KMS decides who may use it
        kms = {
            "kms_key_id": enc.kms_key_id,
            "kms_region": enc.kms_region,
            "kms_endpoint_url": enc.kms_endpoint_url,
        }
        document["encryption"] = {k: v for k, v in kms.items() if v is not None}
    return RecoveryConfig(
        document=document,
        secret_setting=secret_setting,
        secret_file=secret_file,
        passphrase=passphrase,
        notes=notes,
    )


def restore_point_maker(settings: Settings) -> Callable[[str], tuple[str, int, datetime]]:
    """``pg_create_restore_point`` on the configured server: name -> (LSN, timeline, time)."""
    from contentflow_backupd.source.postgres import create_restore_point

    info = source_conninfo(settings)

    def make(name: str) -> tuple[str, int, datetime]:
        point = create_restore_point(info, name)
        return point.lsn, point.timeline, point.created_at

    return make


if TYPE_CHECKING:
    from contentflow_backupd.ops.drill.run import DrillOptions


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


# -- the daemon ------------------------------------------------------------------------------
if TYPE_CHECKING:
    from contentflow_backupd.daemon.walwatch import StreamSupervisor, WalWatcher
    from contentflow_backupd.observability.metrics import Metrics
    from contentflow_backupd.observability.notify import Notifier
    from contentflow_backupd.scheduling.scheduler import JobSpec


def job_specs(settings: Settings) -> list[JobSpec]:
    """The daemon's jobs from ``BACKUPD_SCHEDULE__*``. In logical mode there is no ``wal`` job
    (the recovery point is the last incremental)."""
    from contentflow_backupd.scheduling.scheduler import JOB_IDS, JobSpec
    from contentflow_backupd.timespec import parse_schedule

    specs = []
    for job in JOB_IDS:
        value = getattr(settings.schedule, job)
        setting = f"{ENV_PREFIX}SCHEDULE__{job.upper()}"
        try:
            schedule = parse_schedule(value)
        except ValueError as exc:
            raise ConfigError(f"{setting}: {exc}") from None
        if job == "wal" and settings.mode == "logical":
            schedule = parse_schedule("off")
        specs.append(JobSpec(job, schedule, setting))
    return specs


def job_specs_by_id(settings: Settings) -> dict[str, JobSpec]:
    return {spec.id: spec for spec in job_specs(settings)}


def notifier(settings: Settings) -> Notifier:
    from contentflow_backupd.model import this_host
    from contentflow_backupd.observability.notify import NullNotifier, WebhookNotifier
    from contentflow_backupd.timespec import parse_duration

    url = settings.notify.webhook_url
    if url is None or not url.get_secret_value():
        return NullNotifier()
    return WebhookNotifier(
        url.get_secret_value(),
        timeout=parse_duration(settings.notify.timeout),
        retries=settings.notify.retries,
        cluster=settings.cluster,
        host=this_host(),
    )


def wal_spool_dir(settings: Settings) -> Path:
    return state_dir(settings) / "wal-spool" / settings.cluster


def wal_watcher(
    settings: Settings, repo: Repository, metrics: Metrics, catalog: Catalog | None = None
) -> WalWatcher:
    from contentflow_backupd.daemon.walwatch import WalWatcher
    from contentflow_backupd.model import Scope
    from contentflow_backupd.scheduling.periods import schedule_period
    from contentflow_backupd.timespec import parse_schedule

    period = schedule_period(parse_schedule(settings.schedule.wal), settings.schedule.timezone) or 900.0
    scope = Scope(repo.id, settings.cluster)
    deleted = (lambda: catalog.count_deleted_wal_segments(scope)) if catalog is not None else None
    return WalWatcher(
        WalArchive(repo, settings.cluster),
        source_conninfo(settings),
        metrics,
        spool_dir=wal_spool_dir(settings),
        period_s=period,
        method=settings.wal.method or "auto",
        deleted_segments=deleted,
    )


def wal_method(settings: Settings, watcher: WalWatcher) -> str:
    """``BACKUPD_WAL__METHOD``, else ``stream`` when the role may replicate (physical backups
    need that anyway), else ``archive_command``."""
    if settings.wal.method is not None:
        return settings.wal.method
    from contentflow_backupd.source.postgres import wal_status

    try:
        method = "stream" if wal_status(watcher.info).can_replicate else "archive_command"
    except BackupdError as exc:
        log.warning("wal_method_guessed", method="stream", reason=exc.message)
        method = "stream"
    watcher.method = method
    return method


def stream_supervisor(settings: Settings, repo: Repository, metrics: Metrics) -> StreamSupervisor:
    from contentflow_backupd.daemon.walwatch import StreamSupervisor

    return StreamSupervisor(
        WalArchive(repo, settings.cluster),
        source_conninfo(settings),
        metrics,
        spool_dir=wal_spool_dir(settings),
        slot=settings.wal.slot,
        bin_dir=settings.pg_bin,
        tmp_root=tmp_dir(settings),
    )


# -- health (``status``, /healthz) ---------------------------------------------------------------
if TYPE_CHECKING:
    from contentflow_backupd.ops.health.evaluate import DependencyState, HealthObjectives, WalState


def objectives(settings: Settings) -> HealthObjectives:
    """Health objectives: ``BACKUPD_HEALTH__*_MAX_AGE`` when set, else derived from the schedules
    (``ops.health.evaluate.derive_objectives``). ``ConfigError`` naming the setting when a schedule or
    age is invalid."""
    from contentflow_backupd.ops.health.evaluate import derive_objectives
    from contentflow_backupd.scheduling.periods import schedule_period
    from contentflow_backupd.timespec import parse_duration, parse_schedule

    periods: dict[str, float | None] = {}
    for job in ("full", "incremental", "wal"):
        setting = f"{ENV_PREFIX}SCHEDULE__{job.upper()}"
        try:
            periods[job] = schedule_period(
                parse_schedule(getattr(settings.schedule, job)), settings.schedule.timezone
            )
        except ValueError as exc:
            raise ConfigError(f"{setting}: {exc}") from None
    ages: dict[str, float | None] = {}
    for job in ("full", "incremental", "wal"):
        value = getattr(settings.health, f"{job}_max_age")
        try:
            ages[job] = None if value is None else parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{ENV_PREFIX}HEALTH__{job.upper()}_MAX_AGE: {exc}") from None
    return derive_objectives(
        full_period=periods["full"],
        incremental_period=periods["incremental"],
        wal_period=periods["wal"],
        physical=settings.mode == "physical",
        full_max_age=ages["full"],
        incremental_max_age=ages["incremental"],
        wal_max_age=ages["wal"],
    )


def probe_dependencies(
    settings: Settings, catalog: Catalog | None, storage: Storage
) -> dict[str, DependencyState]:
    """Is each dependency reachable now? ``database``: a connection (``BACKUPD_DATABASE_URL``);
    ``storage``: reading the repository's ``repo.json``; ``catalog``: one query (with ``catalog``
    None, opening the catalog and closing it again). Never raises."""
    from contentflow_backupd.errors import ObjectNotFound, RepositoryNotFound
    from contentflow_backupd.ops.health.inputs import check_dependencies
    from contentflow_backupd.repository.layout import REPO_FILE

    def database() -> None:
        from contentflow_backupd.source.postgres import describe

        describe(source_conninfo(settings))

    def repository() -> None:
        try:
            storage.get(REPO_FILE)
        except ObjectNotFound:
            raise RepositoryNotFound(
                f"no repository at {storage.url} (no {REPO_FILE})",
                hint="run `contentflow-backupd init`, or check BACKUPD_REPOSITORY",
            ) from None

    def catalog_query() -> None:
        if catalog is not None:
            catalog.get_meta("catalog_probe")
            return
        opened = open_catalog(settings, read_only=True)  # a probe upgrades nothing
        try:
            opened.get_meta("catalog_probe")
        finally:
            opened.close()

    return check_dependencies({"database": database, "storage": repository, "catalog": catalog_query})


def wal_health_state(settings: Settings, repo: Repository | None = None) -> WalState:
    """The WAL archive's state for the health report (physical mode): the newest archived file's
    time from the repository, and whether WAL is waiting from the server (``pg_stat_archiver``
    and the current WAL position). Storage errors propagate; an unreachable server or a standby
    leaves ``pending`` unknown."""
    from contentflow_backupd.ops.health.evaluate import ServerWal
    from contentflow_backupd.ops.health.inputs import read_wal_state
    from contentflow_backupd.source.postgres import wal_status

    archive = WalArchive(repo or open_repository(settings), settings.cluster)
    try:
        status = wal_status(source_conninfo(settings))
    except BackupdError as exc:
        return read_wal_state(archive, None, detail=f"server not asked: {exc.message}")
    failing = status.last_failed_time is not None and (
        status.last_archived_time is None or status.last_failed_time > status.last_archived_time
    )
    server = ServerWal(
        current_lsn=status.current_lsn,
        timeline=status.timeline,
        segment_size=status.wal_segment_size,
        archiver_failing=failing,
    )
    return read_wal_state(archive, server)


def recovery_objectives(settings: Settings, repo: Repository, catalog: Catalog) -> dict[str, Any]:
    """The recovery window, the RPO now and the RTO estimate (``ops.health.objectives``), with the
    objectives of ``BACKUPD_DRILL__*``. The database size is the newest backup's source size:
    the unit drills measure their throughput in."""
    from contentflow_backupd.ops.health.objectives import collect_objectives
    from contentflow_backupd.timespec import parse_duration

    mode = settings.mode
    from contentflow_backupd.model import Scope

    done = [
        b for b in catalog.list_backups(Scope(repo.id, settings.cluster), ["succeeded"]) if b.mode == mode
    ]
    size = done[-1].source_bytes if done else None
    return collect_objectives(
        repo,
        catalog,
        settings.cluster,
        mode,
        size,
        rto_objective_s=parse_duration(settings.drill.rto_objective),
        rpo_objective_s=parse_duration(settings.drill.rpo_objective),
    )
