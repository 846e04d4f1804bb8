"""Streaming pipelines between byte streams and repository chunks, with bounded memory.

Backup: source stream -> chunker -> [thread pool: keyed hash -> (dedup) -> compress -> encrypt -> upload].
Restore: manifest chunk list -> parallel prefetch -> authenticate+decrypt -> decompress -> ordered
bytes, with the stream digest checked over them (on its own thread); ``verify`` also checks each
chunk's keyed hash (``ChunkReader.read_chunk``).

Memory is bounded by ``window`` chunks in flight (each at most the chunker's max size), whatever
the size of the stream; nothing is written to local disk.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import blake3
import structlog

from contentflow_backupd.errors import IntegrityError
from contentflow_backupd.observability.progress import advance as progress_advance
from contentflow_backupd.observability.progress import phase as progress_phase
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.chunker import Chunker
from contentflow_backupd.repository.manifest import ChunkRef, StreamEntry
from contentflow_backupd.repository.repository import Repository

log = structlog.get_logger(__name__)

FLUSH_INTERVAL = 0.25
"""Seconds between two background flushes of a writer (see ``ChunkWriter``)."""


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
    stored size. Chunks repeated within this backup are uploaded once.

    Only the boundaries are found on the calling thread (they depend on everything before them),
    with the stream digest; each chunk's keyed hash, the dedup decision, compression, encryption
    and upload run on a pool of ``concurrency`` threads (hashing and compression release the GIL,
    so they use every core). At most ``window`` chunks are in flight.

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
        known: Mapping[str, int],
        *,
        concurrency: int = 8,
        window: int | None = None,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.repo = repo
        self.cluster = cluster
        self.generation = generation
        self._known: dict[str, int] = dict(known)
        self._claimed: set[str] = set()
        """Ids a worker of this writer is storing now (guarded by ``_lock``)."""
        self._lock = threading.Lock()
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
            self._known[cid] = stored
            self.stats.chunks_new += 1
            self.stats.stored_bytes += stored
        return cid

    def _flush_until(self, stop: threading.Event) -> None:
        """On the flush thread, until ``stop``. A failure here is not the backup's: what could not
        be made durable stays pending, and the flush before the manifest tries again and raises."""
        while not stop.wait(self._flush_interval):
            try:
                self.repo.storage.flush()
            except Exception as exc:  # noqa: BLE001 - see the docstring
                log.warning("background_flush_failed", error=str(exc))
                return

    def write_stream(
        self,
        name: str,
        type_: str,
        stream: BinaryIO,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> StreamEntry:
        chunker = Chunker(self.repo.config.chunker)
        digest = blake3.blake3()
        refs: list[tuple[Future[str], int]] = []  # each chunk's id (to come) and length
        size = 0
        in_flight: deque[Future[str]] = deque()
        stop_flushing = threading.Event()
        flusher = threading.Thread(target=self._flush_until, args=(stop_flushing,), name="flush", daemon=True)
        flusher.start()
        try:
            with ThreadPoolExecutor(self._concurrency, thread_name_prefix="upload") as pool:
                try:
                    for data in chunker.chunks(stream):
                        fut = pool.submit(self._store, data)
                        refs.append((fut, len(data)))
                        in_flight.append(fut)
                        digest.update(data)  # meanwhile, on this thread
                        size += len(data)
                        progress_advance(len(data))
                        self.stats.chunks_total += 1
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
        finally:
            self._claimed.clear()  # the pool is done: what was stored is in _known
            stop_flushing.set()
            flusher.join()
        chunks = [ChunkRef(fut.result(), n, self._known[fut.result()]) for fut, n in refs]
        return StreamEntry(name=name, type=type_, size=size, digest=digest.hexdigest(), chunks=chunks)


class ChunkReader:
    """Reads chunks back in order with parallel prefetch, authenticating each one."""

    def __init__(self, repo: Repository, cluster: str, generation: str, *, concurrency: int = 8) -> None:
        self.repo = repo
        self.cluster = cluster
        self.generation = generation
        self._concurrency = max(1, concurrency)

    def key_of(self, ref: ChunkRef) -> str:
        return layout.chunk_key(self.cluster, self.generation, ref.id)

    def read_chunk(self, ref: ChunkRef) -> bytes:
        """Fetch, open and check one chunk: ``IntegrityError`` names the object on any fault,
        including a validly sealed object whose plaintext is not the chunk its id names (the
        keyed hash is computed again: what ``verify`` needs, one object at a time)."""
        data = self._open_chunk(ref)
        if self.repo.chunk_id(data) != ref.id:
            key = self.key_of(ref)
            raise IntegrityError(f"object {key} does not hold the data its id names", key=key)
        return data

    def _open_chunk(self, ref: ChunkRef) -> bytes:
        """Fetch and open one chunk (AES-GCM authenticates it under its own key name, so an
        altered, truncated, swapped or renamed object fails here) and check its length."""
        key = self.key_of(ref)
        data = self.repo.get_object(key)
        if len(data) != ref.size:
            raise IntegrityError(f"object {key} does not hold the data its id names", key=key)
        return data

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
            pending: deque[Future[bytes]] = deque()
            hashing: deque[Future[object]] = deque()
            refs = iter(entry.chunks)
            try:
                for ref in refs:
                    pending.append(pool.submit(self._open_chunk, ref))
                    if len(pending) >= window:
                        break
                while pending:
                    data = pending.popleft().result()
                    nxt = next(refs, None)
                    if nxt is not None:
                        pending.append(pool.submit(self._open_chunk, nxt))
                    hashing.append(hasher.submit(digest.update, data))  # one thread: in order
                    while len(hashing) > window or (hashing and hashing[0].done()):
                        hashing.popleft().result()
                    progress_advance(len(data))
                    yield data
                while hashing:
                    hashing.popleft().result()
            finally:
                for fut in pending:
                    fut.cancel()
                for done in hashing:
                    done.cancel()
        if digest.hexdigest() != entry.digest:
            raise IntegrityError(
                f"stream {entry.name} of {manifest_key or 'the backup'} does not match its digest",
                key=manifest_key,
                hint="`contentflow-backupd verify` names the object that holds other data",
            )
