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
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            problems.append(f"{name}: {msg}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
    if path is not None:
        settings.config = path
    return settings, file_data


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
