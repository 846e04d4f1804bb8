"""The sections of the settings (``[s3]``, ``[wal]``, ``[schedule]``...): one pydantic model each,
with its defaults and validators. ``settings.py`` assembles them into ``Settings`` (the sources,
the precedence, named clusters) and re-exports them; the rules of ``settings.py`` hold here too
(only ``wiring`` and the command line import settings)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from contentflow_backupd.timespec import parse_duration, parse_schedule


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class S3Settings(_Section):
    endpoint_url: str | None = None
    region: str | None = None
    force_path_style: bool = False
    ca_bundle: Path | None = None
    object_lock: Literal["governance", "compliance"] | None = None
    """S3 Object Lock mode of the backup objects (chunks, manifests, WAL, audit); unset: no
    lock. The bucket must have Object Lock enabled (docs/security.md "Immutable backups")."""
    object_lock_margin: str = "1d"
    """Added to the moment retention would delete an object to give its retain-until date."""
    as_of: datetime | None = None
    """Read-only view of the bucket as it was at this time (its object versions): restores after
    objects were overwritten or deleted. Needs a versioned bucket; writes are refused."""

    _check_margin = field_validator("object_lock_margin")(lambda v: _duration(v))


class EncryptionSettings(_Section):
    passphrase: SecretStr | None = None
    passphrase_file: Path | None = None
    key_file: Path | None = None
    kms_key_id: str | None = None
    """AWS KMS key (id, ARN or alias) that opens the repository (docs/security.md "Keys")."""
    kms_region: str | None = None
    """Region of the KMS key (default: from the ARN, else the AWS environment)."""
    kms_endpoint_url: str | None = None
    """KMS endpoint (VPC endpoint, or a test server)."""

    @model_validator(mode="after")
    def _one_secret(self) -> EncryptionSettings:
        names = ("passphrase", "passphrase_file", "key_file", "kms_key_id")
        given = [n for n in names if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(
                f"set only one of passphrase, passphrase_file, key_file, kms_key_id (got {', '.join(given)})"
            )
        return self


class CompressionSettings(_Section):
    level: int = Field(1, ge=1, le=22)  # 1: ~30% less zstd CPU than 2 for ~2% more bytes (bench/README.md)


class ChunkingSettings(_Section):
    avg_size: int = Field(1024 * 1024, ge=64 * 1024, le=4 * 1024 * 1024)
    packs: bool = True
    """A logical full backup of a small database chooses smaller chunks for its generation and
    stores them in packs (``repository/pipeline.py``); false: every generation is cut at
    ``avg_size``, one object per chunk. Read at each full backup (an incremental follows its
    full), so it can change on a repository at any time."""


class WalSettings(_Section):
    slot: str = Field("contentflow_backupd", pattern=r"^[a-z0-9_]{1,63}$")
    """Replication slot of ``wal-stream`` (created if missing)."""
    archive_timeout: int = Field(300, ge=5, le=86400)
    """Seconds a physical backup waits for the WAL it needs to reach the archive."""
    socket: str | None = None
    """The daemon's WAL hand-off socket (``wal push`` gives it the segment): a path, or ``off``.
    Unset: ``<state_dir>/wal.sock``."""
    push_concurrency: int = Field(4, ge=1, le=64)
    """``wal push`` requests the daemon serves at once on its socket."""
    prefetch: int = Field(8, ge=0, le=64)
    """Segments ``wal fetch`` (restore_command) has fetched ahead of recovery by a helper, into
    ``<state_dir>/wal-prefetch/<cluster>``; 0: off."""
    prefetch_idle: str = "60s"
    """The prefetch helper ends (and empties its spool) after this long without a request."""

    @field_validator("prefetch_idle")
    @classmethod
    def _idle(cls, value: Any) -> Any:
        return _duration(value)

    push_ahead: int = Field(2, ge=0, le=16)
    """Segments the daemon pushes ahead of PostgreSQL's archiver at once (files it marked ready in
    ``pg_wal/archive_status``); 0: only what ``wal push`` hands over."""
    method: Literal["stream", "archive_command"] | None = None
    """How WAL reaches the repository in physical mode (daemon): ``stream`` runs ``wal-stream`` as
    a supervised child; ``archive_command`` leaves pushing to PostgreSQL. Unset: ``stream`` when
    the role may replicate, else ``archive_command``."""


class RestoreSettings(_Section):
    process_max: int | None = Field(None, ge=1, le=32)
    """Threads that write the files of a physical restore (``restore --pgdata``, ``recover``,
    physical drills), as pgBackRest's ``process-max``. Unset: the number of CPUs this process may
    use, at most 8. The chunks are fetched, decrypted and decompressed by ``upload_concurrency``
    threads, as before."""


def _schedule(value: Any) -> Any:
    if isinstance(value, str):
        parse_schedule(value)
    return value


def _duration(value: Any) -> Any:
    if isinstance(value, str | int | float):
        parse_duration(value)
    return value


class ScheduleSettings(_Section):
    """Daemon job schedules: a 5-field crontab expression, ``every <n>s|m|h|d`` or ``off``."""

    full: str = "0 2 * * *"
    incremental: str = "0 */6 * * *"
    wal: str = "*/15 * * * *"
    retention: str = "30 * * * *"
    verify: str = "0 5 * * *"
    """Deep verification of what was added since the last one, plus a share of the rest."""
    restore_test: str = "0 4 * * 0"
    """Restore drill (crontab weekdays: 0 = Sunday)."""
    timezone: str = "UTC"
    spread: str | None = None
    """Window over which a cluster's fire times are moved later, by a fixed offset per cluster
    (``scheduling/spread.py``). Unset: ``0s`` without named clusters (fire times do not move),
    ``30m`` with them (``spread.default_spread``)."""

    _check = field_validator("full", "incremental", "wal", "retention", "verify", "restore_test")(_schedule)

    @field_validator("spread")
    @classmethod
    def _check_spread(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v, allow_zero=True)  # 0s: no spread
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as UTC)") from None
        return v


class RetentionSettings(_Section):
    """How long backups and WAL are kept (durations with units s, m, h, d)."""

    full: str = "30d"
    incremental: str = "7d"
    wal: str = "24h"
    min_full: int = Field(1, ge=1)
    """At least this many successful full backups are kept, whatever their age."""
    gc_grace: str = "24h"
    """Chunks no kept backup references are deleted only once they are older than this (a backup
    still being written has no manifest yet)."""

    _check = field_validator("full", "incremental", "wal", "gc_grace")(_duration)


class VerifySettings(_Section):
    full_sweep: str = "7d"
    """Every object of the repository is read back at least once in this period."""

    _check = field_validator("full_sweep")(_duration)


class DrillSettings(_Section):
    """Restore drills (``restore-test`` and the daemon's ``restore_test`` job)."""

    pg_bin: Path | None = None
    """PostgreSQL server binaries of the scratch instance; default: found on the machine, same
    major version as the backup."""
    database_url: SecretStr | None = None
    """Logical mode: restore drills into a scratch database on this server (it needs CREATEDB);
    unset: into a private PostgreSQL started for the drill."""
    checks: Path | None = None
    """A SQL file of the user's own checks: each query must return true."""
    scratch_dir: Path | None = None
    """When the scratch PostgreSQL runs as another OS user (we run as root: it runs as
    ``postgres``), its files go in a new private directory (0711, random name) under this one,
    outside the state directory, which stays 0700; default: ``/var/tmp``. Its parents must be
    enterable (o+x) by that user. Restore drills, ``migrate``'s schema check and its dry run."""
    rto_objective: str = "2h"
    """Recovery time objective: /healthz and ``status`` say whether the measured restore
    throughput meets it for the current database size."""
    rpo_objective: str = "15m"
    """Recovery point objective, for ``backupd_recovery_point_age_seconds`` and its alert."""

    _check = field_validator("rto_objective", "rpo_objective")(_duration)


class MigrateSettings(_Section):
    """The migration guard (``migrate``, ``migrate check``, ``migrate batch``)."""

    lock_timeout: str = "5s"
    """``lock_timeout`` in force for the migration's own sessions: a statement that waits longer
    for a lock fails instead of stalling the application's traffic."""
    statement_timeout: str | None = None
    """``statement_timeout`` for the migration's sessions; unset: none."""
    checks: Path | None = None
    """A SQL file of queries that must each return true after the migration."""
    max_transaction_age: str = "5m"
    """Pre-flight refuses while a transaction older than this is open (it would hold locks the
    migration needs, or block its DDL behind it)."""
    large_table_bytes: int = Field(100 * 1024 * 1024, ge=0)
    """``CREATE INDEX`` without ``CONCURRENTLY`` counts as risky on tables at least this large."""
    min_free_bytes: int = Field(1024 * 1024 * 1024, ge=0)
    """Pre-flight refuses when the state directory (and the server's WAL volume, where visible)
    has less free space than this."""
    progress_interval: str = "10s"
    """How often the running migration's progress (statements, lock waits, index builds) is logged."""

    _check = field_validator("lock_timeout", "max_transaction_age", "progress_interval")(_duration)

    @field_validator("statement_timeout")
    @classmethod
    def _check_statement_timeout(cls, v: str | None) -> str | None:
        return None if v is None else _duration(v)


class JobsSettings(_Section):
    """Bounds on one daemon job of a cluster, so that its trouble does not hold a worker forever."""

    lock_wait_timeout: str = "10m"
    """A logical backup fails when ``pg_dump`` waits longer than this for a table lock
    (``pg_dump --lock-wait-timeout``; an ``ACCESS EXCLUSIVE`` lock blocks it). Physical backups
    take no table locks."""
    stall_timeout: str = "30m"
    """A daemon job whose progress has not moved for this long is cancelled and recorded failed
    ("stalled"); ``0`` or ``off``: never."""

    _check = field_validator("lock_wait_timeout")(_duration)

    @field_validator("stall_timeout")
    @classmethod
    def _check_stall(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "off":
            return "off"
        if isinstance(v, str | int | float):
            parse_duration(v, allow_zero=True)
        return v


class NotifySettings(_Section):
    webhook_url: SecretStr | None = None
    """Receives a JSON POST (with a Slack-compatible ``text``) on failures, recoveries, size
    anomalies and retention deletions. Treated as a secret: webhook URLs carry tokens."""
    timeout: str = "5s"
    retries: int = Field(3, ge=0, le=10)

    _check = field_validator("timeout")(_duration)


class HttpSettings(_Section):
    listen: str = "127.0.0.1:9847"
    """``host:port`` of /metrics, /livez, /readyz and /healthz; ``off`` disables the listener."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v == "off":
            return v
        _host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{v!r} is not host:port (e.g. 127.0.0.1:9847 or 0.0.0.0:9847)")
        return v


class AnomalySettings(_Section):
    """A backup whose size is outside [low, high] x the median of the last ``window`` successful
    backups of its kind is a size anomaly (a warning, never a failure)."""

    low: float = Field(0.5, gt=0)
    high: float = Field(2.0, gt=1)
    window: int = Field(7, ge=1, le=100)
    min_history: int = Field(3, ge=1)
    """Fewer earlier backups than this: no judgement yet."""


class HealthSettings(_Section):
    """Objectives behind /healthz and ``status``. Unset ages are derived from the schedules: a
    full or incremental backup is stale after its schedule period plus 2 h (daily: 26 h) or twice
    the period, whichever is larger for incrementals; the WAL archive after the WAL period."""

    full_max_age: str | None = None
    incremental_max_age: str | None = None
    wal_max_age: str | None = None

    _check = field_validator("full_max_age", "incremental_max_age", "wal_max_age")(_duration)


class LogSettings(_Section):
    format: Literal["json", "console"] | None = None
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


FLEET_RENEW_S = 5.0
"""How often a daemon of a fleet renews its leases (``daemon/membership.py: POLL``)."""


class FleetSettings(_Section):
    """Daemons sharing one PostgreSQL catalog (docs/daemon.md "Several daemons"); top level only."""

    member: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    """This daemon's name in the fleet, stable across restarts. Unset: the host name and a short
    hash of the state directory (``statedir.default_member``)."""
    lease_ttl: str = "15s"
    """A cluster's lease lasts this long without a renewal: at least 3 x the renewal period (5 s)."""

    @field_validator("lease_ttl")
    @classmethod
    def _ttl(cls, v: str) -> str:
        if parse_duration(v) < 3 * FLEET_RENEW_S:
            raise ValueError(f"{v!r} is shorter than 3 x the lease renewal period ({FLEET_RENEW_S:g}s)")
        return v
