"""Settings -> the PostgreSQL side: the configured server's connection, ``pg_dump`` and
``pg_basebackup`` sources, restore targets, and what ``restore_command`` needs (``self_command``,
``recovery_config``). Building one connects to nothing."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from contentflow_backupd.observability.logging import register_secret
from contentflow_backupd.settings import ENV_PREFIX, Settings
from contentflow_backupd.wiring.storage import tmp_dir

if TYPE_CHECKING:  # psycopg and the source layer: only in the commands that need them
    from contentflow_backupd.source.conninfo import ConnInfo
    from contentflow_backupd.source.logical import PgDumpSource, PgRestoreTarget
    from contentflow_backupd.source.pgdata import RecoveryConfig
    from contentflow_backupd.source.physical import PgBaseBackupSource


def source_conninfo(settings: Settings) -> ConnInfo:
    from contentflow_backupd.source.conninfo import ConnInfo

    url = settings.database_url.get_secret_value() if settings.database_url else None
    setting = (
        f"BACKUPD_CLUSTERS__{settings.cluster.upper()}__DATABASE_URL" if settings.named_cluster else None
    )
    return ConnInfo.parse(url, setting=setting or "BACKUPD_DATABASE_URL")


def logical_source(settings: Settings) -> PgDumpSource:
    from contentflow_backupd.source.logical import PgDumpSource
    from contentflow_backupd.timespec import parse_duration

    return PgDumpSource(
        source_conninfo(settings),
        bin_dir=settings.pg_bin,
        tmp_root=tmp_dir(settings),
        lock_wait_timeout_s=parse_duration(settings.jobs.lock_wait_timeout),
    )


def physical_source(settings: Settings) -> PgBaseBackupSource:
    from contentflow_backupd.source.physical import PgBaseBackupSource

    return PgBaseBackupSource(source_conninfo(settings), bin_dir=settings.pg_bin, tmp_root=tmp_dir(settings))


def restore_target(settings: Settings, url: str) -> PgRestoreTarget:
    from contentflow_backupd.source.conninfo import ConnInfo
    from contentflow_backupd.source.logical import PgRestoreTarget

    info = ConnInfo.parse(url, setting="--to-database")
    register_secret(info.password)
    return PgRestoreTarget(info, bin_dir=settings.pg_bin, tmp_root=tmp_dir(settings))


def restore_point_maker(settings: Settings) -> Callable[[str], tuple[str, int, datetime]]:
    """``pg_create_restore_point`` on the configured server: name -> (LSN, timeline, time)."""
    from contentflow_backupd.source.postgres import create_restore_point

    info = source_conninfo(settings)

    def make(name: str) -> tuple[str, int, datetime]:
        point = create_restore_point(info, name)
        return point.lsn, point.timeline, point.created_at

    return make


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
    # A named cluster's restore_command gets its own one-cluster document: the file names several.
    as_is = not overrides and not settings.named_cluster
    if settings.config is not None and as_is and all(p is None or p.is_absolute() for p in paths):
        return RecoveryConfig(
            config_file=Path(os.path.abspath(settings.config)), secret_file=secret_file, notes=notes
        )
    secrets = {"config", "database_url", "catalog_url", "encryption"}
    document = settings.model_dump(mode="json", exclude={*secrets, "clusters"})  # one cluster
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
