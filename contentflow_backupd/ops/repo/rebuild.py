"""``rebuild_catalog``: reconstruct the catalog's backup index from the repository's manifests,
and its audit trail from the repository's audit objects (ops/audit.py)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog

from contentflow_backupd.catalog.base import BackupAuditCatalog
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import BackupRecord, Scope
from contentflow_backupd.observability import progress
from contentflow_backupd.ops.audit import AuditRestore, record_event, restore_audit
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.repository import Repository

log = structlog.get_logger(__name__)


@dataclass
class RebuildResult:
    backups: int
    unreadable: list[dict[str, str]] = field(default_factory=list)
    audit: AuditRestore | None = None

    def to_json(self) -> dict[str, Any]:
        audit = None if self.audit is None else self.audit.to_json()
        return {"backups": self.backups, "unreadable": self.unreadable, "audit": audit}


def rebuild_catalog(repo: Repository, catalog: BackupAuditCatalog, cluster: str) -> RebuildResult:
    records: list[BackupRecord] = []
    unreadable: list[dict[str, str]] = []
    ids = list(repo.iter_backup_ids(cluster))
    progress.phase("reading manifests", total=len(ids), unit="manifests")
    for bid in ids:
        progress.advance(1)
        key = layout.manifest_key(cluster, bid)
        try:
            manifest = repo.read_manifest(cluster, bid)
        except BackupdError as exc:
            log.error("manifest_unreadable", backup_id=bid, key=key, error=exc.message)
            unreadable.append({"backup_id": bid, "key": key, "error": exc.message})
            continue
        record = manifest.to_record(key)
        record.repository_id = repo.id
        with contextlib.suppress(BackupdError):
            record.stored_bytes += repo.storage.stat(key).size
        records.append(record)
    progress.phase("writing the catalog")
    catalog.replace_backups(Scope(repo.id, cluster), records)
    progress.phase("restoring the audit trail")
    audit = restore_audit(catalog, repo)
    log.info("catalog_rebuilt", cluster=cluster, backups=len(records), unreadable=len(unreadable))
    details = {
        "cluster": cluster,
        "backups": len(records),
        "unreadable": unreadable,
        "audit": audit.to_json(),
    }
    outcome = "failed" if unreadable else "succeeded"
    record_event(catalog, action="catalog_rebuild", outcome=outcome, details=details, repo=repo)
    return RebuildResult(backups=len(records), unreadable=unreadable, audit=audit)
