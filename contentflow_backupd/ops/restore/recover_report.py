"""What ``recover`` reports: the backup used, the moment recovered to, every backup skipped and
why, the times, the server's state, the checks and the next steps (``to_json`` is the shape of
``recover --json``), and the hooks through which it starts the server and runs the checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from contentflow_backupd.model import iso
from contentflow_backupd.ops.restore.physical import PhysicalRestoreResult
from contentflow_backupd.repository.manifest import Manifest


class CheckOutcome(Protocol):
    """One check of the restored data (``ops.drill.checks.CheckResult``)."""

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def detail(self) -> str: ...


@dataclass(frozen=True)
class ServerState:
    """Where a started server stands once recovery has ended or paused."""

    reached: Literal["promoted", "paused", "shut down"]
    replayed_to: datetime | None = None
    """``pg_last_xact_replay_timestamp()``: the commit time of the last transaction replayed."""
    detail: str = ""
    logfile: Path | None = None
    """Where the server started by ``recover`` logs."""


StartServer = Callable[[PhysicalRestoreResult], ServerState]
"""Start the restored data directory and wait until recovery ends, pauses or shuts down at the
target; raise ``SourceError`` (with the server log's tail) when it stops short."""

RunChecks = Callable[[Manifest], Sequence[CheckOutcome]]
"""The drill checks against the recovered server or database, given the backup's manifest."""


@dataclass(frozen=True)
class Skipped:
    backup_id: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"backup_id": self.backup_id, "reason": self.reason}


@dataclass
class RecoverResult:
    mode: Literal["physical", "logical"]
    backup_id: str
    backup_kind: str
    backup_finished_at: datetime
    destination: str
    """The data directory or the database (without password)."""
    target: dict[str, Any]
    recovered_to: str
    """The moment restored to, in words."""
    restored_bytes: int
    restore_seconds: float
    recovery_seconds: float | None
    total_seconds: float
    started: bool
    server: ServerState | None = None
    skipped: list[Skipped] = field(default_factory=list)
    checks: list[CheckOutcome] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def checks_failed(self) -> list[CheckOutcome]:
        return [c for c in self.checks if c.status == "failed"]

    @property
    def status(self) -> Literal["succeeded", "failed"]:
        return "failed" if self.checks_failed else "succeeded"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "mode": self.mode,
            "backup_id": self.backup_id,
            "backup": {"kind": self.backup_kind, "finished_at": iso(self.backup_finished_at)},
            "destination": self.destination,
            "target": self.target,
            "recovered_to": self.recovered_to,
            "restored_bytes": self.restored_bytes,
            "duration_seconds": {
                "restore": round(self.restore_seconds, 3),
                "recovery": None if self.recovery_seconds is None else round(self.recovery_seconds, 3),
                "total": round(self.total_seconds, 3),
            },
            "started": self.started,
            "server": None
            if self.server is None
            else {
                "reached": self.server.reached,
                "replayed_to": iso(self.server.replayed_to),
                "detail": self.server.detail,
                "logfile": str(self.server.logfile) if self.server.logfile else None,
            },
            "skipped": [s.to_json() for s in self.skipped],
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks],
            "next_steps": self.next_steps,
            "warnings": self.warnings,
        }
