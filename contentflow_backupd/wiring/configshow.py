"""``config show``: every resolved setting, where it came from, secrets masked."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.settings import ENV_PREFIX, ClusterSettings, Settings
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


def describe_settings(
    settings: Settings, file_data: dict[str, Any], cluster: str | None = None
) -> list[dict[str, str]]:
    """One row per setting: its environment name, its value (secrets masked) and its source
    (``env``, ``file PATH``, ``credential PATH``, ``default``). With named clusters, each
    cluster's settings follow the top level's as ``BACKUPD_CLUSTERS__<NAME>__...`` rows, the
    ones it does not set being ``inherited``. ``cluster``: only that cluster's rows and the
    settings that no cluster has (``catalog_url``, ``state_dir``, ``http``...)."""
    env_upper = {k.upper() for k in os.environ}
    credentials = settings.credential_sources
    rows: list[dict[str, str]] = []
    per_cluster = set(ClusterSettings.model_fields)

    def walk(
        model: BaseModel,
        path: list[str],
        file_part: dict[str, Any],
        fields: Iterable[str],
        own: BaseModel | None = None,
        inherit: bool = False,
    ) -> None:
        for field_name in fields:
            value = getattr(model, field_name)
            here = [*path, field_name]
            env = ENV_PREFIX + "__".join(p.upper() for p in here)
            own_value = getattr(own, field_name, None) if own is not None else None
            if isinstance(value, BaseModel):
                sub = file_part.get(field_name, {}) if isinstance(file_part.get(field_name), dict) else {}
                walk(value, here, sub, type(value).model_fields, own_value, inherit)
                continue
            if env in env_upper:
                source = "env"
            elif env in credentials:
                source = f"credential {credentials[env]}"
            elif field_name in file_part:
                source = f"file {settings.config}"
            elif inherit and not (own is not None and field_name in own.model_fields_set):
                source = "inherited"
            else:
                source = "default"
            rows.append({"name": env, "value": _render(field_name, value), "source": source})

    if cluster is None:
        walk(settings, [], file_data, [f for f in type(settings).model_fields if f != "clusters"])
    else:
        walk(
            settings,
            [],
            file_data,
            [f for f in type(settings).model_fields if f not in per_cluster | {"clusters", "cluster"}],
        )
    found = file_data.get("clusters")
    file_clusters: dict[str, Any] = found if isinstance(found, dict) else {}
    names = sorted(settings.clusters) if cluster is None else [cluster]
    for name in names:
        view = settings.for_cluster(name)
        own = settings.clusters.get(name)
        found = file_clusters.get(name)
        part: dict[str, Any] = found if isinstance(found, dict) else {}
        fields = sorted(per_cluster, key=list(type(settings).model_fields).index)
        if own is None:  # the implicit cluster: the top level's values
            walk(view, [], file_data, fields)
        else:
            walk(view, ["clusters", name], part, fields, own, inherit=True)
    return rows
