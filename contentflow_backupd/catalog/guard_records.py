"""Records of the migration guard's tables (``migration_runs``, ``migration_batches``), free of
SQLAlchemy so that operations can use them without loading it (``catalog/guard.py`` stores them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from contentflow_backupd.model import iso

MigrationStatus = Literal["running", "applied", "unverified", "noop", "refused", "failed", "rolled_back"]
"""``unverified``: applied and kept, but a post-migration check could not run (``migrate/guard.py``)."""
BatchStatus = Literal["running", "finished"]


@dataclass
class MigrationRunRecord:
    """One ``migrate`` run: who (``actor``: OS user@host) ran what (``command``, the migrations
    in ``details["migrations"]`` with their checksums), when, with which safety net
    (``restore_point``, ``backup_id``), the outcome, and the schema before and after.
    ``details`` also holds the checks, the rollback, the schema diff and, while the run changes
    role settings, the settings to put back (``details["role_settings"]``)."""

    id: str
    cluster: str
    database: str
    actor: str
    command: list[str]
    dry_run: bool
    status: MigrationStatus
    started_at: datetime
    finished_at: datetime | None = None
    restore_point: str | None = None
    backup_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    schema_before: str | None = None
    schema_after: str | None = None
    error: str | None = None
    repository_id: str | None = None
    """The repository of the run's safety net (None: from before catalog revision 0008)."""

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["started_at"], out["finished_at"] = iso(self.started_at), iso(self.finished_at)
        out.pop("schema_before")
        out.pop("schema_after")
        return out


@dataclass
class BatchCheckpoint:
    """Where one ``migrate batch`` data migration stands. ``id`` identifies the job (cluster,
    database, table, key and the SQL's hash): running the same command again resumes it.
    ``details`` is owned by ``migrate/batch.py`` (last committed key, the batch in flight and
    its transaction id, counters)."""

    id: str
    cluster: str
    database: str
    table_name: str
    key_column: str
    sql_sha256: str
    status: BatchStatus
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)
