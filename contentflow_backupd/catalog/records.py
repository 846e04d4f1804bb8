"""Records of the catalog that belong to no other module: retention's deletions, continuous
verification's state and corrupt objects, restore drills. Pure data, free of SQLAlchemy, so that
use cases can build and read them without loading it (``catalog/mapping.py`` maps them to rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from contentflow_backupd.model import iso

DeletionWhat = Literal["backup", "generation", "wal"]


@dataclass(frozen=True)
class DeletionRecord:
    """Something retention removed from the repository: a backup (its manifest), a generation
    (its chunk objects) or a WAL archive file. ``name`` is the backup id, the generation or the WAL
    file name; ``bytes`` what the deleted objects held; ``run_id`` the run that deleted it."""

    at: datetime
    cluster: str
    what: DeletionWhat
    name: str
    bytes: int
    reason: str
    run_id: int | None = None
    id: int | None = None
    """Assigned by the catalog (insertion order); None on records not yet added."""
    repository_id: str | None = None
    """The repository it was deleted from (None: from before catalog revision 0008)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": iso(self.at),
            "cluster": self.cluster,
            "what": self.what,
            "name": self.name,
            "bytes": self.bytes,
            "reason": self.reason,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class VerifyState:
    """Where continuous verification of one cluster stands (``verify --since-last``).

    ``last_deep_success_at``: start of the last verification run that completed (every object it
    planned was read); ``verified_backups``: the committed backups that run had read (a backup not
    among them is "new" to the next run, whatever the clocks say). ``sweep_cursor``:
    the key of the last object the rotating sweep read (None: the next run starts at the first
    key); ``sweep_started_at``: when the current pass over all objects began;
    ``sweep_objects_total``: how many objects the cluster held at the last run."""

    cluster: str
    last_deep_success_at: datetime | None = None
    sweep_cursor: str | None = None
    sweep_started_at: datetime | None = None
    sweep_objects_total: int = 0
    verified_backups: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "last_deep_success_at": iso(self.last_deep_success_at),
            "sweep_cursor": self.sweep_cursor,
            "sweep_started_at": iso(self.sweep_started_at),
            "sweep_objects_total": self.sweep_objects_total,
            "verified_backups": list(self.verified_backups),
        }


@dataclass(frozen=True)
class CorruptObject:
    """An object of the repository found bad (missing, wrong size, failed authentication or
    hash), with the backups that need it. Open while ``resolved_at`` is None."""

    cluster: str
    key: str
    backup_ids: tuple[str, ...]
    problem: str
    detected_at: datetime
    resolved_at: datetime | None = None
    resolution: str | None = None
    id: int | None = None
    """Assigned by the catalog (insertion order)."""

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "cluster": self.cluster,
            "key": self.key,
            "backup_ids": list(self.backup_ids),
            "problem": self.problem,
            "detected_at": iso(self.detected_at),
            "resolved_at": iso(self.resolved_at),
            "resolution": self.resolution,
        }


DrillStatus = Literal["succeeded", "failed"]


@dataclass(frozen=True)
class DrillRecord:
    """One restore drill: which backup was restored to which target (``target``: a description
    such as ``lsn 0/5000028``, ``time 2026-11-25 04:00:00+00:00`` or ``the backup``), whether it
    succeeded, the measured RTO (from the drill's start to a server that answers queries), the
    restored size and throughput, and each check (``name``, ``status``, ``detail``)."""

    id: str
    cluster: str
    mode: str
    backup_id: str | None
    target: str
    status: DrillStatus
    started_at: datetime
    finished_at: datetime | None
    rto_seconds: float | None = None
    restored_bytes: int | None = None
    throughput_bytes_per_s: float | None = None
    checks: tuple[dict[str, str], ...] = ()
    error: str | None = None
    run_id: int | None = None
    repository_id: str | None = None
    """The repository the drill restored from (None: from before catalog revision 0008)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "cluster": self.cluster,
            "mode": self.mode,
            "backup_id": self.backup_id,
            "target": self.target,
            "status": self.status,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "rto_seconds": self.rto_seconds,
            "restored_bytes": self.restored_bytes,
            "throughput_bytes_per_s": self.throughput_bytes_per_s,
            "checks": [dict(c) for c in self.checks],
            "error": self.error,
        }
