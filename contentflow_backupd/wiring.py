"""Settings -> concrete objects. The only module that reads settings; composition happens here."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import structlog

from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.errors import BackupdError, ConfigError
from contentflow_backupd.observability.logging import configure_logging, register_secret
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret, read_key_file
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.settings import ENV_PREFIX, Settings
from contentflow_backupd.storage.base import Storage

if TYPE_CHECKING:  # psycopg and the source layer are imported only by the commands that need them
    from contentflow_backupd.source.conninfo import ConnInfo
    from contentflow_backupd.source.logical import PgDumpSource, PgRestoreTarget
    from contentflow_backupd.source.pgdata import RecoveryConfig
    from contentflow_backupd.source.physical import PgBaseBackupSource

log = structlog.get_logger(__name__)

KNOWN_ENV = {"BACKUPD_CONFIG"}


def setup_logging(settings: Settings) -> None:
    configure_logging(settings.log.format, settings.log.level)
    for secret in (settings.database_url, settings.encryption.passphrase, settings.catalog_url):
        if secret is not None:
            value = secret.get_secret_value()
            register_secret(value)
            info_pw = _password_of(value)
            register_secret(info_pw)
    register_secret(os.environ.get("AWS_SECRET_ACCESS_KEY"))
    register_secret(os.environ.get("PGPASSWORD"))


def warn_unknown_env(settings: Settings) -> None:
    fields = {f.upper() for f in Settings.model_fields}
    for name in os.environ:
        if name.upper().startswith(ENV_PREFIX):
            top = name.upper()[len(ENV_PREFIX) :].split("__")[0]
            if top not in fields:
                log.warning("unknown_setting_ignored", variable=name)


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
    elif parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"BACKUPD_REPOSITORY: {url} names no bucket; use s3://bucket/prefix")
        from contentflow_backupd.storage.s3 import S3Storage

        storage = S3Storage(
            parts.netloc,
            parts.path.strip("/"),
            endpoint_url=settings.s3.endpoint_url,
            region=settings.s3.region,
            force_path_style=settings.s3.force_path_style,
            ca_bundle=str(settings.s3.ca_bundle) if settings.s3.ca_bundle else None,
            max_concurrency=settings.upload_concurrency,
        )
    else:
        raise ConfigError(
            f"BACKUPD_REPOSITORY: unknown URL scheme {parts.scheme or '(none)'!r} in {url!r}",
            hint="use file:///absolute/path or s3://bucket/prefix",
        )
    from contentflow_backupd.storage.retry import RetryingStorage

    # Throttling and 5xx are normal on object stores: up to 10 attempts with full-jitter backoff.
    return RetryingStorage(storage, attempts=10, base_delay=0.1, max_delay=5.0)


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
    raise ConfigError(
        "no encryption key configured",
        hint="set one of BACKUPD_ENCRYPTION__PASSPHRASE, BACKUPD_ENCRYPTION__PASSPHRASE_FILE or "
        "BACKUPD_ENCRYPTION__KEY_FILE; keep a copy somewhere safe: without it the backups are lost",
    )


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
    secret = kek_secret(settings)  # a missing key is a configuration error: check it first
    return Repository.open(
        storage or open_storage(settings), secret, compression_level=settings.compression.level
    )


def open_catalog(settings: Settings) -> Catalog:
    if settings.catalog_url is None:
        state_dir(settings)
    from contentflow_backupd.catalog.sql import open_catalog as _open

    return _open(settings.catalog_sqlalchemy_url)


def source_conninfo(settings: Settings) -> ConnInfo:
    from contentflow_backupd.source.conninfo import ConnInfo

    url = settings.database_url.get_secret_value() if settings.database_url else None
    return ConnInfo.parse(url)


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


def open_wal_archive(settings: Settings) -> WalArchive:
    return WalArchive(open_repository(settings), settings.cluster)


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
