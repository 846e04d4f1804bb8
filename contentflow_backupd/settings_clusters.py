"""Named clusters (``[clusters.<name>]``): how one cluster's settings inherit the top level's.

``Settings.for_cluster(name)`` is the resolved top level (env > TOML > credential files >
defaults) overlaid with the keys the cluster sets, whatever their source: the more specific key
wins (``[clusters.orders.schedule] full`` in the TOML file beats ``BACKUPD_SCHEDULE__FULL``).
A section inherits key by key, except the encryption secret, inherited whole (a cluster that
sets ``key_file`` does not also get the top level's ``passphrase_file``).

The view is built with ``model_copy`` from pieces validated on their own (each section by its
own class, so its validators run on the merged values): ``Settings.model_validate`` would read
the environment again, and a top-level variable would beat the cluster's own key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from contentflow_backupd.errors import ConfigError

if TYPE_CHECKING:
    from contentflow_backupd.settings import Settings


def merge_section(top: BaseModel, own: BaseModel) -> BaseModel:
    """``top`` with the keys ``own`` sets (its ``model_fields_set``), validated as one section."""
    from contentflow_backupd.settings import ENCRYPTION_SECRET
    from contentflow_backupd.settings_sections import EncryptionSettings

    values = {name: getattr(top, name) for name in type(top).model_fields}
    given = own.model_fields_set
    if isinstance(own, EncryptionSettings) and given & set(ENCRYPTION_SECRET):
        for name in ENCRYPTION_SECRET:
            values[name] = None
    for name in given:
        values[name] = getattr(own, name)
    return type(top).model_validate(values)


def cluster_view(settings: Settings, name: str) -> Settings:
    """The settings of cluster ``name`` (see the module's docstring). ``ConfigError`` when no
    such cluster is configured, or when the merged values are invalid."""
    if not settings.clusters:
        if name != settings.cluster:
            raise ConfigError(
                f"no cluster {name!r}: this configuration has one cluster, {settings.cluster!r}",
                hint="name clusters in [clusters.<name>] tables (docs/configuration.md)",
            )
        return settings
    own = settings.clusters.get(name)
    if own is None:
        raise ConfigError(
            f"no cluster {name!r} in the settings (configured: {', '.join(sorted(settings.clusters))})",
            hint="pick one with --cluster NAME or BACKUPD_CLUSTER",
        )
    update: dict[str, Any] = {"cluster": name, "clusters": {}}
    for field in own.model_fields_set:
        value = getattr(own, field)
        top = getattr(settings, field)
        if isinstance(value, BaseModel) and isinstance(top, BaseModel):
            try:
                value = merge_section(top, value)
            except ValidationError as exc:
                problems = [
                    f"BACKUPD_CLUSTERS__{name.upper()}__{field.upper()}"
                    + "".join(f"__{str(p).upper()}" for p in err["loc"] if isinstance(p, str))
                    + f": {err['msg'].removeprefix('Value error, ')}"
                    for err in exc.errors()
                ]
                raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
        update[field] = value
    view = settings.model_copy(update=update)
    view._named = True
    return view


def check_clusters(settings: Settings) -> None:
    """Every cluster's merged settings are valid (``ConfigError`` naming the first problems), so
    that a bad combination stops every command at start, not only the one that picks it."""
    problems: list[str] = []
    for name in sorted(settings.clusters):
        try:
            cluster_view(settings, name)
        except ConfigError as exc:
            problems.extend(line.strip() for line in str(exc).splitlines()[1:])
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
