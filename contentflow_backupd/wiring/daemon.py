"""Settings -> the daemon's parts: its jobs (``BACKUPD_SCHEDULE__*``), the webhook notifier, the
WAL watcher and the ``pg_receivewal`` supervisor. The daemon gets them through ``App`` (it never
imports this package); nothing here connects to anything."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.settings import ENV_PREFIX, Settings
from contentflow_backupd.wiring.sources import source_conninfo
from contentflow_backupd.wiring.storage import state_dir, tmp_dir

if TYPE_CHECKING:
    from contentflow_backupd.catalog.base import Catalog
    from contentflow_backupd.daemon.walservice import WalService
    from contentflow_backupd.daemon.walwatch import StreamSupervisor, WalWatcher
    from contentflow_backupd.observability.metrics import ClusterMetrics
    from contentflow_backupd.observability.notify import Notifier
    from contentflow_backupd.scheduling.scheduler import JobSpec


def job_specs(settings: Settings, *, named_clusters: bool = False) -> list[JobSpec]:
    """The daemon's jobs from ``BACKUPD_SCHEDULE__*``. In logical mode there is no ``wal`` job
    (the recovery point is the last incremental).

    ``named_clusters``: whether the configuration has named clusters, which makes the default
    ``schedule.spread`` 30 minutes instead of 0 (``scheduling/spread.py: default_spread``). Only
    the implicit cluster exists today; the fleet wiring passes True for its named clusters (their
    ``Settings.for_cluster`` copies have no ``clusters`` to tell)."""
    from contentflow_backupd.scheduling.scheduler import JOB_IDS, JobSpec
    from contentflow_backupd.scheduling.spread import default_spread
    from contentflow_backupd.timespec import parse_duration, parse_schedule

    spread = settings.schedule.spread or default_spread(named_clusters=named_clusters)
    spread_s = parse_duration(spread, allow_zero=True)
    specs = []
    for job in JOB_IDS:
        value = getattr(settings.schedule, job)
        setting = f"{ENV_PREFIX}SCHEDULE__{job.upper()}"
        try:
            schedule = parse_schedule(value)
        except ValueError as exc:
            raise ConfigError(f"{setting}: {exc}") from None
        if job == "wal" and settings.mode == "logical":
            schedule = parse_schedule("off")
        specs.append(JobSpec(job, schedule, setting, cluster=settings.cluster, spread_s=spread_s))
    return specs


def notifier(settings: Settings) -> Notifier:
    from contentflow_backupd.model import this_host
    from contentflow_backupd.observability.notify import NullNotifier, WebhookNotifier
    from contentflow_backupd.timespec import parse_duration

    url = settings.notify.webhook_url
    if url is None or not url.get_secret_value():
        return NullNotifier()
    return WebhookNotifier(
        url.get_secret_value(),
        timeout=parse_duration(settings.notify.timeout),
        retries=settings.notify.retries,
        cluster=settings.cluster,
        host=this_host(),
    )


def wal_service(settings: Settings, repo: Repository, metrics: ClusterMetrics) -> WalService | None:
    """The WAL socket that ``wal push`` hands segments to (``BACKUPD_WAL__SOCKET``; None: off)."""
    from contentflow_backupd.daemon.walservice import WalService
    from contentflow_backupd.walconf import socket_path
    from contentflow_backupd.wiring.storage import WAL_COMPRESSION_LEVEL

    path = socket_path(
        settings.wal.socket, str(settings.state_dir), settings.cluster if settings.named_cluster else None
    )
    if path is None:
        return None
    identity = {
        "repository": settings.repository,
        "cluster": settings.cluster,
        "s3_endpoint_url": settings.s3.endpoint_url,
    }
    archive = WalArchive(repo.with_compression(WAL_COMPRESSION_LEVEL), settings.cluster)
    return WalService(
        Path(path),
        archive,
        identity,
        metrics,
        workers=settings.wal.push_concurrency,
        ahead=settings.wal.push_ahead,
    )


def wal_spool_dir(settings: Settings) -> Path:
    return state_dir(settings) / "wal-spool" / settings.cluster


def wal_watcher(
    settings: Settings, repo: Repository, metrics: ClusterMetrics, catalog: Catalog | None = None
) -> WalWatcher:
    """The WAL job's watcher; ``method``: ``BACKUPD_WAL__METHOD``, else ``auto`` until the daemon
    asks the server (``daemon.walwatch.choose_wal_method``)."""
    from contentflow_backupd.daemon.walwatch import WalWatcher
    from contentflow_backupd.model import Scope
    from contentflow_backupd.scheduling.periods import schedule_period
    from contentflow_backupd.timespec import parse_schedule

    period = schedule_period(parse_schedule(settings.schedule.wal), settings.schedule.timezone) or 900.0
    scope = Scope(repo.id, settings.cluster)
    deleted = (lambda: catalog.count_deleted_wal_segments(scope)) if catalog is not None else None
    return WalWatcher(
        WalArchive(repo, settings.cluster),
        source_conninfo(settings),
        metrics,
        spool_dir=wal_spool_dir(settings),
        period_s=period,
        method=settings.wal.method or "auto",
        deleted_segments=deleted,
    )


def stream_supervisor(settings: Settings, repo: Repository, metrics: ClusterMetrics) -> StreamSupervisor:
    from contentflow_backupd.daemon.walwatch import StreamSupervisor

    return StreamSupervisor(
        WalArchive(repo, settings.cluster),
        source_conninfo(settings),
        metrics,
        spool_dir=wal_spool_dir(settings),
        slot=settings.wal.slot,
        bin_dir=settings.pg_bin,
        tmp_root=tmp_dir(settings),
    )


# -- health (``status``, /healthz) ---------------------------------------------------------------
