"""Settings: environment (``BACKUPD_*``, nested with ``__``) over an optional TOML file.

Only ``wiring`` turns settings into objects; the rest of the code takes explicit arguments.
"""

from __future__ import annotations

import os
import sys
import tomllib
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
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.timespec import parse_duration, parse_schedule

ENV_PREFIX = "BACKUPD_"


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` (systemd), else ``/var/lib/contentflow-backupd`` as root, else
    ``$XDG_STATE_HOME/contentflow-backupd`` (``~/.local/state/contentflow-backupd``)."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/contentflow-backupd")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "contentflow-backupd"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class S3Settings(_Section):
    endpoint_url: str | None = None
    region: str | None = None
    force_path_style: bool = False
    ca_bundle: Path | None = None


class EncryptionSettings(_Section):
    passphrase: SecretStr | None = None
    passphrase_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> EncryptionSettings:
        given = [n for n in ("passphrase", "passphrase_file", "key_file") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(
                f"set only one of passphrase, passphrase_file, key_file (got {', '.join(given)})"
            )
        return self


class CompressionSettings(_Section):
    level: int = Field(2, ge=1, le=22)  # 2: a backup keeps pace with pg_dump on 2 cores


class ChunkingSettings(_Section):
    avg_size: int = Field(1024 * 1024, ge=64 * 1024, le=4 * 1024 * 1024)


class WalSettings(_Section):
    slot: str = Field("contentflow_backupd", pattern=r"^[a-z0-9_]{1,63}$")
    """Replication slot of ``wal-stream`` (created if missing)."""
    archive_timeout: int = Field(300, ge=5, le=86400)
    """Seconds a physical backup waits for the WAL it needs to reach the archive."""
    method: Literal["stream", "archive_command"] | None = None
    """How WAL reaches the repository in physical mode (daemon): ``stream`` runs ``wal-stream`` as
    a supervised child; ``archive_command`` leaves pushing to PostgreSQL. Unset: ``stream`` when
    the role may replicate, else ``archive_command``."""


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

    _check = field_validator("full", "incremental", "wal", "retention", "verify", "restore_test")(_schedule)

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
    rto_objective: str = "2h"
    """Recovery time objective: /healthz and ``status`` say whether the measured restore
    throughput meets it for the current database size."""
    rpo_objective: str = "15m"
    """Recovery point objective, for ``backupd_recovery_point_age_seconds`` and its alert."""

    _check = field_validator("rto_objective", "rpo_objective")(_duration)


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
    wal: WalSettings = WalSettings()
    log: LogSettings = LogSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    retention: RetentionSettings = RetentionSettings()
    notify: NotifySettings = NotifySettings()
    http: HttpSettings = HttpSettings()
    anomaly: AnomalySettings = AnomalySettings()
    health: HealthSettings = HealthSettings()
    verify: VerifySettings = VerifySettings()
    drill: DrillSettings = DrillSettings()
    shutdown_grace: str = "60s"
    """How long a running job may finish after the first SIGTERM before its children are stopped."""

    _check_grace = field_validator("shutdown_grace")(_duration)

    _toml: dict[str, Any] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init kwargs carry the TOML file's values: env wins over them.
        return (env_settings, init_settings)

    @property
    def catalog_sqlalchemy_url(self) -> str:
        if self.catalog_url is not None:
            return self.catalog_url.get_secret_value()
        return f"sqlite:///{self.state_dir / 'catalog.sqlite'}"


def env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc if isinstance(p, str))


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (--config / BACKUPD_CONFIG)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return data


def load_settings(config_path: Path | None = None) -> tuple[Settings, dict[str, Any]]:
    """Resolve settings: env over the TOML file (``--config`` or ``BACKUPD_CONFIG``) over defaults.

    Returns the settings and the TOML data (for ``config show``). Invalid values raise
    ``ConfigError`` naming the setting.
    """
    path = config_path or (Path(os.environ["BACKUPD_CONFIG"]) if os.environ.get("BACKUPD_CONFIG") else None)
    file_data = read_toml(path) if path else {}
    try:
        settings = Settings(**file_data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = env_name(err["loc"]) if err["loc"] else "settings"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            problems.append(f"{name}: {msg}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
    if path is not None:
        settings.config = path
    return settings, file_data


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
