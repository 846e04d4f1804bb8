"""``config show``: every resolved setting, where it came from, secrets masked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.settings import ENV_PREFIX, Settings
from contentflow_backupd.source.conninfo import ConnInfo

MASK = "********"
URL_SECRETS = {"database_url", "catalog_url"}


def _mask_url(value: str) -> str:
    """A URL with its password replaced by stars (libpq URIs and SQLAlchemy URLs)."""
    try:
        info = ConnInfo.parse(value)
    except ConfigError:
        return MASK
    if info.password is None:
        return value
    return value.replace(info.password, MASK) if info.password in value else MASK


def _render(name: str, value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return _mask_url(secret) if name in URL_SECRETS else MASK
    if isinstance(value, Path):
        return str(value)
    return str(value)


def describe_settings(settings: Settings, file_data: dict[str, Any]) -> list[dict[str, str]]:
    env_upper = {k.upper() for k in os.environ}
    credentials = settings.credential_sources
    rows: list[dict[str, str]] = []

    def walk(model: BaseModel, path: list[str], file_part: dict[str, Any]) -> None:
        for field_name in type(model).model_fields:
            value = getattr(model, field_name)
            here = [*path, field_name]
            env = ENV_PREFIX + "__".join(p.upper() for p in here)
            if isinstance(value, BaseModel):
                sub = file_part.get(field_name, {}) if isinstance(file_part.get(field_name), dict) else {}
                walk(value, here, sub)
                continue
            if env in env_upper:
                source = "env"
            elif env in credentials:
                source = f"credential {credentials[env]}"
            elif field_name in file_part:
                source = f"file {settings.config}"
            else:
                source = "default"
            rows.append({"name": env, "value": _render(field_name, value), "source": source})

    walk(settings, [], file_data)
    return rows
