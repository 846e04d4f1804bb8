"""Native incremental physical backups (PostgreSQL 17+): which method an incremental uses, and
the chains they form.

A physical incremental is one of two kinds, recorded as ``incremental_method`` in its manifest's
details (and so in the catalog):

- ``chunks``: a whole ``pg_basebackup`` whose stream is deduplicated against its generation's
  chunks. It stands alone: restoring it needs no other backup.
- ``native``: ``pg_basebackup --incremental=<the previous backup's backup_manifest>``: the
  server reads and sends only the blocks changed since the previous backup (it needs
  ``summarize_wal = on``). It is useless without its parents: restore rebuilds the data directory
  with ``pg_combinebackup`` from its chain, the newest backup before it that is not native (a full
  or a ``chunks`` incremental) followed by each native incremental in order.

Every physical backup stores PostgreSQL's ``backup_manifest`` as a second stream
(:data:`MANIFEST_STREAM`), so the next incremental can name it.
"""

from __future__ import annotations

import io
from typing import Literal

from contentflow_backupd.errors import BackupdError, IntegrityError
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.manifest import Manifest, StreamEntry
from contentflow_backupd.repository.pipeline import ChunkReader, ChunkWriter
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.source.base import PhysicalSource
from contentflow_backupd.wal import parse_lsn

IncrementalMethod = Literal["native", "chunks"]

MANIFEST_STREAM = "backup_manifest"
MANIFEST_TYPE = "pg_basebackup-manifest"
NATIVE_MIN_MAJOR = 17


def incremental_method(m: Manifest) -> IncrementalMethod | None:
    """``native`` or ``chunks`` for an incremental (older manifests: ``chunks``); None for a full."""
    if m.kind != "incremental":
        return None
    return "native" if m.details.get("incremental_method") == "native" else "chunks"


def is_native(m: Manifest) -> bool:
    return incremental_method(m) == "native"


def store_backup_manifest(writer: ChunkWriter, raw: bytes) -> StreamEntry:
    return writer.write_stream(MANIFEST_STREAM, MANIFEST_TYPE, io.BytesIO(raw))


def read_backup_manifest(repo: Repository, m: Manifest) -> bytes | None:
    """The ``backup_manifest`` stored with ``m``; None when it has none (taken before native
    incrementals, or logical)."""
    entry = next((s for s in m.streams if s.type == MANIFEST_TYPE), None)
    if entry is None:
        return None
    reader = ChunkReader(repo, m.cluster, m.generation)
    return b"".join(reader.iter_stream(entry, manifest_key=layout.manifest_key(m.cluster, m.id)))


def native_base(
    repo: Repository, cluster: str, parent_id: str | None, source: PhysicalSource, server_major: int
) -> tuple[bytes | None, str]:
    """The previous backup's ``backup_manifest`` when the next incremental can be native, else
    None and why not (for the log and the backup's details)."""
    if server_major < NATIVE_MIN_MAJOR:
        return None, (
            f"the server is PostgreSQL {server_major}: native incremental backups need PostgreSQL "
            f"{NATIVE_MIN_MAJOR} or newer"
        )
    if parent_id is None:
        return None, "there is no previous physical backup to build on"
    try:
        parent = repo.read_manifest(cluster, parent_id)
    except BackupdError as exc:
        return None, f"the previous backup {parent_id} cannot be read ({exc.message})"
    parent_major = int(parent.details.get("pg_version_num", 0)) // 10000
    if parent_major != server_major:
        return None, (
            f"the previous backup {parent_id} is of PostgreSQL {parent_major}, the server is {server_major}"
        )
    start, timeline = parent.details.get("start_lsn"), parent.details.get("timeline")
    if not isinstance(start, str) or timeline is None:
        return None, f"the previous backup {parent_id} records no start position"
    why = source.native_incremental_blocker(parse_lsn(start), int(timeline))
    if why is not None:
        return None, why
    raw = read_backup_manifest(repo, parent)
    if raw is None:
        return None, (
            f"the previous backup {parent_id} has no stored backup_manifest (taken by an older version); "
            "the next incremental can be native"
        )
    return raw, f"based on {parent_id}"


def native_chain(repo: Repository, m: Manifest) -> list[Manifest]:
    """The backups ``pg_combinebackup`` needs to rebuild ``m``, oldest first: ``[m]`` for a backup
    that is not native. ``IntegrityError`` names a link that is missing or unreadable."""
    chain = [m]
    while is_native(chain[0]):
        child = chain[0]
        if child.parent_id is None:
            raise IntegrityError(
                f"native incremental backup {child.id} names no parent backup",
                key=layout.manifest_key(child.cluster, child.id),
            )
        key = layout.manifest_key(child.cluster, child.parent_id)
        try:
            chain.insert(0, repo.read_manifest(child.cluster, child.parent_id))
        except BackupdError as exc:
            raise IntegrityError(
                f"backup {m.id} is a native incremental; its chain needs backup {child.parent_id}, which "
                f"cannot be read: {exc.message}",
                key=key,
                hint="restore an older backup (one that is not part of this chain)",
            ) from None
    return chain
