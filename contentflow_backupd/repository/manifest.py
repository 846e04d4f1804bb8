"""Backup manifests: what a backup consists of. Written last; its presence commits the backup.

A manifest is JSON, stored compressed and encrypted at ``<cluster>/backups/<id>.json``. It lists
each stream of the backup (a ``pg_dump`` archive, later ``pg_basebackup`` tars) with its size,
BLAKE3 digest and ordered chunk references ``[chunk id, plaintext size, stored size]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contentflow_backupd.errors import UnsupportedFormat
from contentflow_backupd.model import (
    BACKUP_KINDS,
    BACKUP_MODES,
    BackupKind,
    BackupMode,
    BackupRecord,
    iso,
    parse_iso,
)

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ChunkRef:
    id: str
    size: int
    """Plaintext bytes."""
    stored: int
    """Bytes of the stored (compressed, sealed) object."""


@dataclass
class StreamEntry:
    name: str
    """``dump`` for a pg_dump archive; later ``base.tar`` and friends."""
    type: str
    """``pg_dump-custom`` etc."""
    size: int
    digest: str
    """BLAKE3 (unkeyed) hex digest of the whole stream."""
    chunks: list[ChunkRef]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "size": self.size,
            "digest": self.digest,
            "chunks": [[c.id, c.size, c.stored] for c in self.chunks],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StreamEntry:
        return cls(
            name=str(raw["name"]),
            type=str(raw["type"]),
            size=int(raw["size"]),
            digest=str(raw["digest"]),
            chunks=[ChunkRef(str(c[0]), int(c[1]), int(c[2])) for c in raw["chunks"]],
        )


@dataclass
class Manifest:
    id: str
    cluster: str
    kind: BackupKind
    mode: BackupMode
    generation: str
    parent_id: str | None
    database: str | None
    started_at: datetime
    finished_at: datetime
    source_bytes: int
    stored_bytes: int
    chunks_total: int
    chunks_new: int
    streams: list[StreamEntry]
    details: dict[str, Any] = field(default_factory=dict)
    tool_version: str = ""

    def chunk_refs(self) -> list[ChunkRef]:
        return [c for s in self.streams for c in s.chunks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "id": self.id,
            "cluster": self.cluster,
            "kind": self.kind,
            "mode": self.mode,
            "generation": self.generation,
            "parent_id": self.parent_id,
            "database": self.database,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "source_bytes": self.source_bytes,
            "stored_bytes": self.stored_bytes,
            "chunks_total": self.chunks_total,
            "chunks_new": self.chunks_new,
            "streams": [s.to_dict() for s in self.streams],
            "details": self.details,
            "tool_version": self.tool_version,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        fmt = int(raw.get("format", 0))
        if fmt > MANIFEST_FORMAT:
            raise UnsupportedFormat(
                f"backup {raw.get('id')} has manifest format {fmt}, newer than this version "
                f"supports ({MANIFEST_FORMAT})",
                hint="upgrade contentflow-backupd",
            )
        kind = raw["kind"]
        mode = raw["mode"]
        if kind not in BACKUP_KINDS or mode not in BACKUP_MODES:
            raise UnsupportedFormat(f"backup {raw.get('id')} has unknown kind/mode {kind}/{mode}")
        started = parse_iso(raw["started_at"])
        finished = parse_iso(raw["finished_at"])
        assert started is not None and finished is not None
        return cls(
            id=str(raw["id"]),
            cluster=str(raw["cluster"]),
            kind=kind,
            mode=mode,
            generation=str(raw["generation"]),
            parent_id=raw.get("parent_id"),
            database=raw.get("database"),
            started_at=started,
            finished_at=finished,
            source_bytes=int(raw["source_bytes"]),
            stored_bytes=int(raw["stored_bytes"]),
            chunks_total=int(raw["chunks_total"]),
            chunks_new=int(raw["chunks_new"]),
            streams=[StreamEntry.from_dict(s) for s in raw["streams"]],
            details=dict(raw.get("details") or {}),
            tool_version=str(raw.get("tool_version", "")),
        )

    def to_record(self, manifest_key: str) -> BackupRecord:
        return BackupRecord(
            id=self.id,
            cluster=self.cluster,
            kind=self.kind,
            mode=self.mode,
            status="succeeded",
            generation=self.generation,
            started_at=self.started_at,
            parent_id=self.parent_id,
            database=self.database,
            finished_at=self.finished_at,
            source_bytes=self.source_bytes,
            stored_bytes=self.stored_bytes,
            chunks_total=self.chunks_total,
            chunks_new=self.chunks_new,
            manifest_key=manifest_key,
            details=dict(self.details),
        )
