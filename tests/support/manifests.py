"""Manifests for tests that need one without taking a backup."""

from __future__ import annotations

from datetime import datetime

from contentflow_backupd.model import utcnow
from contentflow_backupd.repository.manifest import Manifest, StreamEntry


def logical_full(
    backup_id: str, streams: list[StreamEntry] | None = None, *, at: datetime | None = None
) -> Manifest:
    """A committed-looking logical full backup ``backup_id`` (its own generation) of ``streams``,
    started and finished ``at`` (default: now)."""
    now = at or utcnow()
    return Manifest(
        id=backup_id,
        cluster="main",
        kind="full",
        mode="logical",
        generation=backup_id,
        parent_id=None,
        database="db",
        started_at=now,
        finished_at=now,
        source_bytes=1,
        stored_bytes=2,
        chunks_total=0,
        chunks_new=0,
        streams=list(streams or []),
    )
