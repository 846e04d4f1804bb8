"""Backup manifests: what a backup consists of. Written last; its presence commits the backup.

A manifest is JSON, stored compressed and encrypted at ``<cluster>/backups/<id>.json``. It lists
each stream of the backup (a ``pg_dump`` archive, later ``pg_basebackup`` tars) with its size,
BLAKE3 digest and ordered chunk references ``[chunk id, plaintext size, stored size]``.

Format 2 adds packs (``docs/design/wal-and-restore-speed.md`` section 4): a generation of small
chunks stores them many to an object. The stream entry names its chunk size (``chunking``) and
lists the packs it uses, ``packs: [[pack id, stored size], ...]``; a packed reference is a run
``[plaintext size, pack number, offset]``: bytes ``offset .. offset + size`` of that pack's
plaintext, one or more chunks stored one after the other (a writer packs a stream's new chunks in
stream order, so a full backup is a few runs, an incremental about two per changed place). A run
does not repeat the chunks' ids: the pack is authenticated as a whole, and the stream's digest
covers the order; the ids live once per pack, in its index (``pipeline.ChunkWriter``), for the
dedup of later backups. (Ids in every manifest cost about 5% of the full's size for each
incremental of a small database.) A manifest without packs is still written as format 1, which
every version reads.
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

MANIFEST_FORMAT = 2
"""The newest format this version reads and writes (1: no packs; 2: packs)."""


@dataclass(frozen=True, slots=True)  # slots: a packed 1 GiB database has ~370,000 of them
class ChunkRef:
    id: str
    size: int
    """Plaintext bytes."""
    stored: int
    """Bytes of the stored (compressed, sealed) object; 0 for a packed chunk (its pack's size is
    in the stream entry's ``packs``)."""
    pack: str | None = None
    """The pack holding the chunk, or None: the chunk is an object of its own."""
    offset: int = 0
    """Where the chunk starts in its pack's plaintext."""


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
    chunk_size: int | None = None
    """The average chunk size the stream was cut with, when its generation chose one (packed
    generations); None: the repository's (``repo.json``)."""
    packs: dict[str, int] = field(default_factory=dict)
    """Stored bytes of each pack the chunks refer to, in the order the manifest numbers them."""
    count: int | None = None
    """How many chunks the stream was cut into, when ``chunks`` holds runs (packed), else None."""

    @property
    def chunk_count(self) -> int:
        return len(self.chunks) if self.count is None else self.count

    def to_dict(self) -> dict[str, Any]:
        number = {p: i for i, p in enumerate(self.packs)}
        chunks: list[list[Any]] = []
        run: list[Any] | None = None  # the open run of a packed stream: [size, pack number, offset]
        for c in self.chunks:
            if c.pack is None:
                chunks.append([c.id, c.size, c.stored])
                run = None
            elif run is not None and run[1] == number[c.pack] and run[2] + run[0] == c.offset:
                run[0] += c.size  # the next bytes of the same pack: the same run
            else:
                run = [c.size, number[c.pack], c.offset]
                chunks.append(run)
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "size": self.size,
            "digest": self.digest,
            "chunks": chunks,
        }
        if self.chunk_size is not None:
            out["chunking"] = {"avg_size": self.chunk_size}
        if self.packs:
            out["packs"] = [[p, n] for p, n in self.packs.items()]
            out["chunk_count"] = self.chunk_count
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StreamEntry:
        chunking = raw.get("chunking")
        packs = [(str(p), int(n)) for p, n in raw.get("packs") or []]
        chunks = []
        for c in raw["chunks"]:
            if isinstance(c[0], str):
                chunks.append(ChunkRef(str(c[0]), int(c[1]), int(c[2])))
            else:  # packed: [size, pack number, offset]; the id is in the pack's index
                chunks.append(ChunkRef("", int(c[0]), 0, packs[int(c[1])][0], int(c[2])))
        return cls(
            name=str(raw["name"]),
            type=str(raw["type"]),
            size=int(raw["size"]),
            digest=str(raw["digest"]),
            chunks=chunks,
            chunk_size=int(chunking["avg_size"]) if isinstance(chunking, dict) else None,
            packs=dict(packs),
            count=int(raw["chunk_count"]) if "chunk_count" in raw else None,
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

    def packed(self) -> bool:
        return any(s.packs for s in self.streams)

    def pack_sizes(self) -> dict[str, int]:
        """Stored bytes of every pack the backup refers to."""
        return {p: n for s in self.streams for p, n in s.packs.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT if self.packed() else 1,  # readable by older versions when it can be
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
