"""Packs: a generation of small chunks stores them many to an object (docs/design/
wal-and-restore-speed.md, section 4).

Real repositories on a local directory (``LocalStorage``): the pack objects are files this test
damages by hand."""

from __future__ import annotations

import dataclasses
import io
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contentflow_backupd.errors import IntegrityError, UnsupportedFormat
from contentflow_backupd.ops.backup.generations import CHUNKS_PER_STREAM, generation_chunk_size
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.manifest import ChunkRef, Manifest, StreamEntry
from contentflow_backupd.repository.pipeline import PACK_TARGET, ChunkReader, ChunkWriter
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.storage.local import LocalStorage
from tests.support.manifests import logical_full

PASS = KekSecret("passphrase", b"packs test passphrase", "test")
SMALL = 2048


def _rows(n: int, seed: int) -> bytes:
    """Text like a dump's COPY data: rows of words and numbers (compressible, not repetitive)."""
    rnd = random.Random(seed)
    words = [f"w{rnd.randrange(10_000)}" for _ in range(500)]
    lines = []
    for i in range(n):
        lines.append(f"{i}\t{' '.join(rnd.choices(words, k=rnd.randrange(3, 30)))}\t{rnd.random()}\n")
    return "".join(lines).encode()


def _spread_change(data: bytes, seed: int, rows: int) -> bytes:
    """About ``rows`` new lines inserted all over ``data`` (new rows in a heap's free space)."""
    rnd = random.Random(seed)
    lines = data.splitlines(keepends=True)
    for _ in range(rows):
        lines.insert(rnd.randrange(len(lines)), f"new\t{rnd.random()}\t{rnd.random()}\n".encode())
    return b"".join(lines)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStorage(tmp_path / "repo"), PASS, chunker=ChunkerParams())


def _pack_files(repo: Repository, generation: str, suffix: str = "") -> list[Path]:
    """The packs (or, with ``suffix=".index"``, their indexes) of a generation."""
    root = Path(repo.storage.url.removeprefix("file://"))
    found = (root / "main" / "chunks" / generation / layout.PACKS_DIR).iterdir()
    return sorted(p for p in found if (p.suffix == suffix))


def test_a_packed_stream_reads_back_and_its_packs_hold_its_chunks(repo: Repository) -> None:
    data = _rows(60_000, 1)  # ~5 MiB: at least two packs
    w = ChunkWriter(repo, "main", "g1", {}, concurrency=4)
    entry = w.write_stream("dump", "t", io.BytesIO(data), chunk_size=SMALL)
    assert entry.chunk_size == SMALL
    assert all(c.pack is not None and c.stored == 0 for c in entry.chunks)
    assert len(entry.packs) >= 2 and set(entry.packs) == {c.pack for c in entry.chunks}
    files = _pack_files(repo, "g1")
    assert {f.name for f in files} == set(entry.packs)
    assert {f.name: f.stat().st_size for f in files} == entry.packs
    indexes = _pack_files(repo, "g1", layout.PACK_INDEX)
    assert [f.stem for f in indexes] == [f.name for f in files]
    assert sum(entry.packs.values()) + sum(f.stat().st_size for f in indexes) == w.stats.stored_bytes
    assert len(files) <= len(data) // PACK_TARGET + 1
    assert b"".join(ChunkReader(repo, "main", "g1", concurrency=3).iter_stream(entry)) == data
    # Nothing but packs: no object per chunk.
    root = Path(repo.storage.url.removeprefix("file://"))
    found = (root / "main" / "chunks" / "g1").rglob("*")
    assert [p for p in found if p.is_file() and p.parent.name != "packs"] == []


def test_an_incremental_stores_only_the_changed_chunks_in_new_packs(repo: Repository) -> None:
    full = _rows(30_000, 2)  # ~2.5 MiB
    w = ChunkWriter(repo, "main", "g", {}, concurrency=4)
    entry = w.write_stream("dump", "t", io.BytesIO(full), chunk_size=SMALL)
    known = {c.id: c for c in entry.chunks}
    changed = _spread_change(full, 3, 150)  # ~0.5% of the rows, all over
    w2 = ChunkWriter(repo, "main", "g", known, known_packs=entry.packs, concurrency=4)
    entry2 = w2.write_stream("dump", "t", io.BytesIO(changed), chunk_size=SMALL)
    assert w2.stats.stored_bytes <= 0.15 * w.stats.stored_bytes
    assert set(entry.packs) <= set(entry2.packs)  # it refers to the full's packs, and its own
    reader = ChunkReader(repo, "main", "g", concurrency=4)
    assert b"".join(reader.iter_stream(entry2)) == changed
    assert b"".join(reader.iter_stream(entry)) == full


def test_one_changed_byte_in_a_pack_fails_its_chunks_and_names_the_pack(repo: Repository) -> None:
    data = _rows(20_000, 4)
    entry = ChunkWriter(repo, "main", "g", {}).write_stream("dump", "t", io.BytesIO(data), chunk_size=SMALL)
    victim = _pack_files(repo, "g")[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    key = layout.pack_key("main", "g", victim.name)
    with pytest.raises(IntegrityError) as info:
        b"".join(ChunkReader(repo, "main", "g").iter_stream(entry))
    assert info.value.key == key


def test_a_reference_to_the_wrong_place_in_a_pack_is_refused(repo: Repository) -> None:
    data = _rows(5_000, 5)
    entry = ChunkWriter(repo, "main", "g", {}).write_stream("dump", "t", io.BytesIO(data), chunk_size=SMALL)
    reader = ChunkReader(repo, "main", "g")
    ref = entry.chunks[3]
    assert ref.pack is not None
    for wrong in (
        dataclasses.replace(ref, offset=ref.offset + 1),
        dataclasses.replace(ref, offset=10**9),  # past the pack's end
        dataclasses.replace(ref, id=entry.chunks[4].id),  # another chunk's id at this place
    ):
        with pytest.raises(IntegrityError, match="does not hold chunk") as info:
            reader.read_chunk(wrong)
        assert info.value.key == layout.pack_key("main", "g", ref.pack)


def test_a_pack_named_under_another_generation_or_key_does_not_open(repo: Repository) -> None:
    data = _rows(5_000, 6)
    entry = ChunkWriter(repo, "main", "g", {}).write_stream("dump", "t", io.BytesIO(data), chunk_size=SMALL)
    pack = entry.chunks[0].pack
    assert pack is not None
    other = layout.pack_key("main", "h", pack)
    repo.storage.put(other, io.BytesIO(repo.storage.get(layout.pack_key("main", "g", pack))))
    with pytest.raises(IntegrityError):
        ChunkReader(repo, "main", "h").read_chunk(entry.chunks[0])  # sealed for its own key


def test_a_repository_sized_stream_is_not_packed(repo: Repository) -> None:
    data = _rows(20_000, 7)
    entry = ChunkWriter(repo, "main", "g", {}).write_stream("dump", "t", io.BytesIO(data))
    assert entry.packs == {} and entry.chunk_size is None
    assert all(c.pack is None and c.stored > 0 for c in entry.chunks)


def _manifest(streams: list[StreamEntry]) -> Manifest:
    return logical_full("20261207T120000Z-full-abcdef", streams)


def test_manifests_with_packs_are_format_2_and_without_stay_format_1() -> None:
    plain = StreamEntry("dump", "t", 5, "d" * 64, [ChunkRef("a" * 64, 5, 60)])
    b, c = "b" * 32, "c" * 32
    refs = [ChunkRef("", 5, 0, b, 7), ChunkRef("", 3, 0, c, 0), ChunkRef("", 4, 0, b, 12)]
    packed = StreamEntry("dump", "t", 12, "d" * 64, refs, chunk_size=2048, packs={b: 99, c: 9}, count=3)
    for entry, fmt in ((plain, 1), (packed, 2)):
        raw = json.loads(json.dumps(_manifest([entry]).to_dict()))
        assert raw["format"] == fmt
        back = Manifest.from_dict(raw)
        assert back.streams == [entry]
    # A packed reference names its pack by number and carries no chunk id (the pack's index does).
    raw = _manifest([packed]).to_dict()["streams"][0]
    assert raw["chunks"] == [[5, 0, 7], [3, 1, 0], [4, 0, 12]]
    assert raw["packs"] == [["b" * 32, 99], ["c" * 32, 9]]
    # Chunks stored one after the other in one pack are one run.
    run = [ChunkRef("x" * 64, 5, 0, b, 7), ChunkRef("y" * 64, 4, 0, b, 12), ChunkRef("z" * 64, 2, 0, b, 20)]
    raw = StreamEntry("dump", "t", 11, "d" * 64, run, chunk_size=2048, packs={b: 99}).to_dict()
    assert raw["chunks"] == [[9, 0, 7], [2, 0, 20]] and raw["chunk_count"] == 3
    assert _manifest([packed]).pack_sizes() == {"b" * 32: 99, "c" * 32: 9}
    newer = _manifest([packed]).to_dict() | {"format": 3}
    with pytest.raises(UnsupportedFormat, match="format 3"):
        Manifest.from_dict(newer)


def test_a_generation_chooses_small_chunks_for_a_small_database_only() -> None:
    mib = 1024 * 1024
    assert generation_chunk_size(None, mib) is None
    assert generation_chunk_size(0, mib) is None
    assert generation_chunk_size(1000, mib) == 1024  # never below 1 KiB
    assert generation_chunk_size(29 * 10**6, mib) == 1024
    assert generation_chunk_size(571 * 10**6, mib) == 2048
    assert generation_chunk_size(1145 * 10**6, mib) == 4096  # bench/run.py's 1 GiB database
    assert generation_chunk_size(200 * 10**9, mib) == 512 * 1024  # unpacked: above PACK_BELOW
    assert generation_chunk_size(300 * 10**9, mib) is None  # the repository's own: as before


@settings(deadline=None, max_examples=200)
@given(size=st.integers(min_value=1, max_value=10**13), avg_exp=st.integers(min_value=16, max_value=22))
def test_a_chosen_chunk_size_is_a_power_of_two_below_the_repositorys(size: int, avg_exp: int) -> None:
    avg = 1 << avg_exp
    chosen = generation_chunk_size(size, avg)
    if chosen is None:
        assert size // CHUNKS_PER_STREAM >= avg or max(1024, size // CHUNKS_PER_STREAM) >= avg
    else:
        assert 1024 <= chosen < avg and chosen & (chosen - 1) == 0
        assert chosen <= max(1024, size // CHUNKS_PER_STREAM) < 2 * chosen
