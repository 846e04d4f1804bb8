"""``rebuild_catalog``: reconstruct the catalog's backup index from the repository's manifests."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog

from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import BackupRecord
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.repository import Repository

log = structlog.get_logger(__name__)


@dataclass
class RebuildResult:
    backups: int
    unreadable: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"backups": self.backups, "unreadable": self.unreadable}


def rebuild_catalog(repo: Repository, catalog: Catalog, cluster: str) -> RebuildResult:
    records: list[BackupRecord] = []
    unreadable: list[dict[str, str]] = []
    for bid in repo.iter_backup_ids(cluster):
        key = layout.manifest_key(cluster, bid)
        try:
            manifest = repo.read_manifest(cluster, bid)
        except BackupdError as exc:
            log.error("manifest_unreadable", backup_id=bid, key=key, error=exc.message)
            unreadable.append({"backup_id": bid, "key": key, "error": exc.message})
            continue
        record = manifest.to_record(key)
        with contextlib.suppress(BackupdError):
            record.stored_bytes += repo.storage.stat(key).size
        records.append(record)
    catalog.replace_backups(cluster, records)
    log.info("catalog_rebuilt", cluster=cluster, backups=len(records), unreadable=len(unreadable))
    return RebuildResult(backups=len(records), unreadable=unreadable)
