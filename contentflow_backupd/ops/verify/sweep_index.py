"""What continuous verification knows about a cluster's objects: one listing plus every manifest.

``ClusterIndex`` answers, for any key under ``<cluster>/``, which committed backups need it
(``needed_by``), which referenced objects are missing or have the wrong stored size
(``referenced_problems``, from the listing alone), and how to read one object back and prove it
is what was written (``check_object``).

Which backups need an object:

- a manifest: its own backup;
- a chunk: every backup whose manifest names it (retention keeps whole generations, so a chunk
  that only expired backups used may remain; no kept backup needs it); a pack: every backup that
  names a chunk in it;
- a WAL file: every physical backup whose ``wal_first`` sorts at or before it (the WAL a backup
  needs to become consistent and to roll forward); a ``.history`` file: every physical backup.
  A WAL file that is gone from the repository is needed only when it lies inside a backup's
  consistency range (outside it, retention removes old WAL by age);
- ``identity.json``: the WAL archive itself (no backup id);
- anything else: nothing.

While a manifest is unreadable, its chunks and WAL are unknown: every chunk and WAL file counts
as needed by that backup (as retention keeps them too).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

import structlog

from contentflow_backupd.errors import (
    BackupdError,
    BackupNotFound,
    IntegrityError,
    ObjectNotFound,
    StorageError,
)
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.manifest import ChunkRef, Manifest
from contentflow_backupd.repository.pipeline import ChunkReader, read_pack_index
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive, read_segment_header
from contentflow_backupd.storage.base import ObjectInfo
from contentflow_backupd.wal import DEFAULT_SEGMENT_SIZE, Segment, classify, parse_segment, timeline_of

log = structlog.get_logger(__name__)

IDENTITY = "identity.json"
CONSISTENCY = "WAL needed for consistency"


def is_fault(exc: BaseException) -> bool:
    """Whether ``exc`` says something about the object (missing, damaged, unreadable), rather
    than about reaching the storage (unavailable, access denied), which aborts a run instead."""
    if isinstance(exc, ObjectNotFound):
        return True
    return isinstance(exc, Exception) and not isinstance(exc, StorageError)


def describe(exc: BaseException) -> str:
    """A fault as one line: ``missing``, our own message, or the exception's type and text."""
    if isinstance(exc, ObjectNotFound):
        return "missing"
    if isinstance(exc, BackupdError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


@dataclass
class ClusterIndex:
    cluster: str
    listing: dict[str, ObjectInfo]
    """Every object under ``<cluster>/``, in key order."""
    manifests: dict[str, Manifest] = field(default_factory=dict)
    """Readable manifests by backup id, oldest first."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """Backup id -> why its manifest could not be read."""
    chunk_users: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    chunk_refs: dict[str, dict[str, ChunkRef]] = field(default_factory=lambda: defaultdict(dict))
    """Object key (a chunk's, or a pack's) -> the chunks manifests name in it, by id."""
    object_stored: dict[str, int] = field(default_factory=dict)
    """Object key -> its stored size, as the manifests say."""
    consistency: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    """WAL key -> backups that need it to become consistent."""
    wal_starts: list[tuple[str, str]] = field(default_factory=list)
    """(wal_first, backup id) of every readable physical backup."""
    manifest_problems: dict[str, str] = field(default_factory=dict)
    """Manifest key -> what is wrong with it."""
    system_identifier: str | None = None
    """From ``identity.json`` when it reads fine: WAL segments must carry it."""

    @property
    def manifest_keys(self) -> set[str]:
        return {k for k in self.listing if layout.backup_id_from_manifest_key(self.cluster, k)}

    def needed_by(self, key: str) -> tuple[bool, tuple[str, ...]]:
        """Whether some committed backup (or the WAL archive) needs ``key``, and which backups."""
        prefix = f"{self.cluster}/"
        rest = key[len(prefix) :] if key.startswith(prefix) else ""
        bid = layout.backup_id_from_manifest_key(self.cluster, key)
        held = tuple(sorted(self.unreadable))
        if bid is not None:
            return key in self.listing, (bid,) if key in self.listing else ()
        if rest == IDENTITY:
            return key in self.listing, ()
        if rest.startswith("chunks/"):
            users = tuple(sorted(self.chunk_users.get(key, ())))
            return bool(users or held), users or held
        if rest.startswith("wal/"):
            return self._wal_needed_by(key, held)
        return False, ()

    def _wal_needed_by(self, key: str, held: tuple[str, ...]) -> tuple[bool, tuple[str, ...]]:
        name = key.rsplit("/", 1)[-1]
        kind = classify(name)
        if kind is None:
            return False, ()
        required = self.consistency.get(key, set())
        if key not in self.listing:
            ids = tuple(sorted(required))
            return bool(ids), ids
        if kind == "history":
            users = {b for _first, b in self.wal_starts}
        else:
            users = {b for first, b in self.wal_starts if first <= name[:24]} | required
        ids = tuple(sorted(users | set(held)))
        return bool(ids), ids

    def backup_keys(self, backup_id: str) -> list[str]:
        """The chunk and consistency-WAL keys of a readable backup, each once, in key order."""
        m = self.manifests[backup_id]
        keys = {layout.object_key(self.cluster, m.generation, r) for r in m.chunk_refs()}
        keys |= {k for k, users in self.consistency.items() if backup_id in users}
        return sorted(keys)

    def referenced_problems(self) -> dict[str, str]:
        """Problems seen from the listing alone: unreadable manifests, and objects a manifest
        names that are missing or have another stored size than the manifest says."""
        problems = dict(self.manifest_problems)
        for key, stored in self.object_stored.items():
            info = self.listing.get(key)
            if info is None:
                problems.setdefault(key, "missing")
            elif info.size != stored:
                problems.setdefault(key, f"size {info.size}, expected {stored}")
        for key in self.consistency:
            if key not in self.listing:
                problems.setdefault(key, f"{CONSISTENCY}: missing")
        return problems


def build_index(repo: Repository, cluster: str) -> ClusterIndex:
    """List ``<cluster>/`` once and read (authenticate) every manifest in it."""
    prefix = f"{layout.check_cluster(cluster)}/"
    index = ClusterIndex(cluster, {info.key: info for info in repo.storage.list(prefix)})
    for key in sorted(index.manifest_keys):
        bid = layout.backup_id_from_manifest_key(cluster, key)
        assert bid is not None
        try:
            m = repo.read_manifest(cluster, bid)
        except BackupNotFound:
            del index.listing[key]  # deleted since the listing (retention): not a backup any more
            continue
        except BackupdError as exc:
            if not is_fault(exc):
                raise
            index.unreadable[bid] = exc.message
            index.manifest_problems[key] = f"manifest unreadable: {exc.message}"
            log.error("manifest_unreadable", backup_id=bid, key=key, error=exc.message)
            continue
        index.manifests[bid] = m
        packs = m.pack_sizes()
        for ref in m.chunk_refs():
            ckey = layout.object_key(cluster, m.generation, ref)
            index.chunk_users[ckey].add(bid)
            index.chunk_refs[ckey][ref.id or f"{ref.offset}+{ref.size}"] = ref
            index.object_stored[ckey] = ref.stored if ref.pack is None else packs.get(ref.pack, -1)
        if m.mode == "physical":
            _add_wal_needs(index, repo, m, key)
    if f"{prefix}{IDENTITY}" in index.listing:
        index.system_identifier = _identity(repo, cluster)
    return index


def _add_wal_needs(index: ClusterIndex, repo: Repository, m: Manifest, manifest_key: str) -> None:
    first, last = m.details.get("wal_first"), m.details.get("wal_last")
    if not isinstance(first, str) or not isinstance(last, str) or not first or not last:
        index.manifest_problems[manifest_key] = "manifest names no WAL range"
        return
    size = int(m.details.get("wal_segment_size", DEFAULT_SEGMENT_SIZE))
    archive = WalArchive(repo, m.cluster)
    start, end = parse_segment(first, size), parse_segment(last, size)
    for number in range(start.number, end.number + 1):
        index.consistency[archive.key(Segment(start.timeline, number).name(size))].add(m.id)
    index.wal_starts.append((first, m.id))


def check_object(repo: Repository, index: ClusterIndex, key: str) -> int:
    """Read ``key`` back and prove it: authenticated (AES-GCM with its own key name), decompressed,
    and for a chunk its keyed hash equal to its id (and its size to the manifest's), for a WAL
    segment a segment header of this cluster with the right size, for a manifest a manifest of
    its own backup. Returns the stored bytes read; raises ``BackupdError`` (``ObjectNotFound``
    when missing) naming the fault."""
    rest = key[len(index.cluster) + 1 :]
    bid = layout.backup_id_from_manifest_key(index.cluster, key)
    if bid is not None:
        repo.read_manifest(index.cluster, bid)
    elif rest.startswith("chunks/"):
        _check_chunk(repo, index, key)
    elif rest.startswith("wal/"):
        _check_wal(repo, index, key, repo.get_object(key))
    elif rest == IDENTITY:
        try:
            json.loads(repo.get_object(key))
        except ValueError:
            raise IntegrityError(f"object {key} is not valid JSON", key=key) from None
    else:
        repo.get_object(key)
    info = index.listing.get(key)
    return info.size if info is not None else 0


def _check_chunk(repo: Repository, index: ClusterIndex, key: str) -> None:
    parts = key.split("/")
    packed = len(parts) == 5 and parts[3] == layout.PACKS_DIR  # <cluster>/chunks/<gen>/packs/<id>
    if packed and parts[4].endswith(layout.PACK_INDEX):
        _check_pack_index(repo, index, parts[2], parts[4].removesuffix(layout.PACK_INDEX))
        return
    refs = index.chunk_refs.get(key)
    if refs and len(parts) == 5:
        reader = ChunkReader(repo, index.cluster, parts[2], concurrency=1)
        for ref in refs.values():  # a pack: fetched once, every chunk a manifest names in it checked
            reader.read_chunk(ref)
        return
    data = repo.get_object(key)
    if packed:
        return  # a pack no manifest names (a backup that failed): authenticated is all we know
    if repo.chunk_id(data) != parts[-1]:
        raise IntegrityError(f"object {key} does not hold the data its id names", key=key)


def _check_pack_index(repo: Repository, index: ClusterIndex, generation: str, pack: str) -> None:
    """A pack's index: authenticated, well formed, and every chunk it lists is in the pack with
    that id (what later backups dedup against must be true)."""
    reader = ChunkReader(repo, index.cluster, generation, concurrency=1)
    for ref in read_pack_index(repo, index.cluster, generation, pack):
        try:
            reader.read_chunk(ref)
        except IntegrityError as exc:
            key = layout.pack_index_key(index.cluster, generation, pack)
            problem = f"pack index {key} does not match its pack: {exc.message}"
            raise IntegrityError(problem, key=key) from None


def _check_wal(repo: Repository, index: ClusterIndex, key: str, data: bytes) -> None:
    name = key.rsplit("/", 1)[-1]
    kind = classify(name)
    if kind not in ("segment", "partial"):
        return  # history and backup-label files: authenticated and decompressed is all we know
    header = read_segment_header(data)
    if header is None:
        raise IntegrityError(f"WAL file {key} does not start with a segment header", key=key)
    if kind == "segment" and len(data) != header.segment_size:
        raise IntegrityError(
            f"WAL segment {key} is {len(data)} bytes, its header says {header.segment_size}", key=key
        )
    if kind == "segment" and header.timeline > timeline_of(name):
        raise IntegrityError(f"WAL segment {key} holds WAL of a newer timeline ({header.timeline})", key=key)
    identity = index.system_identifier
    if identity is not None and str(header.system_identifier) != identity:
        raise IntegrityError(
            f"WAL file {key} is from PostgreSQL system {header.system_identifier}, not {identity}", key=key
        )


def _identity(repo: Repository, cluster: str) -> str | None:
    try:
        ident = WalArchive(repo, cluster).identity()
    except (BackupdError, ValueError, KeyError):
        return None  # a damaged identity.json is reported as its own object
    return ident.system_identifier if ident is not None else None
