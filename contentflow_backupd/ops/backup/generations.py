"""Which generation a new backup belongs to, and which chunks that generation already holds.

Storage is the truth: backup ids sort by time and name their kind, so the newest full backup is
found by listing manifest keys; its generation's chunk set comes from the committed manifests of
that generation (uncommitted chunks of crashed backups are never trusted: they are uploaded again).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import BackupKind
from contentflow_backupd.repository.manifest import ChunkRef
from contentflow_backupd.repository.pipeline import read_pack_index
from contentflow_backupd.repository.repository import Repository

log = structlog.get_logger(__name__)


@dataclass
class GenerationPlan:
    kind: BackupKind
    generation: str | None
    """None for a full backup: it starts a generation named after its own id."""
    parent_id: str | None
    known_chunks: dict[str, ChunkRef] = field(default_factory=dict)
    known_packs: dict[str, int] = field(default_factory=dict)
    """Stored bytes of the packs ``known_chunks`` refer to."""
    chunk_size: int | None = None
    """The generation's chunk size, from its full backup (None: the repository's); an
    incremental must cut its stream as the full did to dedup against it."""
    note: str | None = None


def plan_generation(repo: Repository, cluster: str, kind: BackupKind, mode: str) -> GenerationPlan:
    if kind == "full":
        return GenerationPlan(kind="full", generation=None, parent_id=None)
    ids = list(repo.iter_backup_ids(cluster))
    fulls = [i for i in ids if "-full-" in i]
    newest_full: str | None = None
    for candidate in reversed(fulls):
        try:
            manifest = repo.read_manifest(cluster, candidate)
        except BackupdError as exc:
            log.warning("full_backup_unreadable", backup_id=candidate, error=str(exc))
            continue
        if manifest.mode == mode:
            newest_full = candidate
            break
    if newest_full is None:
        return GenerationPlan(
            kind="full",
            generation=None,
            parent_id=None,
            note=f"no {mode} full backup in the repository: taking a full backup instead",
        )
    known: dict[str, ChunkRef] = {}
    packs: dict[str, int] = {}
    chunk_size: int | None = None
    parent = newest_full
    for bid in ids:
        if bid < newest_full:
            continue
        try:
            manifest = repo.read_manifest(cluster, bid)
        except BackupdError as exc:
            log.warning("backup_unreadable", backup_id=bid, error=str(exc))
            continue
        if manifest.generation != newest_full or manifest.mode != mode:
            continue
        parent = bid
        if bid == newest_full:
            chunk_size = next((s.chunk_size for s in manifest.streams if s.chunk_size), None)
        for ref in manifest.chunk_refs():
            if ref.pack is None:
                known[ref.id] = ref
        packs.update(manifest.pack_sizes())
    for pack in packs:  # packed chunks: their ids are in their packs' indexes
        try:
            for ref in read_pack_index(repo, cluster, newest_full, pack):
                known.setdefault(ref.id, ref)
        except BackupdError as exc:  # its chunks are stored again: never a reason to fail
            log.warning("pack_index_unreadable", pack=pack, error=str(exc))
    return GenerationPlan(
        kind="incremental",
        generation=newest_full,
        parent_id=parent,
        known_chunks=known,
        known_packs=packs,
        chunk_size=chunk_size,
    )


CHUNKS_PER_STREAM = 262144
"""A logical generation's chunk size is its database's size over this, as a power of two from
1 KiB up to the repository's size: 29 MB gets 1 KiB chunks, 571 MB 2 KiB, 1 GiB 4 KiB, 275 GB
the repository's 1 MiB. Measured on the realistic dataset with a 1% change spread over the heaps
(bench/README.md): 29 MB stores 7.8% of the full with 1 KiB chunks (56% with 1 MiB); the dump of
571 MB changes 7.0% of its bytes in 2 KiB chunks, 9.5% in 4 KiB, 11.7% in 8 KiB, 17% in 32 KiB
and 29% in 1 MiB; the 1145 MB database's incremental stores 9.98% of its full with 4 KiB chunks
(12.5% with 8 KiB, the size the divisor 131,072 gave it). Smaller chunks cost CPU per chunk (a
keyed hash, a place in a pack), so the size grows with the database; since packed chunks are
hashed on the calling thread and packs reuse their memory, 4 KiB costs about what 8 KiB did."""


def generation_chunk_size(database_size: int | None, repository_avg: int) -> int | None:
    """The average chunk size a logical full backup chooses for its generation, from the
    database's size over ``CHUNKS_PER_STREAM``, a power of two from 1 KiB up; None (the
    repository's own size, one object per chunk, as before) when that is not smaller.

    Why: rows a day's writes touch land all over a table's heap, and so all over the dump; with a
    ~29 MB database, a 1% change touched 11 of 24 chunks of 1 MiB (47% stored again) but only 7%
    of the bytes in 1 KiB chunks (bench/README.md, ``bench/chunk_sizes.py``). Chunks that small
    are stored many to an object (packs, ``repository/pipeline.py``)."""
    if not database_size or database_size <= 0:
        return None
    target = max(1024, database_size // CHUNKS_PER_STREAM)
    size = 1 << (target.bit_length() - 1)  # the power of two at or below
    return size if size < repository_avg else None
