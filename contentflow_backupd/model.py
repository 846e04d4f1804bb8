"""Pure value types shared by every layer: backup and run records, kinds and statuses."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

BackupKind = Literal["full", "incremental"]
BackupMode = Literal["logical", "physical"]
BackupStatus = Literal["running", "succeeded", "failed", "interrupted"]
RunStatus = Literal["running", "succeeded", "failed", "interrupted", "skipped"]
RunTrigger = Literal["scheduled", "manual", "catch-up"]

BACKUP_KINDS: tuple[BackupKind, ...] = ("full", "incremental")
JOB_NAMES: tuple[str, ...] = ("full", "incremental", "wal", "retention", "verify", "restore_test")
"""The daemon's jobs (fixed APScheduler job ids) and the ``job`` of every recorded run."""
BACKUP_MODES: tuple[BackupMode, ...] = ("logical", "physical")


class JobCancel(threading.Event):
    """A daemon job's cancel event (``BackupOptions.cancel``, ``run_drill(cancel=...)``). Set by
    the daemon's stop or ``cancel_job``, the job's run is recorded ``interrupted``; set by
    :meth:`fail` (the stall watchdog), it is recorded ``failed`` with that reason."""

    def __init__(self) -> None:
        super().__init__()
        self.failure: str | None = None

    def fail(self, reason: str) -> None:
        self.failure = reason
        self.set()


def cancel_failure(cancel: threading.Event | None) -> str | None:
    """Why a set cancel event fails its job (:meth:`JobCancel.fail`); None when it is not set or
    only stops it (the run is then ``interrupted``)."""
    if cancel is None or not cancel.is_set():
        return None
    return cancel.failure if isinstance(cancel, JobCancel) else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` suffix, seconds precision kept to microseconds."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(value: str | None) -> datetime | None:
    if value is None:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def new_backup_id(kind: BackupKind, now: datetime | None = None) -> str:
    """A sortable, readable backup id: ``20261124T054459Z-full-3a9c1b``."""
    now = now or utcnow()
    tag = "full" if kind == "full" else "incr"
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{tag}-{secrets.token_hex(3)}"


def this_host() -> str:
    return socket.gethostname()


def this_pid() -> int:
    return os.getpid()


@dataclass(frozen=True)
class Scope:
    """What a catalog row belongs to: one cluster (``BACKUPD_CLUSTER``) in one repository (the id
    in its ``repo.json``). Every catalog query that reports backups, runs, drills, verification,
    restore points, deletions or migration runs takes one, so that a catalog shared by several
    clusters or repositories never reports a row of another as this one's."""

    repository_id: str
    cluster: str


@dataclass
class BackupRecord:
    """One backup attempt as the catalog indexes it. Storage (the manifest) is the truth."""

    id: str
    cluster: str
    kind: BackupKind
    mode: BackupMode
    status: BackupStatus
    generation: str
    started_at: datetime
    parent_id: str | None = None
    database: str | None = None
    finished_at: datetime | None = None
    source_bytes: int = 0
    stored_bytes: int = 0
    chunks_total: int = 0
    chunks_new: int = 0
    manifest_key: str | None = None
    error: str | None = None
    pid: int | None = None
    host: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    repository_id: str | None = None
    """The repository the attempt wrote to (None: a row from before catalog revision 0008 not yet
    attributed to a repository)."""

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds(), 3)

    def to_json(self) -> dict[str, Any]:
        """The public JSON shape of a backup (``backup --json``, ``list --json``)."""
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "mode": self.mode,
            "status": self.status,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_seconds": self.duration_seconds,
            "source_bytes": self.source_bytes,
            "stored_bytes": self.stored_bytes,
            "chunks_total": self.chunks_total,
            "chunks_new": self.chunks_new,
            "generation": self.generation,
            "parent_id": self.parent_id,
            "database": self.database,
        }
        out["incremental_method"] = self.incremental_method
        if self.error is not None:
            out["error"] = self.error
        for key in ("start_lsn", "stop_lsn", "timeline", "system_identifier", "pg_version"):
            if key in self.details:
                out[key] = self.details[key]
        return out

    @property
    def incremental_method(self) -> str | None:
        """``native`` (pg_basebackup --incremental) or ``chunks`` (a whole stream deduplicated
        against its generation) for an incremental; None for a full backup."""
        if self.kind != "incremental":
            return None
        return "native" if self.details.get("incremental_method") == "native" else "chunks"

    def copy(self, **changes: Any) -> BackupRecord:
        data = asdict(self)
        data.update(changes)
        return BackupRecord(**data)


@dataclass
class RunRecord:
    """One run of a job (a backup, a verification, ...), scheduled or manual."""

    id: int
    job: str
    trigger: RunTrigger
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None = None
    backup_id: str | None = None
    error: str | None = None
    pid: int | None = None
    host: str | None = None
    repository_id: str | None = None
    cluster: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job,
            "trigger": self.trigger,
            "status": self.status,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "backup_id": self.backup_id,
            "error": self.error,
        }


@dataclass
class RestorePoint:
    """A named restore point (``pg_create_restore_point``) as the catalog records it.

    ``lsn`` is the position PostgreSQL returned (the end of the restore point record) as text
    such as ``0/3000100``; ``timeline`` is the timeline the server was on; ``created_at`` is the
    server's clock when the point was made.
    """

    cluster: str
    name: str
    lsn: str
    timeline: int
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cluster": self.cluster,
            "lsn": self.lsn,
            "timeline": self.timeline,
            "created_at": iso(self.created_at),
        }
