"""Streaming pipelines between byte streams and repository chunks, with bounded memory.

Backup: source stream -> chunker -> [thread pool: keyed hash -> (dedup) -> compress -> encrypt -> upload].
Restore: manifest chunk list -> parallel prefetch -> authenticate+decrypt -> decompress -> ordered
bytes, with the stream digest checked over them (on its own thread); ``verify`` also checks each
chunk's keyed hash (``ChunkReader.read_chunk``).

Memory is bounded by ``window`` chunks in flight (each at most the chunker's max size), whatever
the size of the stream; nothing is written to local disk.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import blake3
import structlog

from contentflow_backupd.errors import IntegrityError
from contentflow_backupd.observability.progress import advance as progress_advance
from contentflow_backupd.observability.progress import phase as progress_phase
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.chunker import Chunker, ChunkerParams
from contentflow_backupd.repository.manifest import ChunkRef, StreamEntry
from contentflow_backupd.repository.repository import Repository

log = structlog.get_logger(__name__)

FLUSH_INTERVAL = 0.25
"""Seconds between two background flushes of a writer (see ``ChunkWriter``)."""
PACK_BELOW = 256 * 1024
"""Streams cut into chunks smaller than this on average are packed (many chunks to an object)."""
PACK_TARGET = 4 * 1024 * 1024
"""A pack is sealed once it holds this many plaintext bytes."""
JOIN_BUFFER = PACK_TARGET + 1024 * 1024
"""A pack's plaintext is joined in a buffer this large (a pack ends with the chunk that reaches
``PACK_TARGET``: at most a maximum chunk, 1 MiB below ``PACK_BELOW``, more), reused by later packs."""
PROGRESS_STEP = 1024 * 1024
"""A packed stream reports its progress every this many bytes (not every chunk)."""
SEALS_IN_FLIGHT = 4
"""Packs being compressed, sealed and stored at once: each holds about three times its 4 MiB
(its chunks, the joined plaintext, the sealed object) until it is stored."""
READ_AHEAD_BYTES = 32 * 1024 * 1024
"""A reader prefetches at most this many bytes of a stream (a packed stream's runs reach 4 MiB
each), and at most ``2 x concurrency`` chunks or runs."""
PACKS_HELD = 6
"""Pack plaintexts a reader keeps for the runs that follow (an incremental's runs alternate
between its own packs and its full's)."""


class _OpenPack:
    """The pack being filled: chunks appended in the order their workers reach it."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(16)
        self.parts: list[bytes | memoryview] = []
        """The chunks' bytes: views of the chunker's buffers (kept alive, never written again),
        copied once, when the pack is sealed."""
        self.size = 0
        self.refs: list[ChunkRef] = []
        """The chunks in the pack, in order (its index is made from them when it is sealed)."""

    def index(self) -> list[list[Any]]:
        """``[chunk id, offset, size]`` of each chunk in the pack."""
        return [[r.id, r.offset, r.size] for r in self.refs]


def read_pack_index(repo: Repository, cluster: str, generation: str, pack_id: str) -> list[ChunkRef]:
    """The chunks a pack holds, from its index (authenticated like every object):
    ``IntegrityError`` when it is malformed."""
    key = layout.pack_index_key(cluster, generation, pack_id)
    try:
        rows = json.loads(repo.get_object(key))
        return [ChunkRef(str(c), int(n), 0, pack_id, int(o)) for c, o, n in rows]
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"pack index {key} is malformed: {exc}", key=key) from None


def stream_digest() -> blake3.blake3:
    """A fresh hasher of a stream's ``digest`` (a manifest's ``StreamEntry.digest``): ``update``
    it with the stream's bytes in order, then compare its ``hexdigest()``. The only place outside
    this module that needs the stream hash (``ops/verify/backups.py``) gets it here."""
    return blake3.blake3()


@dataclass
class WriteStats:
    chunks_total: int = 0
    chunks_new: int = 0
    stored_bytes: int = 0
    """Bytes this run added to storage."""


class ChunkWriter:
    """Writes streams of one backup into a generation, uploading only chunks it lacks.

    ``known`` maps chunk ids the generation already holds (from committed manifests) to their
    references, and ``known_packs`` the packs those refer to to their stored size. Chunks
    repeated within this backup are uploaded once.

    A stream whose generation chose a chunk size below ``PACK_BELOW`` (``write_stream``'s
    ``chunk_size``: a small database's logical generation) is packed: each chunk is hashed and
    placed on the calling thread in stream order (``_write_packed``), a new one appended to the
    open pack, and a pack is compressed and sealed as one object, with its index, by the pool,
    when it reaches ``PACK_TARGET`` bytes and at the end of the stream, before ``write_stream``
    returns.

    Otherwise only the boundaries are found on the calling thread (they depend on everything
    before them), with the stream digest; each chunk's keyed hash, the dedup decision,
    compression, encryption and upload run on a pool of ``concurrency`` threads (hashing and
    compression of chunks this large release the GIL, so they use every core). At most
    ``window`` chunks are in flight.

    Chunks are stored with ``sync=False``; while a stream is written, a background thread calls
    ``storage.flush()`` every ``flush_interval`` seconds, so that the fsyncs overlap the
    streaming (and the wait at the end of a physical backup) instead of all coming after it.
    That changes only when chunks become durable, not what counts: the caller still flushes once
    more before it writes the manifest (``Repository.write_manifest``), and a flush never
    returns before the objects put before it are durable, also while a background one runs.
    """

    def __init__(
        self,
        repo: Repository,
        cluster: str,
        generation: str,
        known: Mapping[str, ChunkRef],
        *,
        known_packs: Mapping[str, int] | None = None,
        concurrency: int = 8,
        window: int | None = None,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.repo = repo
        self.cluster = cluster
        self.generation = generation
        self._known: dict[str, ChunkRef] = dict(known)
        self._pack_sizes: dict[str, int] = dict(known_packs or {})
        self._pack: _OpenPack | None = None
        """The open pack of the stream being written, when it is packed."""
        self._claimed: set[str] = set()
        """Ids a worker of this writer is storing now (guarded by ``_lock``)."""
        self._lock = threading.Lock()
        self._spare_joins: list[bytearray] = []
        """Buffers of sealed packs, for the next ones (``_join``; guarded by ``_lock``)."""
        self._concurrency = max(1, concurrency)
        self._window = window or self._concurrency * 2
        self._flush_interval = flush_interval
        self.stats = WriteStats()

    def _store(self, data: bytes | memoryview) -> str:
        """On a pool thread: the chunk's id; stores the chunk unless the generation or another
        worker of this writer already has it."""
        cid = self.repo.chunk_id(data)
        with self._lock:
            if cid in self._known or cid in self._claimed:
                return cid
            self._claimed.add(cid)
        key = layout.chunk_key(self.cluster, self.generation, cid)
        stored = self.repo.put_object(key, data, sync=False)  # made durable before the manifest
        with self._lock:
            self._known[cid] = ChunkRef(cid, len(data), stored)
            self.stats.chunks_new += 1
            self.stats.stored_bytes += stored
        return cid

    def _join(self, pack: _OpenPack) -> bytearray:
        """A pack's chunks copied one after the other into a buffer of a previous seal when one
        is free (``_seal`` gives it back), else a new one. Why not ``b"".join``: a new 4 MiB
        object per pack is memory the process returns to the system and faults in again, page
        by page (about 90,000 page faults per 437 MB at 4 KiB chunks)."""
        with self._lock:
            joined = self._spare_joins.pop() if self._spare_joins else None
        if joined is None or len(joined) < pack.size:
            joined = bytearray(max(pack.size, JOIN_BUFFER))
        with memoryview(joined) as view:
            at = 0
            for part in pack.parts:
                end = at + len(part)
                view[at:end] = part
                at = end
        return joined

    def _seal(self, pack: _OpenPack) -> None:
        """Compress, seal and store a pack and its index (made durable before the manifest, as
        chunks are). The index lists ``[chunk id, offset, size]`` of each chunk in the pack: what a
        later backup of the generation dedups against (``read_pack_index``)."""
        key = layout.pack_key(self.cluster, self.generation, pack.id)
        joined = self._join(pack)
        try:
            with memoryview(joined) as view, view[: pack.size] as plaintext:
                stored = self.repo.put_object(key, plaintext, sync=False)
        finally:
            with self._lock:
                if len(self._spare_joins) < SEALS_IN_FLIGHT:
                    self._spare_joins.append(joined)
        index = json.dumps(pack.index(), separators=(",", ":")).encode()
        index_key = layout.pack_index_key(self.cluster, self.generation, pack.id)
        index_stored = self.repo.put_object(index_key, index, sync=False)
        with self._lock:
            self._pack_sizes[pack.id] = stored
            self.stats.stored_bytes += stored + index_stored

    def _flush_until(self, stop: threading.Event) -> None:
        """On the flush thread, until ``stop``. A failure here is not the backup's: what could not
        be made durable stays pending, and the flush before the manifest tries again and raises."""
        while not stop.wait(self._flush_interval):
            try:
                self.repo.storage.flush()
            except Exception as exc:  # noqa: BLE001 - see the docstring
                log.warning("background_flush_failed", error=str(exc))
                return

    def _write_unpacked(
        self,
        chunker: Chunker,
        stream: BinaryIO,
        digest: blake3.blake3,
        pool: ThreadPoolExecutor,
        progress: Callable[[int], None] | None,
    ) -> tuple[list[ChunkRef], int]:
        """Each chunk stored by the pool (``_store``), at most ``window`` in flight: the
        references in stream order, and the stream's size."""
        ids: list[Future[str]] = []
        in_flight: deque[Future[str]] = deque()
        size = 0
        try:
            for data in chunker.chunks(stream, digest):  # the digest on this thread
                size += len(data)
                progress_advance(len(data))
                self.stats.chunks_total += 1
                fut = pool.submit(self._store, data)
                ids.append(fut)
                in_flight.append(fut)
                while len(in_flight) >= self._window or (in_flight and in_flight[0].done()):
                    in_flight.popleft().result()
                if progress is not None:
                    progress(size)
            while in_flight:
                in_flight.popleft().result()
        except BaseException:
            for fut in in_flight:
                fut.cancel()
            raise
        return [self._known[fut.result()] for fut in ids], size

    def _write_packed(
        self,
        chunker: Chunker,
        stream: BinaryIO,
        digest: blake3.blake3,
        pool: ThreadPoolExecutor,
        progress: Callable[[int], None] | None,
    ) -> tuple[list[ChunkRef], int]:
        """A packed stream: each chunk's keyed hash and place (appended to the open pack unless
        the generation holds it already) on the calling thread, in stream order, so that a
        stream's chunks lie in its packs as in the stream (the manifest stores runs, not chunks;
        a restore reads packs in order). The pool only compresses and seals full packs, at most
        ``SEALS_IN_FLIGHT`` at once. The references in stream order, and the stream's size.

        Why the hash is not on the pool: a chunk this small is hashed in about 2 us, and BLAKE3
        holds the GIL for most of that, so pool threads added no parallelism, only a future per
        batch, a hand-over of every chunk and the threads' fight for the GIL (futex wake-ups):
        about 1.2 CPU-s per GB at 4 KiB chunks (bench/README.md). Per chunk, this loop does
        only what it must."""
        hasher = self.repo.chunk_hasher()
        known = self._known
        placed: list[ChunkRef] = []
        place = placed.append
        seals: deque[Future[None]] = deque()  # packs being sealed: at most SEALS_IN_FLIGHT (memory)
        pack = self._pack = _OpenPack()
        pack_id, at, add_part, add_ref = pack.id, 0, pack.parts.append, pack.refs.append
        size = new = reported = 0
        try:
            for data in chunker.chunks(stream, digest):  # the digest on this thread
                n = len(data)
                cid = hasher(data).hexdigest()
                ref = known.get(cid)
                if ref is None:
                    ref = known[cid] = ChunkRef(cid, n, 0, pack_id, at)
                    add_part(data)
                    add_ref(ref)
                    at += n
                    new += 1
                    if at >= PACK_TARGET:
                        pack.size = at
                        seals.append(pool.submit(self._seal, pack))
                        pack = self._pack = _OpenPack()
                        pack_id, at, add_part, add_ref = pack.id, 0, pack.parts.append, pack.refs.append
                        while len(seals) > SEALS_IN_FLIGHT or (seals and seals[0].done()):
                            seals.popleft().result()
                place(ref)
                size += n
                if size - reported >= PROGRESS_STEP:
                    progress_advance(size - reported)
                    reported = size
                    if progress is not None:
                        progress(size)
            if size > reported:
                progress_advance(size - reported)
                if progress is not None:
                    progress(size)
            if pack.parts:
                pack.size = at
                seals.append(pool.submit(self._seal, pack))
            self._pack = None
            while seals:
                seals.popleft().result()
        except BaseException:
            for seal in seals:
                seal.cancel()
            raise
        finally:
            with self._lock:
                self.stats.chunks_total += len(placed)
                self.stats.chunks_new += new
        return placed, size

    def write_stream(
        self,
        name: str,
        type_: str,
        stream: BinaryIO,
        *,
        progress: Callable[[int], None] | None = None,
        chunk_size: int | None = None,
    ) -> StreamEntry:
        """Store ``stream``; ``chunk_size``: its average chunk size, when its generation chose one
        (else the repository's); a chosen size below ``PACK_BELOW`` packs the stream."""
        params = self.repo.config.chunker if chunk_size is None else ChunkerParams(avg_size=chunk_size)
        chunker = Chunker(params)
        packed = chunk_size is not None and chunk_size < PACK_BELOW  # the setting's sizes: as before
        digest = blake3.blake3()
        stop_flushing = threading.Event()
        flusher = threading.Thread(target=self._flush_until, args=(stop_flushing,), name="flush", daemon=True)
        flusher.start()
        try:
            with ThreadPoolExecutor(self._concurrency, thread_name_prefix="upload") as pool:
                if packed:
                    chunks, size = self._write_packed(chunker, stream, digest, pool, progress)
                else:
                    chunks, size = self._write_unpacked(chunker, stream, digest, pool, progress)
        finally:
            self._claimed.clear()  # the pool is done: what was stored is in _known
            self._pack = None
            stop_flushing.set()
            flusher.join()
        packs = {c.pack: self._pack_sizes[c.pack] for c in chunks if c.pack is not None}
        return StreamEntry(
            name=name,
            type=type_,
            size=size,
            digest=digest.hexdigest(),
            chunks=chunks,
            chunk_size=chunk_size,
            packs=packs,
        )


class _PackSlot:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: memoryview | None = None


class ChunkReader:
    """Reads chunks back in order with parallel prefetch, authenticating each one."""

    def __init__(self, repo: Repository, cluster: str, generation: str, *, concurrency: int = 8) -> None:
        self.repo = repo
        self.cluster = cluster
        self.generation = generation
        self._concurrency = max(1, concurrency)
        self._packs: OrderedDict[str, _PackSlot] = OrderedDict()
        self._packs_lock = threading.Lock()
        self._packs_held = PACKS_HELD

    def key_of(self, ref: ChunkRef) -> str:
        """The object holding ``ref``: the chunk's own, or its pack."""
        return layout.object_key(self.cluster, self.generation, ref)

    def read_chunk(self, ref: ChunkRef) -> bytes:
        """Fetch, open and check one chunk: ``IntegrityError`` names the object on any fault,
        including a validly sealed object whose plaintext is not the chunk its id names (the
        keyed hash is computed again: what ``verify`` needs, one object at a time). A run of a
        pack read from a manifest names no id: its pack is authenticated whole, and the stream's
        digest proves the order."""
        data = self._open_chunk(ref)
        if ref.pack is None and self.repo.chunk_id(data) != ref.id:  # (a packed one: _open_chunk)
            key = self.key_of(ref)
            raise IntegrityError(f"object {key} does not hold the data its id names", key=key)
        return data

    def _open_chunk(self, ref: ChunkRef) -> bytes:
        """Fetch and open one chunk (AES-GCM authenticates it under its own key name, so an
        altered, truncated, swapped or renamed object fails here) and check its length."""
        key = self.key_of(ref)
        if ref.pack is not None:
            # The pack is authenticated whole; a reference read from a manifest has no id (the
            # stream's digest checks the order), one from this process or an index does.
            piece = self._pack_plaintext(ref.pack, key)[ref.offset : ref.offset + ref.size]
            if len(piece) != ref.size or (ref.id and self.repo.chunk_id(piece) != ref.id):
                raise IntegrityError(
                    f"pack {key} does not hold chunk {ref.id or ref.size} at offset {ref.offset}", key=key
                )
            return bytes(piece)
        data = self.repo.get_object(key)
        if len(data) != ref.size:
            raise IntegrityError(f"object {key} does not hold the data its id names", key=key)
        return data

    def _pack_plaintext(self, pack: str, key: str) -> memoryview:
        """A pack's plaintext, fetched once by the first reader that needs it (the others wait),
        and kept while it is one of the last ``PACKS_HELD`` packs used."""
        with self._packs_lock:
            slot = self._packs.get(pack)
            if slot is None:
                slot = self._packs[pack] = _PackSlot()
                while len(self._packs) > self._packs_held:
                    self._packs.popitem(last=False)
            else:
                self._packs.move_to_end(pack)
        with slot.lock:
            if slot.data is None:
                slot.data = memoryview(self.repo.get_object(key))
            return slot.data

    def iter_stream(self, entry: StreamEntry, *, manifest_key: str = "") -> Iterator[bytes]:
        """The stream's bytes, chunk by chunk, in order; checks the stream digest at the end.

        Every chunk is authenticated when it is opened (AES-GCM, bound to its key name and the
        repository), and the digest of the whole stream, from the authenticated manifest, is
        compared once the last byte went by. Together they prove every byte, so the keyed id of
        each chunk is not computed again here (``read_chunk`` does, for ``verify``): that would
        hash the whole stream a second time. A chunk sealed with the right key but holding other
        data (only a writer's bug could make one) fails the digest, so the stream still fails,
        at its end; ``verify`` then names the object.

        The digest is updated on a thread of its own (BLAKE3 releases the GIL), in stream order,
        so that the consumer of the chunks does not wait for it."""
        window = self._concurrency * 2
        digest = blake3.blake3()
        progress_phase("restoring", total=entry.size)
        with (
            ThreadPoolExecutor(self._concurrency, thread_name_prefix="fetch") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="digest") as hasher,
        ):
            pending: deque[tuple[Future[bytes], int]] = deque()
            ahead = 0  # bytes pending
            hashing: deque[Future[object]] = deque()
            refs = iter(entry.chunks)
            nxt = next(refs, None)
            try:
                while True:
                    while nxt is not None and (
                        not pending or (len(pending) < window and ahead + nxt.size <= READ_AHEAD_BYTES)
                    ):
                        pending.append((pool.submit(self._open_chunk, nxt), nxt.size))
                        ahead += nxt.size
                        nxt = next(refs, None)
                    if not pending:
                        break
                    fut, n = pending.popleft()
                    data = fut.result()
                    ahead -= n
                    hashing.append(hasher.submit(digest.update, data))  # one thread: in order
                    while len(hashing) > window or (hashing and hashing[0].done()):
                        hashing.popleft().result()
                    progress_advance(len(data))
                    yield data
                while hashing:
                    hashing.popleft().result()
            finally:
                for fut, _n in pending:
                    fut.cancel()
                for done in hashing:
                    done.cancel()
        if digest.hexdigest() != entry.digest:
            raise IntegrityError(
                f"stream {entry.name} of {manifest_key or 'the backup'} does not match its digest",
                key=manifest_key,
                hint="`contentflow-backupd verify` names the object that holds other data",
            )
