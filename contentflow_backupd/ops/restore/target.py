"""Where a point-in-time restore stops: ``RecoveryTarget`` (time, LSN, xid or restore point name,
the action at the target, the timeline), parsed and checked before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import structlog

from contentflow_backupd.errors import (
    UsageError,
)
from contentflow_backupd.wal import format_lsn, parse_lsn

log = structlog.get_logger(__name__)

TargetKind = Literal["time", "lsn", "xid", "name"]
TargetAction = Literal["promote", "pause", "shutdown"]
MAX_RESTORE_POINT_NAME = 63  # PostgreSQL's MAXFNAMELEN - 1


# -- the target ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops (``kind`` None: at the end of the archive), what the server does
    there (``action``) and which timeline it follows (``latest``, ``current`` or a number)."""

    kind: TargetKind | None = None
    value: str = ""
    """The target as PostgreSQL gets it (times normalised to UTC, LSNs upper case)."""
    time: datetime | None = None
    lsn: int | None = None
    action: TargetAction = "pause"
    timeline: str = "latest"

    @classmethod
    def parse(
        cls,
        *,
        time: str | None = None,
        lsn: str | None = None,
        xid: str | None = None,
        name: str | None = None,
        action: str | None = None,
        timeline: str | None = None,
    ) -> RecoveryTarget:
        given = {
            k: v for k, v in (("time", time), ("lsn", lsn), ("xid", xid), ("name", name)) if v is not None
        }
        if len(given) > 1:
            raise UsageError(
                f"give at most one recovery target (got {', '.join('--target-' + k for k in given)})"
            )
        tl = (timeline or "latest").strip().lower()
        if tl not in ("latest", "current") and not (tl.isdigit() and int(tl) > 0):
            raise UsageError(
                f"--target-timeline: {timeline!r} is not 'latest', 'current' or a timeline number"
            )
        if action is not None and action not in ("promote", "pause", "shutdown"):
            raise UsageError(f"--target-action: {action!r} is not promote, pause or shutdown")
        act = cast(TargetAction, action or "pause")
        if not given:
            if action is not None:
                raise UsageError("--target-action needs a target (--target-time, -lsn, -xid or -name)")
            return cls(timeline=tl)
        kind, raw = next(iter(given.items()))
        if kind == "time":
            at = _parse_time(raw)
            return cls("time", at.isoformat(sep=" "), time=at, action=act, timeline=tl)
        if kind == "lsn":
            try:
                pos = parse_lsn(raw)
            except ValueError as exc:
                raise UsageError(f"--target-lsn: {exc}") from None
            return cls("lsn", format_lsn(pos), lsn=pos, action=act, timeline=tl)
        if kind == "xid":
            if not raw.strip().isdigit() or not 3 <= int(raw) < 2**64:
                raise UsageError(f"--target-xid: {raw!r} is not a transaction id (a number, 3 or more)")
            return cls("xid", str(int(raw)), action=act, timeline=tl)
        check_restore_point_name(raw, "--target-name")
        return cls("name", raw, action=act, timeline=tl)

    def describe(self) -> str:
        return "the end of the WAL archive" if self.kind is None else f"{self.kind} {self.value}"

    def settings(self) -> dict[str, str]:
        """The ``recovery_target_*`` settings."""
        out: dict[str, str] = {}
        if self.kind is not None:
            out[f"recovery_target_{self.kind}"] = self.value
            out["recovery_target_action"] = self.action
        out["recovery_target_timeline"] = self.timeline
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value or None,
            "action": self.action if self.kind else None,
            "timeline": self.timeline,
        }


def _parse_time(raw: str) -> datetime:
    try:
        at = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise UsageError(
            f"--target-time: {raw!r} is not an ISO 8601 time",
            hint="e.g. 2026-11-24T05:44:59Z or '2026-11-24 05:44:59.123+01'; without a zone, UTC",
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)


def check_restore_point_name(name: str, what: str = "restore point name") -> str:
    if not name or len(name) > MAX_RESTORE_POINT_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise UsageError(f"{what}: {name!r} must be 1 to {MAX_RESTORE_POINT_NAME} printable characters")
    return name
