"""The catalog contract: an index of backups and runs in the daemon's own database.

The catalog is an index, not the truth: the repository's manifests are, and ``catalog rebuild``
reconstructs the ``backups`` table from them. Implementations must be safe when two processes use
the same catalog at once (a CLI command while the daemon runs): every method is one short
transaction, and a busy database is waited for (bounded), never corrupted.

Timestamps go in and come out as timezone-aware UTC ``datetime`` values (naive ones going in are
taken as UTC).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from contentflow_backupd.catalog.audit_records import AuditEvent
from contentflow_backupd.catalog.guard_records import BatchCheckpoint, MigrationRunRecord, MigrationStatus
from contentflow_backupd.model import (
    BackupRecord,
    BackupStatus,
    RestorePoint,
    RunRecord,
    RunStatus,
    RunTrigger,
    Scope,
    iso,
)

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


class Catalog(Protocol):
    """Every query that reports rows takes the ``Scope`` (repository id, cluster) they belong
    to and returns only rows of that scope; records written carry their repository id. Rows from
    before revision 0008 without one are attributed by ``adopt_unscoped`` or never reported."""

    def upsert_backup(self, record: BackupRecord) -> None:
        """Insert the record, or replace every field of the row with the same id."""
        ...

    def get_backup(self, backup_id: str) -> BackupRecord | None:
        """The record with this id, or None."""
        ...

    def list_backups(
        self, scope: Scope, statuses: Iterable[BackupStatus] | None = None
    ) -> list[BackupRecord]:
        """Records of ``scope`` (all statuses when ``statuses`` is None), oldest first
        (by ``started_at``, then ``id``)."""
        ...

    def delete_backup(self, backup_id: str) -> None:
        """Remove the row; a missing id is not an error."""
        ...

    def replace_backups(self, scope: Scope, records: Sequence[BackupRecord]) -> None:
        """In one transaction: delete every backup row of ``scope`` whose status is
        ``succeeded``, then insert ``records``, replacing any row with the same id (also one of
        another cluster). Used by ``catalog rebuild``; rows of failed attempts are kept."""
        ...

    def start_run(
        self,
        scope: Scope,
        job: str,
        trigger: RunTrigger,
        *,
        pid: int | None = None,
        host: str | None = None,
    ) -> RunRecord:
        """Insert a run of ``scope`` with status ``running`` and ``started_at`` now; returns it
        with its id."""
        ...

    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        *,
        backup_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Set status, ``finished_at`` now, backup id and error of a run. ``CatalogError`` when
        no run has this id."""
        ...

    def list_runs(self, scope: Scope, limit: int | None = None, job: str | None = None) -> list[RunRecord]:
        """Runs of ``scope`` (of ``job`` only, if given) in insertion order (by id); with
        ``limit``, the newest ``limit`` of those runs (still in insertion order)."""
        ...

    def mark_interrupted(self, is_alive: Callable[[int | None, str | None], bool]) -> list[str]:
        """Every backup and run still ``running`` whose (pid, host) ``is_alive`` says is gone
        becomes ``interrupted`` with ``finished_at`` now and error "process ended without
        finishing (killed or crashed)". ``is_alive`` is called outside any transaction; a row
        that finished meanwhile is left alone. Returns the ids of the backups changed."""
        ...

    def add_restore_point(
        self, scope: Scope, name: str, lsn: str, timeline: int, created_at: datetime
    ) -> None:
        """Record a named restore point of ``scope``. Names are unique per cluster:
        ``CatalogError`` when the cluster already has one of that name (the row is unchanged)."""
        ...

    def list_restore_points(self, scope: Scope) -> list[RestorePoint]:
        """Restore points of ``scope``, oldest first (by ``created_at``, then name)."""
        ...

    def get_restore_point(self, scope: Scope, name: str) -> RestorePoint | None:
        """The restore point of ``scope`` with this name, or None (also when the cluster's point
        of that name belongs to another repository)."""
        ...

    def add_deletions(self, records: Sequence[DeletionRecord]) -> None:
        """Append ``records`` (their ``id`` is ignored) in one transaction; nothing on error."""
        ...

    def list_deletions(self, scope: Scope, limit: int | None = None) -> list[DeletionRecord]:
        """Deletions of ``scope`` in insertion order (by id), with their ids; with ``limit``,
        the newest ``limit`` of them (still in insertion order)."""
        ...

    def count_deleted_wal_segments(self, scope: Scope) -> int:
        """How many WAL segments (not history, backup or partial files) of ``scope`` retention
        deleted."""
        ...

    def get_verify_state(self, scope: Scope) -> VerifyState:
        """The verification state of ``scope``; an empty ``VerifyState`` when none was saved (the
        catalog keeps one per cluster: the last repository to save it owns it)."""
        ...

    def set_verify_state(self, scope: Scope, state: VerifyState) -> None:
        """Insert or replace the verification state of ``scope``."""
        ...

    def record_corrupt(
        self,
        scope: Scope,
        key: str,
        backup_ids: Sequence[str],
        problem: str,
        *,
        detected_at: datetime | None = None,
    ) -> CorruptObject:
        """Record ``key`` as corrupt. When an open record of the key exists, its backup ids and
        problem are replaced and its ``detected_at`` kept; otherwise a new open record is added
        (``detected_at`` default: now). At most one record per key is open. Returns the record."""
        ...

    def list_corrupt(self, scope: Scope, *, open_only: bool = True) -> list[CorruptObject]:
        """Corrupt-object records of ``scope`` in insertion order (by id); only the open ones
        unless ``open_only`` is False."""
        ...

    def resolve_corrupt(
        self, scope: Scope, key: str, resolution: str, *, resolved_at: datetime | None = None
    ) -> bool:
        """Close the open record of ``key`` with ``resolution`` (``resolved_at`` default: now).
        Returns False, changing nothing, when no record of the key is open."""
        ...

    def add_drill(self, record: DrillRecord) -> None:
        """Insert a finished drill; ``CatalogError`` when a drill with its id exists."""
        ...

    def list_drills(
        self, scope: Scope, *, limit: int | None = None, status: DrillStatus | None = None
    ) -> list[DrillRecord]:
        """Drills of ``scope`` (only those with ``status`` when given), oldest first (by
        ``started_at``, then id); with ``limit``, the newest ``limit`` of them."""
        ...

    def save_migration_run(self, record: MigrationRunRecord) -> None:
        """Insert or replace the ``migrate`` run with ``record.id``."""
        ...

    def get_migration_run(self, run_id: str) -> MigrationRunRecord | None: ...

    def list_migration_runs(
        self, scope: Scope, *, limit: int | None = None, status: MigrationStatus | None = None
    ) -> list[MigrationRunRecord]:
        """``migrate`` runs of ``scope`` (only those with ``status`` when given), oldest first;
        with ``limit``, the newest ``limit`` of them."""
        ...

    def save_batch(self, checkpoint: BatchCheckpoint) -> None:
        """Insert or replace the ``migrate batch`` checkpoint with ``checkpoint.id``."""
        ...

    def get_batch(self, batch_id: str) -> BatchCheckpoint | None: ...

    def append_audit_event(
        self,
        *,
        action: str,
        outcome: str,
        actor: str,
        objects: Sequence[str] = (),
        details: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AuditEvent:
        """Append one audit record (``at`` default: now) chained onto the last one, reading the
        last one inside the same write transaction (safe with concurrent writers). Returns it."""
        ...

    def list_audit_events(
        self,
        *,
        since: datetime | None = None,
        after_seq: int | None = None,
        action: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditEvent]:
        """Audit records by ``seq`` (only those at or after ``since``, after ``after_seq`` and
        of ``action``, when given), newest first with ``newest_first``; with ``limit``, the
        first ``limit`` of them in that order."""
        ...

    def merge_audit_events(self, events: Sequence[AuditEvent]) -> tuple[int, int]:
        """In one transaction, make ``events`` (the repository's copy) the history up to their
        last seq; see ``catalog/audit.py``. Returns (imported, appended again)."""
        ...

    def get_audit_flushed_seq(self, repository_id: str) -> int | None:
        """The last audit seq written to the repository ``repository_id`` (None: never)."""
        ...

    def set_audit_flushed_seq(self, repository_id: str, seq: int) -> None:
        """Raise (never lower) the mark of ``get_audit_flushed_seq``."""
        ...

    def adopt_unscoped(self, scope: Scope, manifest_ids: Iterable[str]) -> int:
        """Attribute rows from before revision 0008 (no repository id) to ``scope``: backups of
        its cluster whose id is in ``manifest_ids`` (the repository's manifests), then the runs,
        drills and ``migrate`` runs that name one of them. Returns how many backups it adopted."""
        ...

    def has_unscoped(self, cluster: str) -> bool:
        """Whether backups of ``cluster`` from before revision 0008 are not attributed yet."""
        ...

    def get_meta(self, key: str) -> str | None:
        """A value of ``catalog_meta``, or None."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Insert or replace a value of ``catalog_meta``."""
        ...

    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine (APScheduler's job store lives in the catalog database)."""
        ...

    def close(self) -> None:
        """Dispose of connections. Idempotent."""
        ...
