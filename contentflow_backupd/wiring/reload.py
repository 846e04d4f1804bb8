"""The daemon's configuration for reloads (``daemon/reload.py``), from a ``Fleet``.

``reload_source(fleet, ...)`` is what ``run`` gives the daemon: the configuration it starts with
and ``load()``, which reads the configuration again. Only the TOML file and the credential
files can change (the process's environment does not), and ``load()`` re-reads both, then
checks what ``run`` checks at start: the settings (``load_settings``), two clusters streaming
through one slot (``Fleet.check_streams``), and every cluster's schedules (``build_trigger``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from contentflow_backupd.daemon.reload import ClusterConfig, Configuration, ReloadSource
from contentflow_backupd.settings import Settings, load_settings
from contentflow_backupd.wiring.fleet import Fleet


def configuration(
    fleet: Fleet, cluster: str | None = None, *, only: Sequence[str] | None = None
) -> Configuration:
    """``fleet`` as the reloader compares it. ``only``: the clusters the daemon serves (None:
    every configured one); the others are not compared, so a reload never starts a cluster
    that the daemon was not asked to serve. ``cluster``: whose settings view the audit trail
    records (as the daemon does at start-up for the cluster it serves); None, or a cluster the
    fleet no longer has: every cluster's (``config show``'s rows)."""
    served = [name for name in fleet.names if only is None or name in only]
    clusters = {name: ClusterConfig(*fleet.digests(name)) for name in served}
    if cluster is not None and cluster in fleet.names:
        rows = fleet.app(cluster).settings_view({})
    else:
        rows = fleet.settings_view()
    return Configuration(
        clusters=clusters,
        daemon_keys=fleet.daemon_digests(),
        app=fleet.app,
        audit_view={row["name"]: row["value"] for row in rows},
        close=fleet.close,
    )


def json_logs(settings: Settings) -> Settings:
    """``run --json``: the log format is JSON whatever the settings say."""
    return settings.model_copy(update={"log": settings.log.model_copy(update={"format": "json"})})


def reload_source(
    fleet: Fleet,
    config: Path | None,
    *,
    cluster: str | None = None,
    only: Sequence[str] | None = None,
    adjust: Callable[[Settings], Settings] | None = None,
    secret_dirs: list[Path] | None = None,
) -> ReloadSource:
    """The daemon's ``ReloadSource``: ``fleet`` (what it starts with) and a ``load()`` that
    reads ``config`` (None: ``BACKUPD_CONFIG``, as at start) and the credential files again.
    ``cluster`` and ``only``: as ``configuration``'s. ``adjust``: what the command changed in
    the settings it started with (``json_logs``), done to every reloaded configuration too, so
    that it is not taken for a change."""

    def load() -> Configuration:
        from contentflow_backupd.scheduling.scheduler import build_trigger

        settings, file_data = load_settings(config, secret_dirs=secret_dirs)
        if adjust is not None:
            settings = adjust(settings)
        fleet = Fleet(settings, file_data)
        try:
            fleet.check_streams()
            for app in fleet.apps():
                for spec in app.job_specs:
                    if spec.schedule.kind != "off":
                        build_trigger(spec, app.timezone)  # ConfigError naming the setting
            return configuration(fleet, cluster, only=only)
        except BaseException:
            fleet.close()
            raise

    return ReloadSource(current=configuration(fleet, cluster, only=only), load=load)
