"""The repository format on the in-memory store: keys, sealing, tampering, manifests, chunking."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import threading
from typing import Any, cast

import blake3
import pytest
from pyfastcdc import FastCDC

from contentflow_backupd.errors import (
    IntegrityError,
    RepositoryExists,
    RepositoryNotFound,
    StorageError,
    UnsupportedFormat,
    WrongKey,
)
from contentflow_backupd.model import utcnow
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.chunker import MIN_BUFFER, Chunker, ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret, read_key_file
from contentflow_backupd.repository.manifest import Manifest
from contentflow_backupd.repository.pipeline import ChunkReader, ChunkWriter
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.storage.base import Storage, put_bytes
from contentflow_backupd.storage.memory import MemoryStorage
from tests.support.manifests import logical_full

PASS = KekSecret("passphrase", b"correct horse battery staple", "test")
SMALL = ChunkerParams(avg_size=64 * 1024)


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStorage(), PASS, chunker=SMALL)


def test_open_with_the_right_passphrase_and_refuse_a_wrong_one(repo: Repository) -> None:
    again = Repository.open(repo.storage, PASS)
    assert again.id == repo.id
    with pytest.raises(WrongKey, match="key is wrong") as exc:
        Repository.open(repo.storage, KekSecret("passphrase", b"nope", "test"))
    assert repo.kek_id in str(exc.value)


def test_a_key_file_cannot_open_a_passphrase_repository(repo: Repository) -> None:
    with pytest.raises(WrongKey, match="no key of kind keyfile"):
        Repository.open(repo.storage, KekSecret("keyfile", os.urandom(32), "test"))


def test_key_file_repository_round_trip() -> None:
    key = os.urandom(32)
    storage = MemoryStorage()
    repo = Repository.init(storage, KekSecret("keyfile", key, "k"), chunker=SMALL)
    assert (
        Repository.open(storage, KekSecret("keyfile", read_key_file(key.hex().encode(), "k"), "k")).id
        == repo.id
    )
    with pytest.raises(WrongKey):
        Repository.open(storage, KekSecret("keyfile", os.urandom(32), "k"))


def test_init_refuses_an_existing_repository_and_a_non_empty_store(repo: Repository) -> None:
    with pytest.raises(RepositoryExists):
        Repository.init(repo.storage, PASS, chunker=SMALL)
    other = MemoryStorage()
    put_bytes(other, "something/else", b"x")
    with pytest.raises(RepositoryExists, match="not empty"):
        Repository.init(other, PASS, chunker=SMALL)


def test_open_without_repository_and_newer_format() -> None:
    storage = MemoryStorage()
    with pytest.raises(RepositoryNotFound, match="init"):
        Repository.open(storage, PASS)
    repo = Repository.init(storage, PASS, chunker=SMALL)
    raw = json.loads(storage.get("repo.json"))
    raw["version"] = 99
    put_bytes(storage, "repo.json", json.dumps(raw).encode())
    with pytest.raises(UnsupportedFormat, match="upgrade"):
        Repository.open(storage, PASS)
    assert repo.id == raw["repository_id"]


def test_repo_json_and_key_files_hold_no_secret(repo: Repository) -> None:
    for info in repo.storage.list(""):
        assert PASS.material not in repo.storage.get(info.key)


@pytest.mark.parametrize("compress", [True, False])
def test_objects_round_trip(repo: Repository, compress: bool) -> None:
    for payload in (b"", b"x", b"abc" * 10000, os.urandom(5000)):
        repo.put_object("a/b", payload, compress=compress)
        assert repo.get_object("a/b") == payload


def test_incompressible_data_is_stored_as_is(repo: Repository) -> None:
    data = os.urandom(100_000)
    assert repo.put_object("x", data) < len(data) + 64


@pytest.mark.parametrize(
    "tamper",
    ["flip_byte", "truncate", "append", "swap_names", "other_repository", "empty"],
)
def test_tampered_objects_fail_to_open(repo: Repository, tamper: str) -> None:
    repo.put_object("c/one", b"first object" * 100)
    repo.put_object("c/two", b"second object" * 100)
    blob = repo.storage.get("c/one")
    if tamper == "flip_byte":
        i = random.Random(1).randrange(len(blob))
        bad = blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1 :]
    elif tamper == "truncate":
        bad = blob[:-7]
    elif tamper == "append":
        bad = blob + b"\x00"
    elif tamper == "swap_names":
        bad = repo.storage.get("c/two")
    elif tamper == "other_repository":
        other = Repository.init(MemoryStorage(), PASS, chunker=SMALL)
        bad = other.encode("c/one", b"first object" * 100)
    else:
        bad = b""
    put_bytes(repo.storage, "c/one", bad)
    with pytest.raises(IntegrityError) as exc:
        repo.get_object("c/one")
    assert exc.value.key == "c/one"


def test_chunker_boundaries_are_content_defined() -> None:
    rnd = random.Random(5)
    base = bytes(rnd.getrandbits(8) for _ in range(2_000_000))
    edited = base[:1_000_000] + b"INSERTED" + base[1_000_000:]
    chunker = Chunker(SMALL)
    a = [bytes(c) for c in chunker.chunks(io.BytesIO(base))]
    b = [bytes(c) for c in chunker.chunks(io.BytesIO(edited))]
    assert b"".join(a) == base and b"".join(b) == edited
    shared = set(a) & set(b)
    assert len(shared) >= len(a) - 3  # an insert changes only the chunks around it
    for c in a:
        assert len(c) <= SMALL.max_size


def test_writer_dedups_within_and_across_backups(repo: Repository) -> None:
    data = os.urandom(600_000)
    stream = data * 3  # repeated content inside one stream
    w = ChunkWriter(repo, "main", "gen1", {}, concurrency=3)
    entry = w.write_stream("dump", "t", io.BytesIO(stream))
    assert w.stats.chunks_new < w.stats.chunks_total
    known = {c.id: c for c in entry.chunks}
    w2 = ChunkWriter(repo, "main", "gen1", known, concurrency=3)
    entry2 = w2.write_stream("dump", "t", io.BytesIO(stream + b"tail"))
    assert w2.stats.chunks_new <= 2
    reader = ChunkReader(repo, "main", "gen1", concurrency=3)
    assert b"".join(reader.iter_stream(entry2)) == stream + b"tail"


def test_concurrent_writers_store_each_distinct_chunk_once(repo: Repository) -> None:
    # Many copies of few chunks, hashed on 8 threads at once: a chunk seen by two workers at the
    # same time is still uploaded once, and the counts agree with what is in storage.
    blocks = [os.urandom(SMALL.max_size) for _ in range(3)]
    stream = b"".join(blocks[i % 3] for i in range(60))
    w = ChunkWriter(repo, "main", "gen", {}, concurrency=8, window=16)
    entry = w.write_stream("dump", "t", io.BytesIO(stream))
    ids = {c.id for c in entry.chunks}
    stored = list(repo.storage.list("main/chunks/gen/"))
    assert w.stats.chunks_total == len(entry.chunks) and w.stats.chunks_new == len(ids) == len(stored)
    assert w.stats.stored_bytes == sum(o.size for o in stored)
    assert all(c.stored > 0 for c in entry.chunks)
    reader = ChunkReader(repo, "main", "gen", concurrency=4)
    assert b"".join(reader.iter_stream(entry)) == stream


def test_reader_names_a_swapped_chunk(repo: Repository) -> None:
    w = ChunkWriter(repo, "main", "g", {}, concurrency=2)
    entry = w.write_stream("dump", "t", io.BytesIO(os.urandom(400_000)))
    k0 = layout.chunk_key("main", "g", entry.chunks[0].id)
    k1 = layout.chunk_key("main", "g", entry.chunks[1].id)
    b0, b1 = repo.storage.get(k0), repo.storage.get(k1)
    put_bytes(repo.storage, k0, b1)
    put_bytes(repo.storage, k1, b0)
    with pytest.raises(IntegrityError) as exc:
        b"".join(ChunkReader(repo, "main", "g").iter_stream(entry))
    assert exc.value.key == k0


def test_reader_stops_at_a_damaged_chunk_before_the_stream_ends(repo: Repository) -> None:
    w = ChunkWriter(repo, "main", "g", {}, concurrency=2)
    entry = w.write_stream("dump", "t", io.BytesIO(os.urandom(400_000)))
    assert len(entry.chunks) > 3
    k1 = layout.chunk_key("main", "g", entry.chunks[1].id)
    blob = bytearray(repo.storage.get(k1))
    blob[len(blob) // 2] ^= 0x01
    put_bytes(repo.storage, k1, bytes(blob))
    got: list[bytes] = []
    with pytest.raises(IntegrityError, match="failed authentication") as exc:
        for data in ChunkReader(repo, "main", "g", concurrency=3).iter_stream(entry):
            got.append(data)
    assert exc.value.key == k1 and len(got) == 1  # AES-GCM: at the chunk, not at the end


def test_reader_fails_a_sealed_chunk_holding_other_data_and_verify_names_it(repo: Repository) -> None:
    # Validly sealed under the chunk's own key name, the same length, other bytes: only a writer's
    # bug could store one. The reader does not hash chunks again (AES-GCM plus the stream
    # digest prove every byte), so the stream fails at its end; read_chunk (verify) names it.
    w = ChunkWriter(repo, "main", "g", {}, concurrency=2)
    entry = w.write_stream("dump", "t", io.BytesIO(os.urandom(400_000)))
    ref = entry.chunks[1]
    k1 = layout.chunk_key("main", "g", ref.id)
    repo.put_object(k1, os.urandom(ref.size))
    with pytest.raises(IntegrityError, match="does not match its digest") as exc:
        b"".join(ChunkReader(repo, "main", "g").iter_stream(entry, manifest_key="m.json"))
    assert exc.value.key == "m.json"
    with pytest.raises(IntegrityError, match="does not hold the data its id names") as named:
        ChunkReader(repo, "main", "g").read_chunk(ref)
    assert named.value.key == k1


def test_reader_checks_the_digest_in_stream_order(repo: Repository) -> None:
    # Two chunks swapped in the manifest (each one intact): every chunk opens, the bytes come out
    # in the wrong order, and the digest (updated on its own thread) says so.
    stream = os.urandom(600_000)
    entry = ChunkWriter(repo, "main", "g", {}, concurrency=2).write_stream("d", "t", io.BytesIO(stream))
    chunks = list(entry.chunks)
    chunks[0], chunks[2] = chunks[2], chunks[0]
    swapped = dataclasses.replace(entry, chunks=chunks)
    reader = ChunkReader(repo, "main", "g", concurrency=4)
    assert b"".join(reader.iter_stream(entry)) == stream
    with pytest.raises(IntegrityError, match="does not match its digest"):
        b"".join(reader.iter_stream(swapped))


def test_manifest_round_trip_and_swap_detection(repo: Repository) -> None:
    now = utcnow()

    def manifest(bid: str) -> Manifest:
        return logical_full(bid, at=now)

    a, b = "20261124T000000Z-full-aaaaaa", "20261124T010000Z-full-bbbbbb"
    repo.write_manifest(manifest(a))
    repo.write_manifest(manifest(b))
    assert repo.read_manifest("main", a).to_dict() == manifest(a).to_dict()
    assert list(repo.iter_backup_ids("main")) == [a, b]
    put_bytes(
        repo.storage,
        layout.manifest_key("main", b),
        repo.storage.get(layout.manifest_key("main", a)),
    )
    with pytest.raises(IntegrityError):
        repo.read_manifest("main", b)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("20261124T054459Z-full-3a9c1b", True),
        ("20261124T054459Z-incr-3a9c1b", True),
        ("../etc/passwd", False),
        ("latest", False),
        ("20261124T054459Z-full-3A9C1B", False),
    ],
)
def test_backup_id_syntax(text: str, ok: bool) -> None:
    assert layout.is_backup_id(text) is ok


class _FlushWatch:
    """A storage wrapper that counts ``flush`` calls (and can refuse them), delegating the rest."""

    def __init__(self, inner: MemoryStorage, *, refuse: bool = False) -> None:
        self._inner = inner
        self.refuse = refuse
        self.flushes = 0
        self.flushed = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def flush(self) -> None:
        self.flushes += 1
        self.flushed.set()
        if self.refuse:
            raise StorageError("fsync failed (refused by the test)")
        self._inner.flush()


class _WaitsForAFlush(io.RawIOBase):
    """A stream that hands out ``first`` bytes, then waits (bounded) for a flush before the rest:
    the writer must flush while the stream is still being read."""

    def __init__(self, first: bytes, rest: bytes, flushed: threading.Event) -> None:
        self._parts = [first, rest]
        self._flushed = flushed
        self.flush_seen_mid_stream = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if len(self._parts) == 1 and not self.flush_seen_mid_stream:
            self.flush_seen_mid_stream = self._flushed.wait(30)
        if not self._parts:
            return 0
        part = self._parts[0]
        n = min(len(b), len(part))
        b[:n] = part[:n]
        if n == len(part):
            self._parts.pop(0)
        else:
            self._parts[0] = part[n:]
        return n


def test_writer_flushes_in_the_background_while_it_streams() -> None:
    storage = _FlushWatch(MemoryStorage())
    repo = Repository.init(cast(Storage, storage), PASS, chunker=SMALL)
    storage.flushed.clear()  # init's own writes are synchronous; count from here
    first, rest = os.urandom(SMALL.max_size * 2), os.urandom(SMALL.max_size * 2)
    stream = _WaitsForAFlush(first, rest, storage.flushed)
    w = ChunkWriter(repo, "main", "gen", {}, concurrency=2, flush_interval=0.01)
    entry = w.write_stream("s", "t", stream)  # type: ignore[arg-type]
    assert stream.flush_seen_mid_stream
    reader = ChunkReader(repo, "main", "gen", concurrency=2)
    assert b"".join(reader.iter_stream(entry)) == first + rest


def test_a_failed_background_flush_is_left_to_the_flush_before_the_manifest() -> None:
    # The stream completes (the failure is logged); the flush before the commit marker raises.
    storage = _FlushWatch(MemoryStorage())
    repo = Repository.init(cast(Storage, storage), PASS, chunker=SMALL)
    storage.refuse = True
    storage.flushed.clear()
    data = os.urandom(SMALL.max_size * 2)
    stream = _WaitsForAFlush(data, data[::-1], storage.flushed)
    w = ChunkWriter(repo, "main", "gen", {}, concurrency=2, flush_interval=0.01)
    w.write_stream("s", "t", stream)  # type: ignore[arg-type]
    assert stream.flush_seen_mid_stream
    with pytest.raises(StorageError):
        repo.storage.flush()


class _ShortReads(io.RawIOBase):
    """A pipe-like stream: every read returns a random, often short, count."""

    def __init__(self, data: bytes, rnd: random.Random) -> None:
        self._data = data
        self._pos = 0
        self._rnd = rnd

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._rnd.randint(1, 300_000), len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("avg", [SMALL.avg_size, 1024])
def test_chunk_boundaries_are_those_of_fastcdc_over_the_whole_stream(seed: int, avg: int) -> None:
    # The chunker reads into its own buffers and cuts there; its chunks must be exactly those of
    # pyfastcdc's stream chunker (the repository format: equal data, equal ids, dedup across
    # versions), whatever the read sizes, at every length around the buffer and chunk sizes.
    # 1 KiB: a small database's packed generation (many cuts per buffer).
    rnd = random.Random(seed)
    p = ChunkerParams(avg_size=avg)
    lengths = [0, 1, p.min_size, p.max_size, p.max_size + 1, 4 * p.max_size, 4 * p.max_size + 7]
    lengths += [rnd.randint(0, 40 * p.avg_size) for _ in range(3)]
    lengths += [MIN_BUFFER - 1, MIN_BUFFER + p.max_size, 3 * MIN_BUFFER + 7]  # across read buffers
    for n in lengths:
        data = bytearray(rnd.randbytes(n))
        for _ in range(3):  # runs of one byte: the longest chunks (max_size) come from these
            at, run = rnd.randrange(n + 1), rnd.randint(0, n // 3 + 1)
            data[at : at + run] = b"\x00" * len(data[at : at + run])
        reference = [
            bytes(c.data)
            for c in FastCDC(
                p.avg_size, min_size=p.min_size, max_size=p.max_size, normalized_chunking=1
            ).cut_stream(io.BytesIO(bytes(data)))
        ]
        for stream in (io.BytesIO(bytes(data)), _ShortReads(bytes(data), rnd)):
            digest = blake3.blake3()
            chunks = list(Chunker(p).chunks(stream, digest))  # type: ignore[arg-type]
            assert [bytes(c) for c in chunks] == reference, n
            assert digest.hexdigest() == blake3.blake3(bytes(data)).hexdigest(), n  # each byte once
            assert all(c.readonly for c in chunks)
