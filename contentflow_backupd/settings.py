"""Settings: environment (``BACKUPD_*``, nested with ``__``) over an optional TOML file over
credential files (``$CREDENTIALS_DIRECTORY``, ``/run/secrets``) over defaults.

pydantic-settings resolves the precedence and merges the nested sections: the TOML file is its
``TomlConfigSettingsSource`` (with our error messages); credential files are our own source,
because its ``SecretsSettingsSource`` differs where it matters here (see :class:`CredentialFiles`).

Only ``wiring`` turns settings into objects; the rest of the code takes explicit arguments.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.statedir import default_state_dir
from contentflow_backupd.timespec import parse_duration, parse_schedule

ENV_PREFIX = "BACKUPD_"


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


CLUSTER_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
"""A named cluster (``[clusters.<name>]``): the lowercase subset of the repository's cluster
names (``repository/layout.py``), since ``BACKUPD_CLUSTERS__<NAME>__*`` keys are lowercased."""


class ClusterSettings(_Section):
    """One named cluster (``[clusters.<name>]``, ``BACKUPD_CLUSTERS__<NAME>__<SETTING>``): the
    settings that make sense per cluster, each unset by default, which inherits the top level's
    (``Settings.for_cluster``). A section inherits key by key; the encryption secret
    (``passphrase``, ``passphrase_file``, ``key_file``, ``kms_key_id``) is inherited whole."""

    database_url: SecretStr | None = None
    repository: str | None = None
    mode: Literal["logical", "physical"] | None = None
    pg_bin: Path | None = None
    upload_concurrency: int | None = Field(None, ge=1, le=64)
    s3: S3Settings | None = None
    encryption: EncryptionSettings | None = None
    compression: CompressionSettings | None = None
    chunking: ChunkingSettings | None = None
    wal: WalSettings | None = None
    schedule: ScheduleSettings | None = None
    retention: RetentionSettings | None = None
    verify: VerifySettings | None = None
    drill: DrillSettings | None = None
    health: HealthSettings | None = None
    anomaly: AnomalySettings | None = None
    notify: NotifySettings | None = None
    migrate: MigrateSettings | None = None
    jobs: JobsSettings | None = None

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str | None) -> str | None:
        return None if v is None else check_repository_url(v)


ENCRYPTION_SECRET = ("passphrase", "passphrase_file", "key_file", "kms_key_id")
"""The exclusive group of ``[encryption]``: a cluster that sets one of them replaces them all."""


class Settings(BaseSettings):
    """Every setting of contentflow-backupd. See README "Settings"."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
    )

    config: Path | None = None
    database_url: SecretStr | None = None
    repository: str | None = None
    s3: S3Settings = S3Settings()
    encryption: EncryptionSettings = EncryptionSettings()
    catalog_url: SecretStr | None = None
    state_dir: Path = Field(default_factory=default_state_dir)
    cluster: str = "main"
    mode: Literal["logical", "physical"] = "logical"
    pg_bin: Path | None = None
    compression: CompressionSettings = CompressionSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    upload_concurrency: int = Field(8, ge=1, le=64)
    max_concurrent_jobs: int = Field(4, ge=2, le=256)
    """Scheduler workers shared by every job (``scheduling/pool.py``); a quarter of them, at
    least one, is kept for WAL jobs."""
    wal: WalSettings = WalSettings()
    restore: RestoreSettings = RestoreSettings()
    log: LogSettings = LogSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    retention: RetentionSettings = RetentionSettings()
    notify: NotifySettings = NotifySettings()
    http: HttpSettings = HttpSettings()
    anomaly: AnomalySettings = AnomalySettings()
    health: HealthSettings = HealthSettings()
    verify: VerifySettings = VerifySettings()
    drill: DrillSettings = DrillSettings()
    migrate: MigrateSettings = MigrateSettings()
    jobs: JobsSettings = JobsSettings()
    clusters: dict[str, ClusterSettings] = {}
    """Named clusters; empty: one implicit cluster named by ``cluster``."""
    fleet: FleetSettings = FleetSettings()
    shutdown_grace: str = "60s"
    """How long a running job may finish after the first SIGTERM before its children are stopped."""

    progress_interval: str = "10s"
    """How often a ``progress`` log event reports a running operation when no live progress line
    is drawn (off a terminal, ``--no-progress``, ``--json``, the daemon)."""

    _check_grace = field_validator("shutdown_grace", "progress_interval")(_duration)

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str | None) -> str | None:
        return None if v is None else check_repository_url(v)

    @field_validator("clusters")
    @classmethod
    def _cluster_names(cls, v: dict[str, ClusterSettings]) -> dict[str, ClusterSettings]:
        import re

        for name in v:
            if not re.match(CLUSTER_NAME, name) or "__" in name:
                raise ValueError(
                    f"{name!r} is not a valid cluster name (1-64 characters: lower-case letters, "
                    "digits, '_', '.', '-', starting with a letter or digit, no '__')"
                )
        return v

    @property
    def fleet_member(self) -> str:
        """``fleet.member``, or by default the host name and a hash of the state directory."""
        from contentflow_backupd.statedir import default_member

        return self.fleet.member or default_member(self.state_dir)

    @property
    def cluster_names(self) -> list[str]:
        """The configured clusters, sorted; the implicit one (``cluster``) when none is named."""
        return sorted(self.clusters) if self.clusters else [self.cluster]

    def for_cluster(self, name: str) -> Settings:
        """The settings of one cluster, as every builder in ``wiring`` takes them: the top level
        overlaid with the cluster's own keys, section by section (``settings_clusters.py``). The
        implicit configuration (no ``clusters``) is returned unchanged for its one cluster."""
        from contentflow_backupd.settings_clusters import cluster_view

        return cluster_view(self, name)

    _toml: dict[str, Any] = {}
    _credentials: dict[str, str] = {}
    _named: bool = False

    @property
    def named_cluster(self) -> bool:
        """These are the settings of one of several named clusters (``for_cluster``): another
        process given the same configuration must be told which one (``--cluster``)."""
        return self._named

    @property
    def credential_sources(self) -> dict[str, str]:
        """Settings read from a credential file: env name -> that file's path (``config show``)."""
        return dict(self._credentials)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # env, then init kwargs (tests build Settings(...) directly), then what load_settings
        # adds for this call: the TOML file, then the credential files.
        return (env_settings, init_settings, *_FILE_SOURCES.get())

    @property
    def catalog_sqlalchemy_url(self) -> str:
        if self.catalog_url is not None:
            return self.catalog_url.get_secret_value()
        return f"sqlite:///{self.state_dir / 'catalog.sqlite'}"


def check_repository_url(url: str) -> str:
    """``url`` when it names a repository this tool can open: ``file:///absolute/path`` (no host)
    or ``s3://bucket[/prefix]``. Checked here, once, so that every command (also those that never
    open the repository, such as ``runs``) stops on a bad value with exit 2."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    use = "use file:///absolute/path (three slashes) or s3://bucket/prefix"
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{url!r}: a file URL takes no host (here {parts.netloc!r}); {use}")
        if not parts.path or not Path(unquote(parts.path)).is_absolute():
            raise ValueError(f"{url!r} is not an absolute path; {use}")
    elif parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"{url!r} names no bucket; {use}")
    else:
        raise ValueError(f"unknown URL scheme {parts.scheme or '(none)'!r} in {url!r}; {use}")
    return url


def env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc if isinstance(p, str))


_FILE_SOURCES: ContextVar[tuple[PydanticBaseSettingsSource, ...]] = ContextVar(
    "settings_file_sources", default=()
)
"""The TOML file and credential sources of the ``load_settings`` call in progress."""


class TomlFile(TomlConfigSettingsSource):
    """The ``--config`` / ``BACKUPD_CONFIG`` file: pydantic-settings' TOML source, except that a
    file that was named must exist and be valid TOML (its source silently skips a missing file
    and raises the parser's bare error): each is a ``ConfigError`` naming the file."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            try:
                path.open("rb").close()
            except FileNotFoundError:
                raise ConfigError(f"config file {path} not found (--config / BACKUPD_CONFIG)") from None
            except OSError as exc:
                raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        super().__init__(Settings, toml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file_path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file_path}: {exc.strerror}") from None


# -- secrets from credential directories ------------------------------------------------------
SECRETS_DIR = Path("/run/secrets")
"""Docker and Kubernetes secrets; searched after ``$CREDENTIALS_DIRECTORY`` (systemd)."""

CREDENTIAL_SETTINGS: tuple[tuple[str, ...], ...] = (
    ("database_url",),
    ("catalog_url",),
    ("encryption", "passphrase"),
    ("encryption", "key_file"),
    ("notify", "webhook_url"),
    ("drill", "database_url"),
)
"""Settings a credential file can provide. The file is named after the setting's environment
variable (``BACKUPD_ENCRYPTION__PASSPHRASE``) and holds its value, trailing newlines stripped;
for ``key_file`` the credential is the key file itself and the setting becomes its path."""

_EXCLUSIVE: dict[tuple[str, ...], tuple[str, ...]] = {
    ("encryption",): ("passphrase", "passphrase_file", "key_file")
}
"""Settings of which only one may be given: one set by env or file hides every credential of
the group (of the top level, or of one cluster: ``clusters.<name>.encryption``)."""


TOP_LEVEL_ONLY = frozenset({("catalog_url",)})
"""Credential settings that no cluster has (one catalog per daemon)."""


def cluster_names_given(environ: Mapping[str, str], file_data: dict[str, Any]) -> list[str]:
    """The cluster names the environment (``BACKUPD_CLUSTERS__<NAME>__...``, lowercased as the
    settings lowercase them) and the TOML file (``[clusters.<name>]``) give."""
    names = set()
    prefix = ENV_PREFIX + "CLUSTERS__"
    for key in environ:
        upper = key.upper()
        if upper.startswith(prefix) and "__" in upper[len(prefix) :]:
            names.add(upper[len(prefix) :].split("__", 1)[0].lower())
    clusters = file_data.get("clusters")
    if isinstance(clusters, dict):
        names.update(str(name) for name in clusters)
    return sorted(n for n in names if n)


def credential_dirs() -> list[Path]:
    """Where credential files are looked for, first match wins: ``$CREDENTIALS_DIRECTORY``
    (systemd ``LoadCredential=``), then ``/run/secrets``."""
    dirs = [Path(os.environ["CREDENTIALS_DIRECTORY"])] if os.environ.get("CREDENTIALS_DIRECTORY") else []
    return [*dirs, SECRETS_DIR]


def _is_set(loc: tuple[str, ...], file_data: dict[str, Any], env_upper: set[str]) -> bool:
    if env_name(loc) in env_upper:
        return True
    part: Any = file_data
    for name in loc:
        if not isinstance(part, dict) or name not in part:
            return False
        part = part[name]
    return True


def read_credentials(
    file_data: dict[str, Any], dirs: list[Path] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Secret settings (``CREDENTIAL_SETTINGS``) from credential files, for those that neither
    the environment nor the TOML file sets (precedence: env > file > ``$CREDENTIALS_DIRECTORY``
    > ``/run/secrets``). Returns nested values to merge under the file's, and env name -> path
    of every credential used. An unreadable or empty credential raises ``ConfigError``."""
    env_upper = {k.upper() for k in os.environ}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    locs = list(CREDENTIAL_SETTINGS)
    for name in cluster_names_given(os.environ, file_data):
        locs += [("clusters", name, *loc) for loc in CREDENTIAL_SETTINGS if loc not in TOP_LEVEL_ONLY]
    for loc in locs:
        group = _EXCLUSIVE.get(loc[-2:-1], (loc[-1],))
        if any(_is_set((*loc[:-1], member), file_data, env_upper) for member in group):
            continue
        for directory in credential_dirs() if dirs is None else dirs:
            found = [directory / env_name((*loc[:-1], m)) for m in group if m != "passphrase_file"]
            found = [p for p in found if _is_file(p)]
            if len(found) > 1:
                raise ConfigError(
                    f"credential files {' and '.join(str(p) for p in found)} both set the encryption "
                    "secret; keep one"
                )
            path = directory / env_name(loc)
            if found and found[0] == path:
                value = _read_credential(path) if loc[-1] != "key_file" else str(path)
                section = values
                for name in loc[:-1]:
                    section = section.setdefault(name, {})
                section[loc[-1]] = value
                sources[env_name(loc)] = str(path)
            if found:
                break
    return values, sources


class CredentialFiles(PydanticBaseSettingsSource):
    """Secret settings from credential files (:func:`read_credentials`), the lowest source before
    the defaults. Not pydantic-settings' ``SecretsSettingsSource``, which would change what users
    rely on: a ``key_file`` credential is the key file itself (the setting becomes its path, not
    its contents); an empty file is an error, not an empty secret; only trailing newlines are
    stripped; a passphrase and a key file together are refused; nested settings are found by
    their ``BACKUPD_SECTION__NAME`` file name; a secrets directory that does not exist or that we
    may not search (``/run/secrets`` of another user) is skipped without a warning; and
    ``config show`` names the file each secret came from."""

    def __init__(self, file_data: dict[str, Any], dirs: list[Path] | None) -> None:
        super().__init__(Settings)
        self.values, self.sources = read_credentials(file_data, dirs)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.values


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a directory we may not search (/run/secrets of another user)
        return False


def _read_credential(path: Path) -> str:
    try:
        value = path.read_text("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read credential file {path}: {reason}") from None
    if not value:
        raise ConfigError(f"credential file {path} is empty", hint="write the secret into it, or remove it")
    return value


NOT_SETTINGS = frozenset(
    {"BACKUPD_DEMO_DIR", "BACKUPD_DEMO_SIZE_MB", "BACKUPD_TEST_PG_BIN", "BACKUPD_CONTAINER_TESTS"}
)
"""``BACKUPD_*`` variables that are not settings: read by ``make run``/``make demo`` and the tests."""


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section class of a field typed ``Section`` or ``Section | None``; None for a leaf."""
    import typing

    for ann in (annotation, *typing.get_args(annotation)):
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return ann
    return None


def setting_paths(model: type[BaseModel] | None = None) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    """Every setting of ``model`` (default: ``Settings``) as a path of field names: (sections such
    as ``("s3",)``, leaves such as ``("s3", "bucket")``). The one list the unknown-name check
    compares against; ``clusters`` is a leaf here (its names are free, their keys are those of
    ``ClusterSettings``: see ``unknown_names``)."""
    sections: set[tuple[str, ...]] = set()
    leaves: set[tuple[str, ...]] = set()

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, field in model.model_fields.items():
            path = (*prefix, name)
            section = _section_type(field.annotation)
            if section is not None:
                sections.add(path)
                walk(section, path)
            else:
                leaves.add(path)

    walk(Settings if model is None else model, ())
    return sections, leaves


def _did_you_mean(name: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_names(environ: dict[str, str] | os._Environ[str], file_data: dict[str, Any]) -> list[str]:
    """One problem line per unknown ``BACKUPD_*`` variable or config-file key, each suggesting
    the closest known name. The rule is the same wherever a name appears: unknown is an error
    (a misspelt secret or retention setting must not fall back to its default unnoticed). Under
    ``clusters.<name>`` (``BACKUPD_CLUSTERS__<NAME>__...``) the known names are those of
    ``ClusterSettings``."""
    sections, leaves = setting_paths()
    c_sections, c_leaves = setting_paths(ClusterSettings)
    problems = []
    env_names = {env_name(p) for p in leaves}

    def known(path: tuple[str, ...]) -> bool:
        if len(path) >= 2 and path[0] == "clusters":  # a cluster (JSON), or one of its settings
            rest = path[2:]
            return not rest or rest in c_leaves or rest in c_sections
        return path in leaves or path in sections

    def env_suggestion(path: tuple[str, ...]) -> set[str]:
        if len(path) >= 3 and path[0] == "clusters":
            return {env_name((*path[:2], *p)) for p in c_leaves}
        return env_names

    for raw in sorted(environ):
        name = raw.upper()
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        path = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
        if not known(path):
            problems.append(f"{raw}: unknown setting{_did_you_mean(name, env_suggestion(path))}")
    file_names = {".".join(p) for p in leaves}

    def walk(data: dict[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in data.items():
            path = (*prefix, str(key))
            in_cluster = len(path) >= 2 and path[0] == "clusters"
            if path == ("clusters",) and isinstance(value, dict):
                for cluster, keys in value.items():
                    if isinstance(keys, dict):
                        walk(keys, ("clusters", str(cluster)))
                continue
            if isinstance(value, dict) and (path in sections or (in_cluster and path[2:] in c_sections)):
                walk(value, path)
            elif not known(path):
                dotted = ".".join(path)
                names = {".".join((*path[:2], *p)) for p in c_leaves} if in_cluster else file_names
                problems.append(f"config file key {dotted}: unknown setting{_did_you_mean(dotted, names)}")

    walk(file_data, ())
    return problems


def load_settings(
    config_path: Path | None = None, *, secret_dirs: list[Path] | None = None
) -> tuple[Settings, dict[str, Any]]:
    """Resolve settings: env over the TOML file (``--config`` or ``BACKUPD_CONFIG``) over
    credential files (``read_credentials``; ``secret_dirs`` replaces ``credential_dirs()``, for
    tests) over defaults.

    Returns the settings and the TOML data (for ``config show``). Invalid values raise
    ``ConfigError`` naming the setting.
    """
    path = config_path or (Path(os.environ["BACKUPD_CONFIG"]) if os.environ.get("BACKUPD_CONFIG") else None)
    toml = TomlFile(path)
    file_data = toml.toml_data
    unknown = unknown_names(os.environ, file_data)
    if unknown:
        raise ConfigError(
            "invalid settings:\n  " + "\n  ".join(unknown),
            hint='see README.md "Settings" or `contentflow-backupd config show` for the known names',
        )
    credentials = CredentialFiles(file_data, secret_dirs)
    token = _FILE_SOURCES.set((toml, credentials))
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = env_name(err["loc"]) if err["loc"] else "settings"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            problems.append(f"{name}: {msg}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
    finally:
        _FILE_SOURCES.reset(token)
    if path is not None:
        settings.config = path
    settings._credentials = credentials.sources
    if settings.clusters:
        from contentflow_backupd.settings_clusters import check_clusters

        check_clusters(settings)
    return settings, file_data


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
