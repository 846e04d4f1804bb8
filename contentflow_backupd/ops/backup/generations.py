"""Which generation a new backup belongs to, and which chunks that generation already holds.

Storage is the truth: backup ids sort by time and name their kind, so the newest full backup is
found by listing manifest keys; its generation's chunk set comes from the committed manifests of
that generation (uncommitted chunks of crashed backups are never trusted: they are uploaded again).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import BackupKind
from contentflow_backupd.repository.repository import Repository

log = structlog.get_logger(__name__)


@dataclass
class GenerationPlan:
    kind: BackupKind
    generation: str | None
    """None for a full backup: it starts a generation named after its own id."""
    parent_id: str | None
    known_chunks: dict[str, int] = field(default_factory=dict)
    note: str | None = None


def plan_generation(repo: Repository, cluster: str, kind: BackupKind, mode: str) -> GenerationPlan:
    if kind == "full":
        return GenerationPlan(kind="full", generation=None, parent_id=None)
    ids = list(repo.iter_backup_ids(cluster))
    fulls = [i for i in ids if "-full-" in i]
    newest_full: str | None = None
    for candidate in reversed(fulls):
        try:
            manifest = repo.read_manifest(cluster, candidate)
        except BackupdError as exc:
            log.warning("full_backup_unreadable", backup_id=candidate, error=str(exc))
            continue
        if manifest.mode == mode:
            newest_full = candidate
            break
    if newest_full is None:
        return GenerationPlan(
            kind="full",
            generation=None,
            parent_id=None,
            note=f"no {mode} full backup in the repository: taking a full backup instead",
        )
    known: dict[str, int] = {}
    parent = newest_full
    for bid in ids:
        if bid < newest_full:
            continue
        try:
            manifest = repo.read_manifest(cluster, bid)
        except BackupdError as exc:
            log.warning("backup_unreadable", backup_id=bid, error=str(exc))
            continue
        if manifest.generation != newest_full or manifest.mode != mode:
            continue
        parent = bid
        for ref in manifest.chunk_refs():
            known[ref.id] = ref.stored
    return GenerationPlan(kind="incremental", generation=newest_full, parent_id=parent, known_chunks=known)
