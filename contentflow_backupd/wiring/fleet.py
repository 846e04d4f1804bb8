"""The fleet: every configured cluster, one ``App`` each.

An ``App`` stays one cluster. ``Fleet(settings, file_data)`` knows the clusters' names
(``[clusters.<name>]``, or the one implicit cluster ``settings.cluster`` when none is named),
picks the one a command works on (``choose``: ``--cluster``, else ``BACKUPD_CLUSTER``, else the
only one) and builds each cluster's ``App`` from ``settings.for_cluster(name)`` when first asked,
cached. ``close()`` closes what the apps opened. ``digest(name)``: a cluster's settings as one
SHA-256 (``wiring/digest.py``), what a reload compares.

It is also the daemon's ``daemon.parts.FleetApp``: the daemon-level parts (catalog, HTTP
listener, pool size, shutdown grace, audit view) and ``cluster(name)``, each cluster's ``App`` as
its ``DaemonApp``. The daemon-level settings are top level only, so every cluster's ``App`` gives
the same values; they are read from the first cluster's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.settings import Settings
from contentflow_backupd.wiring.app import App

if TYPE_CHECKING:
    from contentflow_backupd.catalog.base import Catalog
    from contentflow_backupd.catalog.leader import LeaderLock
    from contentflow_backupd.model import Scope
    from contentflow_backupd.source.base import Database, PostgresDrivers


class Fleet:
    """The clusters of one configuration."""

    def __init__(self, settings: Settings, file_data: dict[str, Any] | None = None) -> None:
        self._settings = settings
        self._file_data = file_data or {}
        self._apps: dict[str, App] = {}
        self.names: list[str] = settings.cluster_names
        """The configured clusters, sorted."""
        self.implicit = not settings.clusters
        """No ``[clusters.<name>]``: one cluster named by ``BACKUPD_CLUSTER`` (``main``)."""
        chosen = settings.cluster if "cluster" in settings.model_fields_set else None
        if chosen is not None and not self.implicit and chosen not in settings.clusters:
            raise ConfigError(
                f"BACKUPD_CLUSTER: no cluster {chosen!r} in the settings "
                f"(configured: {', '.join(self.names)})"
            )
        self.default: str | None = settings.cluster if self.implicit else chosen
        """The cluster a command works on without ``--cluster``: the implicit one, else
        ``BACKUPD_CLUSTER`` when set, else the only named one; None: a choice is needed."""
        if self.default is None and len(self.names) == 1:
            self.default = self.names[0]

    def choose(self, name: str | None) -> str | None:
        """The cluster a command works on: ``name`` (``--cluster``) if given, which must be
        configured (``ConfigError``), else ``default`` (None: several clusters, none chosen)."""
        if name is None:
            return self.default
        if name not in self.names:
            raise ConfigError(
                f"--cluster {name}: no such cluster (configured: {', '.join(self.names)})",
                hint="clusters are the [clusters.<name>] tables of the settings (docs/configuration.md)",
            )
        return name

    def require(self, name: str | None, *, what: str = "this command") -> str:
        """``choose(name)``, or a ``ConfigError`` (exit 2) naming the choices when there are
        several and none was chosen."""
        chosen = self.choose(name)
        if chosen is None:
            raise ConfigError(
                f"{what} works on one cluster, and {len(self.names)} are configured "
                f"({', '.join(self.names)}): choose one",
                hint="pass --cluster NAME, or set BACKUPD_CLUSTER=NAME",
            )
        return chosen

    def app(self, name: str) -> App:
        """The ``App`` of cluster ``name`` (built from ``settings.for_cluster(name)``, cached)."""
        if name not in self._apps:
            self._apps[name] = App(self._settings.for_cluster(self.require(name)), self._file_data)
        return self._apps[name]

    def apps(self) -> list[App]:
        """The ``App`` of every configured cluster, in name order."""
        return [self.app(name) for name in self.names]

    def digest(self, name: str) -> str:
        """The SHA-256 of cluster ``name``'s resolved settings, secrets hashed, daemon-level
        keys left out (``wiring/digest.py``): equal in every process for equal settings."""
        from contentflow_backupd.wiring.digest import combine

        return combine(*self.digests(name))

    def digests(self, name: str) -> tuple[str, str]:
        """``digest(name)``'s two parts: (the settings but the schedule, the schedule)."""
        from contentflow_backupd.wiring.digest import cluster_digests

        return cluster_digests(self._settings.for_cluster(self.require(name)))

    def daemon_digests(self) -> dict[str, str]:
        """Each daemon-level setting's digest by environment name (``wiring/digest.py``)."""
        from contentflow_backupd.wiring.digest import daemon_digests

        return daemon_digests(self._settings)

    def check_streams(self) -> None:
        """``ConfigError`` when two named clusters in physical mode could stream WAL from one
        server (``host:port``) through one replication slot (``wal.slot``): each stream would
        move the slot past WAL the other still needs. Checked when the daemon starts (it parses
        connection strings with psycopg, which ``wal push`` must not import)."""
        from contentflow_backupd.source.conninfo import ConnInfo

        seen: dict[tuple[str, str, str], str] = {}
        for name in self.names if not self.implicit else []:
            view = self._settings.for_cluster(name)
            if view.mode != "physical" or view.wal.method == "archive_command":
                continue
            url = view.database_url.get_secret_value() if view.database_url else None
            params = ConnInfo.parse(url, setting=f"BACKUPD_CLUSTERS__{name.upper()}__DATABASE_URL").params
            key = (params.get("host", ""), params.get("port", "5432"), view.wal.slot)
            if key in seen:
                raise ConfigError(
                    f"clusters {seen[key]} and {name} would both stream WAL from "
                    f"{key[0] or '(default host)'}:{key[1]} through the replication slot {key[2]!r}",
                    hint=f'give one of them its own slot: [clusters.{name}.wal] slot = "..."',
                )
            seen[key] = name

    # -- the daemon's FleetApp ------------------------------------------------------------------
    @property
    def cluster_names(self) -> list[str]:
        return list(self.names)

    def cluster(self, name: str) -> App:
        return self.app(name)

    @property
    def _first(self) -> App:
        return self.app(self.names[0])

    @property
    def http_listen(self) -> str:
        return self._first.http_listen

    @property
    def shutdown_grace(self) -> str:
        return self._first.shutdown_grace

    @property
    def shutdown_grace_s(self) -> float:
        return self._first.shutdown_grace_s

    @property
    def max_concurrent_jobs(self) -> int:
        return self._first.max_concurrent_jobs

    @property
    def timezone(self) -> str:
        return self._first.timezone

    @property
    def fleet_member(self) -> str:
        return self._settings.fleet_member

    @property
    def lease_ttl_s(self) -> float:
        from contentflow_backupd.timespec import parse_duration

        return parse_duration(self._settings.fleet.lease_ttl)

    def state_dir(self) -> Path:
        return self._first.state_dir()

    def open_catalog(self) -> Catalog:
        return self._first.open_catalog()

    def leader_lock(self, scope: Scope | None = None) -> LeaderLock:
        return self._first.leader_lock(scope)

    def pg_drivers(self) -> PostgresDrivers:
        return self._first.pg_drivers()

    def drill_database(self) -> Database | None:
        return self._first.drill_options().database

    def config_view(self) -> dict[str, str]:
        """The audit trail's view of the settings: the implicit cluster's as before (an upgrade
        records no change), else the whole configuration, every cluster's keys included."""
        rows = self._first.settings_view({}) if self.implicit else self.settings_view()
        return {row["name"]: row["value"] for row in rows}

    def settings_view(self, cluster: str | None = None) -> list[dict[str, str]]:
        """``config show``: every setting (of one cluster, with ``cluster``) and its source."""
        from contentflow_backupd.wiring.configshow import describe_settings

        if cluster is not None:
            self.choose(cluster)
        return describe_settings(self._settings, self._file_data, cluster)

    def close(self) -> None:
        for app in self._apps.values():
            app.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
