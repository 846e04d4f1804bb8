"""The fleet: every configured cluster, one ``App`` each.

An ``App`` stays one cluster. ``Fleet(settings, file_data)`` knows the clusters' names
(``[clusters.<name>]``, or the one implicit cluster ``settings.cluster`` when none is named),
picks the one a command works on (``choose``: ``--cluster``, else ``BACKUPD_CLUSTER``, else the
only one) and builds each cluster's ``App`` from ``settings.for_cluster(name)`` when first asked,
cached. ``close()`` closes what the apps opened. ``digest(name)``: a cluster's settings as one
SHA-256 (``wiring/digest.py``), what a reload compares.
"""

from __future__ import annotations

from typing import Any

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.settings import Settings
from contentflow_backupd.wiring.app import App


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
