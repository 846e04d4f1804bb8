"""The catalog contract: an index of backups and runs in the daemon's own database.

The catalog is an index, not the truth: the repository's manifests are, and ``catalog rebuild``
reconstructs the ``backups`` table from them. Implementations must be safe when two processes use
the same catalog at once (a CLI command while the daemon runs): every method is one short
transaction, and a busy database is waited for (bounded), never corrupted.

Timestamps go in and come out as timezone-aware UTC ``datetime`` values (naive ones going in are
taken as UTC).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from contentflow_backupd.model import (
    BackupRecord,
    BackupStatus,
    RestorePoint,
    RunRecord,
    RunStatus,
    RunTrigger,
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


class Catalog(Protocol):
    def upsert_backup(self, record: BackupRecord) -> None:
        """Insert the record, or replace every field of the row with the same id."""
        ...

    def get_backup(self, backup_id: str) -> BackupRecord | None:
        """The record with this id, or None."""
        ...

    def list_backups(
        self, cluster: str, statuses: Iterable[BackupStatus] | None = None
    ) -> list[BackupRecord]:
        """Records of ``cluster`` (all statuses when ``statuses`` is None), oldest first
        (by ``started_at``, then ``id``)."""
        ...

    def delete_backup(self, backup_id: str) -> None:
        """Remove the row; a missing id is not an error."""
        ...

    def replace_backups(self, cluster: str, records: Sequence[BackupRecord]) -> None:
        """In one transaction: delete every backup row of ``cluster`` whose status is
        ``succeeded``, then insert ``records``, replacing any row with the same id (also one of
        another cluster). Used by ``catalog rebuild``; rows of failed attempts are kept."""
        ...

    def start_run(
        self, job: str, trigger: RunTrigger, *, pid: int | None = None, host: str | None = None
    ) -> RunRecord:
        """Insert a run with status ``running`` and ``started_at`` now; returns it with its id."""
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

    def list_runs(self, limit: int | None = None) -> list[RunRecord]:
        """Runs in insertion order (by id); with ``limit``, the newest ``limit`` runs (still in
        insertion order)."""
        ...

    def mark_interrupted(self, is_alive: Callable[[int | None, str | None], bool]) -> list[str]:
        """Every backup and run still ``running`` whose (pid, host) ``is_alive`` says is gone
        becomes ``interrupted`` with ``finished_at`` now and error "process ended without
        finishing (killed or crashed)". ``is_alive`` is called outside any transaction; a row
        that finished meanwhile is left alone. Returns the ids of the backups changed."""
        ...

    def add_restore_point(
        self, cluster: str, name: str, lsn: str, timeline: int, created_at: datetime
    ) -> None:
        """Record a named restore point of ``cluster``. Names are unique per cluster:
        ``CatalogError`` when the cluster already has one of that name (the row is unchanged)."""
        ...

    def list_restore_points(self, cluster: str) -> list[RestorePoint]:
        """Restore points of ``cluster``, oldest first (by ``created_at``, then name)."""
        ...

    def get_restore_point(self, cluster: str, name: str) -> RestorePoint | None:
        """The restore point of ``cluster`` with this name, or None."""
        ...

    def add_deletions(self, records: Sequence[DeletionRecord]) -> None:
        """Append ``records`` (their ``id`` is ignored) in one transaction; nothing on error."""
        ...

    def list_deletions(self, cluster: str, limit: int | None = None) -> list[DeletionRecord]:
        """Deletions of ``cluster`` in insertion order (by id), with their ids; with ``limit``,
        the newest ``limit`` of them (still in insertion order)."""
        ...

    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine (APScheduler's job store lives in the catalog database)."""
        ...

    def close(self) -> None:
        """Dispose of connections. Idempotent."""
        ...
