"""The storage conformance suite: the contract of ``contentflow_backupd.storage.base``, as tests.

Subclass :class:`StorageContract` in a test module that provides a ``storage`` fixture (a fresh,
empty :class:`Storage` per test); every driver and wrapper must pass all of it.
"""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import pytest

from contentflow_backupd.errors import ObjectExists, ObjectNotFound, StorageError
from contentflow_backupd.storage.base import (
    ObjectInfo,
    Storage,
    StorageFeatures,
    object_lock_status,
    put_bytes,
)

MiB = 1 << 20
LARGE_SIZE = 6 * MiB + 17
"""Bigger than the 5 MiB multipart threshold the S3 test storages use: two parts."""

# Byte order traps: "-" (0x2d) < "." (0x2e) < "/" (0x2f) < "0" (0x30) < "b"; "z" < "é" in UTF-8.
# No key is also a "directory" of other keys: a local filesystem cannot hold both (see local.py).
TRICKY_KEYS = [
    "a-b",
    "a.b",
    "a/b-c",
    "a/b/c",
    "a/b/d/e",
    "a/b0",
    "a/bc",
    "a0",
    "ab",
    "b",
    "z",
    "\u00e9t\u00e9/\u00fcber space.bin",
]
INVALID_KEYS = ["", "/a", "a/", "a//b", "./a", "a/./b", "a/../b", "..", "a\\b", "a\x00b"]


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def read_in_chunks(stream: BinaryIO, chunk: int = 1000) -> bytes:
    parts = []
    while data := stream.read(chunk):
        parts.append(data)
    return b"".join(parts)


def byte_order(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode())


class GatedStream(io.BytesIO):
    """Serves the first ``gate_at`` bytes, then blocks until ``release`` is set.

    A sized ``read`` returns short at the gate (so a driver has written the first part
    somewhere by the time it blocks); ``read()`` blocks inside."""

    def __init__(self, data: bytes, gate_at: int) -> None:
        super().__init__(data)
        self.gate_at = gate_at
        self.reached = threading.Event()
        self.release = threading.Event()

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # read to EOF, waiting at the gate
            out = bytearray()
            while chunk := self.read(1 << 16):
                out += chunk
            return bytes(out)
        if self.tell() >= self.gate_at and not self.release.is_set():
            self.reached.set()
            assert self.release.wait(30), "the test did not release the stream"
        if not self.release.is_set():
            size = min(size, self.gate_at - self.tell())  # a short read up to the gate
        return super().read(size)


class StorageContract:
    """Every test gets a fresh, empty ``storage`` from the subclass's fixture."""

    # -- put, get, open, stat -------------------------------------------------------------

    def test_features_and_url(self, storage: Storage) -> None:
        assert isinstance(storage, Storage)
        assert isinstance(storage.features, StorageFeatures)
        assert storage.features.max_concurrency >= 1
        assert "://" in storage.url

    def test_optional_abilities_follow_features(self, storage: Storage) -> None:
        """An optional ability is reached through ``features``, also through wrappers: a storage
        that says ``lock_report`` answers it; one that does not gives the plain "no lock" answer."""
        supported, mode, detail = object_lock_status(storage)
        assert isinstance(supported, bool) and detail
        if storage.features.lock_report:
            assert callable(getattr(storage, "object_lock_status", None))
            assert mode in (None, "compliance", "governance")
        else:
            assert (supported, mode) == (False, None)

    def test_round_trip(self, storage: Storage) -> None:
        data = payload(1000)
        assert put_bytes(storage, "obj", data) == len(data)
        assert storage.get("obj") == data
        with storage.open("obj") as f:
            assert read_in_chunks(f, 7) == data
        info = storage.stat("obj")
        assert (info.key, info.size) == ("obj", len(data))

    def test_unsynced_puts_are_whole_at_once_and_flush_makes_them_durable(self, storage: Storage) -> None:
        storage.flush()  # nothing pending: fine
        for i in range(5):
            assert storage.put(f"chunks/{i}", io.BytesIO(b"x" * (1000 + i)), sync=False) == 1000 + i
        for i in range(5):
            assert storage.get(f"chunks/{i}") == b"x" * (1000 + i)
        assert [o.key for o in storage.list("chunks/")] == [f"chunks/{i}" for i in range(5)]
        storage.flush()
        storage.flush()
        assert storage.stat("chunks/4").size == 1004

    def test_empty_object(self, storage: Storage) -> None:
        assert put_bytes(storage, "dir/empty", b"") == 0
        assert storage.get("dir/empty") == b""
        assert storage.stat("dir/empty").size == 0
        with storage.open("dir/empty", 0, 10) as f:
            assert f.read() == b""
        assert [(i.key, i.size) for i in storage.list()] == [("dir/empty", 0)]

    def test_large_object(self, storage: Storage) -> None:
        data = payload(LARGE_SIZE, seed=1)
        assert put_bytes(storage, "big/object", data) == LARGE_SIZE
        assert storage.stat("big/object").size == LARGE_SIZE
        assert storage.get("big/object") == data
        boundary = 5 * MiB  # across the first part boundary of a multipart upload
        with storage.open("big/object", boundary - 10, 20) as f:
            assert f.read() == data[boundary - 10 : boundary + 10]

    def test_put_overwrites(self, storage: Storage) -> None:
        put_bytes(storage, "k", b"old contents, longer")
        assert put_bytes(storage, "k", b"new") == 3
        assert storage.get("k") == b"new"
        assert storage.stat("k").size == 3
        assert [i.key for i in storage.list()] == ["k"]

    def test_put_from_file_object(self, storage: Storage, tmp_path: Path) -> None:
        data = payload(300_000, seed=2)
        source = tmp_path / "source.bin"
        source.write_bytes(data)
        with open(source, "rb") as f:
            assert storage.put("from/file", f) == len(data)
        assert storage.get("from/file") == data
        with open(source, "rb") as f:
            f.seek(1000)  # put reads from the current position to EOF
            assert storage.put("from/file-tail", f) == len(data) - 1000
        assert storage.get("from/file-tail") == data[1000:]

    def test_if_absent_creates(self, storage: Storage) -> None:
        assert put_bytes(storage, "new/key", b"first", if_absent=True) == 5
        assert storage.get("new/key") == b"first"

    def test_if_absent_leaves_existing_untouched(self, storage: Storage) -> None:
        put_bytes(storage, "k", b"original")
        with pytest.raises(ObjectExists) as excinfo:
            put_bytes(storage, "k", b"imposter", if_absent=True)  # same size, other bytes
        assert excinfo.value.key == "k"
        with pytest.raises(ObjectExists):
            put_bytes(storage, "k", b"a different size", if_absent=True)
        assert storage.get("k") == b"original"
        assert [i.key for i in storage.list()] == ["k"]

    @pytest.mark.parametrize(
        ("offset", "length", "expected"),
        [
            (0, None, slice(0, 100)),
            (0, 10, slice(0, 10)),
            (10, None, slice(10, 100)),
            (10, 20, slice(10, 30)),
            (99, 1, slice(99, 100)),
            (90, 50, slice(90, 100)),
            (5, 0, slice(0, 0)),
            (100, None, slice(0, 0)),
            (100, 5, slice(0, 0)),
            (150, None, slice(0, 0)),
        ],
    )
    def test_open_range(self, storage: Storage, offset: int, length: int | None, expected: slice) -> None:
        data = payload(100, seed=3)
        put_bytes(storage, "r", data)
        with storage.open("r", offset, length) as f:
            assert read_in_chunks(f, 7) == data[expected]

    def test_open_rejects_negative_range(self, storage: Storage) -> None:
        put_bytes(storage, "r", b"data")
        for offset, length in [(-1, None), (0, -1)]:
            with pytest.raises(StorageError) as excinfo:
                storage.open("r", offset, length).close()
            assert not excinfo.value.retryable

    @pytest.mark.parametrize(
        "operation",
        [
            lambda s: s.get("missing/key"),
            lambda s: s.stat("missing/key"),
            lambda s: s.open("missing/key").close(),
            lambda s: s.open("missing/key", 5, 10).close(),
            lambda s: s.open("missing/key", 0, 0).close(),
            lambda s: s.stat("dir"),  # a "directory" of other keys is not an object
            lambda s: s.get("dir"),
            lambda s: s.stat("dir/x/deeper"),  # a path through an object
        ],
        ids=[
            "get",
            "stat",
            "open",
            "open-range",
            "open-empty-range",
            "stat-dir",
            "get-dir",
            "through",
        ],
    )
    def test_missing_key_is_not_found(self, storage: Storage, operation: Callable[[Storage], object]) -> None:
        put_bytes(storage, "dir/x", b"x")
        with pytest.raises(ObjectNotFound):
            operation(storage)

    # -- list -----------------------------------------------------------------------------

    def test_list_is_lazy_iterator_in_byte_order(self, storage: Storage) -> None:
        shuffled = TRICKY_KEYS[:]
        random.Random(4).shuffle(shuffled)
        for i, key in enumerate(shuffled):
            put_bytes(storage, key, b"x" * i)
        listing = storage.list()
        assert iter(listing) is listing  # an iterator, not a materialised list
        infos = list(listing)
        assert [i.key for i in infos] == byte_order(TRICKY_KEYS) == TRICKY_KEYS
        sizes = {key: i for i, key in enumerate(shuffled)}
        assert all(info.size == sizes[info.key] for info in infos)
        assert all(isinstance(info, ObjectInfo) for info in infos)

    @pytest.mark.parametrize(
        "prefix", ["", "a", "a/", "a/b", "a/b/", "a/b/d/e", "a-", "a/b/c/", "zz", "\u00e9", "b"]
    )
    def test_list_prefix_is_a_plain_string_prefix(self, storage: Storage, prefix: str) -> None:
        for key in TRICKY_KEYS:
            put_bytes(storage, key, b"1")
        expected = [k for k in TRICKY_KEYS if k.startswith(prefix)]
        assert [i.key for i in storage.list(prefix)] == expected

    def test_list_prefix_that_no_valid_key_has(self, storage: Storage) -> None:
        for key in ("..dots", ".hidden", "a/b"):
            put_bytes(storage, key, b"1")
        assert [i.key for i in storage.list("..")] == ["..dots"]
        assert [i.key for i in storage.list(".")] == ["..dots", ".hidden"]
        for prefix in ("/", "/a", "../", "./", "a//", "a/../", "a/./b", "../a/b"):
            assert list(storage.list(prefix)) == [], prefix

    def test_list_empty_storage(self, storage: Storage) -> None:
        assert list(storage.list()) == []
        assert list(storage.list("nothing/here")) == []

    def test_half_written_object_is_invisible(self, storage: Storage) -> None:
        put_bytes(storage, "old", b"old contents")
        data = payload(200_000, seed=5)
        streams = {"old": GatedStream(data, 70_000), "new": GatedStream(data, 70_000)}

        def write(key: str) -> int:
            return storage.put(key, streams[key])

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(write, key) for key in streams]
            for stream in streams.values():
                assert stream.reached.wait(30)
            # Both writers are stuck mid-stream: readers see the old state only.
            assert [(i.key, i.size) for i in storage.list()] == [("old", 12)]
            assert storage.get("old") == b"old contents"
            with pytest.raises(ObjectNotFound):
                storage.stat("new")
            for stream in streams.values():
                stream.release.set()
            assert [f.result(timeout=60) for f in futures] == [len(data), len(data)]
        assert [(i.key, i.size) for i in storage.list()] == [("new", len(data)), ("old", len(data))]
        assert storage.get("new") == storage.get("old") == data

    # -- delete ---------------------------------------------------------------------------

    def test_delete_is_idempotent(self, storage: Storage) -> None:
        put_bytes(storage, "d/k", b"v")
        put_bytes(storage, "d/keep", b"v")
        storage.delete("d/k")
        with pytest.raises(ObjectNotFound):
            storage.get("d/k")
        storage.delete("d/k")
        storage.delete("never/existed")
        assert [i.key for i in storage.list()] == ["d/keep"]
        put_bytes(storage, "d/k", b"again")  # a deleted key can be written again
        assert storage.get("d/k") == b"again"

    # -- keys -----------------------------------------------------------------------------

    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_invalid_keys_are_rejected(self, storage: Storage, key: str) -> None:
        operations: list[Callable[[], object]] = [
            lambda: put_bytes(storage, key, b"x"),
            lambda: put_bytes(storage, key, b"x", if_absent=True),
            lambda: storage.get(key),
            lambda: storage.open(key).close(),
            lambda: storage.stat(key),
            lambda: storage.delete(key),
        ]
        for operation in operations:
            with pytest.raises(StorageError) as excinfo:
                operation()
            assert type(excinfo.value) is StorageError
            assert not excinfo.value.retryable
        assert list(storage.list()) == []

    # -- concurrency ----------------------------------------------------------------------

    def test_concurrent_puts(self, storage: Storage) -> None:
        keys = [f"c/{i:02d}" for i in range(24)]

        def write(i: int) -> int:
            return put_bytes(storage, keys[i], payload(20_000 + i, seed=i))

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(write, range(len(keys)))) == [20_000 + i for i in range(24)]
        assert [i.key for i in storage.list("c/")] == keys
        for i, key in enumerate(keys):
            assert storage.get(key) == payload(20_000 + i, seed=i)

    def test_concurrent_if_absent_has_one_winner(self, storage: Storage) -> None:
        if not storage.features.create_only:
            pytest.skip("if_absent is emulated with stat+put here: racy by contract")
        contents = [payload(10_000, seed=100 + i) for i in range(8)]  # same size, other bytes
        barrier = threading.Barrier(len(contents))

        def write(i: int) -> bool:
            barrier.wait()
            try:
                put_bytes(storage, "race", contents[i], if_absent=True)
            except ObjectExists:
                return False
            return True

        with ThreadPoolExecutor(len(contents)) as pool:
            won = list(pool.map(write, range(len(contents))))
        assert won.count(True) == 1
        assert storage.get("race") == contents[won.index(True)]
