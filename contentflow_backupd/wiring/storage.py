"""Settings -> storage, the repository's key and the repository (``BACKUPD_REPOSITORY``,
``BACKUPD_ENCRYPTION__*``, ``BACKUPD_S3__*``), and the state directory's paths.

Nothing here is opened when the application is built: each function opens what it returns when a
command asks for it (``App.storage()``, ``App.repository()``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from contentflow_backupd.errors import BackupdError, ConfigError
from contentflow_backupd.observability.logging import register_secret
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret, read_key_file
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.settings import Settings
from contentflow_backupd.storage.base import Storage


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
        from contentflow_backupd.wiring.options import retention_policy

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


def init_repository(settings: Settings, storage: Storage | None = None) -> Repository:
    return Repository.init(
        storage or open_storage(settings),
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


def lock_dir(settings: Settings) -> Path:
    return state_dir(settings) / "locks"


WAL_COMPRESSION_LEVEL = 1
"""zstd level of the WAL that the ``wal-*`` commands archive, whatever ``BACKUPD_COMPRESSION__LEVEL``
says: ``wal-push`` runs once per 16 MiB segment, and WAL compresses as well at level 1 as at 2
(pgbench segments: 1.88 vs 1.89 MB) in ~80% of the time. The level is not part of the format."""


def open_wal_archive(settings: Settings, storage: Storage | None = None) -> WalArchive:
    """The WAL archive of ``BACKUPD_CLUSTER``, compressing at ``WAL_COMPRESSION_LEVEL``."""
    secret = kek_secret(settings)  # a missing key is a configuration error: check it first
    repo = Repository.open(storage or open_storage(settings), secret, compression_level=WAL_COMPRESSION_LEVEL)
    return WalArchive(repo, settings.cluster)
