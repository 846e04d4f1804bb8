"""``create_restore_point`` and ``list_restore_points``: named points to recover to.

A restore point is a WAL record (``pg_create_restore_point``) that ``restore --target-name``
stops at. It is recorded in the catalog with its LSN, timeline and time, so that a restore can
choose a backup that ended before it and check that the archive reaches it. The WAL segment that
holds it is switched out at once and waited for, so the point is restorable when the command
returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from contentflow_backupd.catalog.base import RestorePointCatalog
from contentflow_backupd.errors import UsageError
from contentflow_backupd.model import RestorePoint, Scope
from contentflow_backupd.ops.restore.target import check_restore_point_name
from contentflow_backupd.repository.walarchive import WalArchive, WalRefused
from contentflow_backupd.source.base import ClusterInfo
from contentflow_backupd.wal import Segment, parse_lsn

log = structlog.get_logger(__name__)

MakePoint = Callable[[str], tuple[str, int, datetime]]
"""Creates the restore point on the server: name -> (LSN, timeline, server time)."""


@dataclass
class RestorePointResult:
    point: RestorePoint
    segment: str
    archived: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.point.to_json(), "wal_segment": self.segment, "archived": self.archived}


def create_restore_point(
    catalog: RestorePointCatalog,
    archive: WalArchive,
    cluster: str,
    name: str,
    *,
    describe: Callable[[], ClusterInfo],
    make: MakePoint,
    archive_timeout: float = 300.0,
) -> RestorePointResult:
    """Create ``name`` on the server, record it, and wait (up to ``archive_timeout`` seconds) until
    the segment holding it is archived. Names are unique per cluster: a taken name is refused
    before the server is touched."""
    check_restore_point_name(name)
    scope = Scope(archive.repo.id, cluster)
    existing = catalog.get_restore_point(scope, name)
    if existing is not None:
        raise UsageError(
            f"cluster {cluster!r} already has a restore point named {name!r} "
            f"(at {existing.lsn}, made {existing.created_at:%Y-%m-%d %H:%M:%S} UTC)",
            hint="restore point names are unique per cluster; choose another name",
        )
    info = describe()
    identity = archive.identity()
    if identity is not None and identity.system_identifier != info.system_identifier:
        raise WalRefused(
            f"the server is PostgreSQL system {info.system_identifier}, but cluster {cluster!r} of the "
            f"repository belongs to system {identity.system_identifier}: a restore point there could "
            "never be restored",
            hint="check BACKUPD_DATABASE_URL and BACKUPD_CLUSTER",
        )
    lsn, timeline, created_at = make(name)
    point = RestorePoint(cluster=cluster, name=name, lsn=lsn, timeline=timeline, created_at=created_at)
    catalog.add_restore_point(scope, name, lsn, timeline, created_at)
    segment = Segment(timeline, (parse_lsn(lsn) - 1) // info.wal_segment_size).name(info.wal_segment_size)
    archived = _wait_archived(archive, segment, archive_timeout)
    if archived:
        log.info("restore_point_created", name=name, lsn=lsn, timeline=timeline, wal=segment)
    else:
        log.warning(
            "restore_point_not_archived",
            name=name,
            lsn=lsn,
            wal=segment,
            timeout_seconds=archive_timeout,
            hint="check archive_command (wal-push) or wal-stream, and pg_stat_archiver",
        )
    return RestorePointResult(point, segment, archived)


def _wait_archived(archive: WalArchive, segment: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not archive.exists(segment):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def list_restore_points(catalog: RestorePointCatalog, scope: Scope) -> list[RestorePoint]:
    return catalog.list_restore_points(scope)
