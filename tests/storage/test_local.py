"""LocalStorage beyond the contract: failed writes, file modes, filesystem conflicts."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from contentflow_backupd.errors import ObjectNotFound, StorageAccessDenied, StorageError
from contentflow_backupd.storage.base import put_bytes
from contentflow_backupd.storage.local import LocalStorage


class BrokenStream(io.RawIOBase):
    """Serves ``good`` bytes, then raises like a failing disk or pipe."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            raise OSError(5, "Input/output error (test)")
        n = min(len(buffer), self.left, 4096)
        buffer[:n] = b"x" * n
        self.left -= n
        return n


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("if_absent", [False, True])
def test_failed_write_leaves_old_object_and_no_temp_file(tmp_path: Path, if_absent: bool) -> None:
    storage = LocalStorage(tmp_path)
    put_bytes(storage, "dir/obj", b"old contents")
    key = "dir/new" if if_absent else "dir/obj"
    with pytest.raises(OSError, match="Input/output error"):
        storage.put(key, BrokenStream(3 * 1024 * 1024), if_absent=if_absent)  # type: ignore[arg-type]
    assert all_files(tmp_path) == ["dir/obj"]
    assert storage.get("dir/obj") == b"old contents"
    with pytest.raises(ObjectNotFound):
        storage.stat("dir/new")


def test_objects_are_0600_and_directories_0700(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    storage = LocalStorage(root)
    put_bytes(storage, "a/b/obj", b"secret")
    put_bytes(storage, "top", b"secret", if_absent=True)
    for path in (root / "a/b/obj", root / "top"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in (root, root / "a", root / "a/b"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_temp_files_are_never_listed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    put_bytes(storage, "d/real", b"1")
    (tmp_path / "d" / ".tmp-leftover-from-a-crash").write_bytes(b"partial")
    (tmp_path / ".tmp-another").write_bytes(b"partial")
    assert [i.key for i in storage.list()] == ["d/real"]
    with pytest.raises(StorageError, match="reserved"):
        put_bytes(storage, "d/.tmp-mine", b"x")


def test_key_cannot_be_both_object_and_directory(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    put_bytes(storage, "a/b", b"object")
    with pytest.raises(StorageError, match="cannot also be a directory") as excinfo:
        put_bytes(storage, "a/b/c", b"x")
    assert not excinfo.value.retryable
    put_bytes(storage, "x/y/z", b"object")
    for if_absent in (False, True):
        with pytest.raises(StorageError, match="cannot also be an object"):
            put_bytes(storage, "x/y", b"x", if_absent=if_absent)
    assert [i.key for i in storage.list()] == ["a/b", "x/y/z"]


def test_list_starts_at_the_deepest_directory_of_the_prefix(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    for key in ("data/00/aa", "data/00/ab", "data/01/aa", "data/0x", "index/1"):
        put_bytes(storage, key, b"1")
    assert [i.key for i in storage.list("data/00/a")] == ["data/00/aa", "data/00/ab"]
    assert [i.key for i in storage.list("data/0")] == [
        "data/00/aa",
        "data/00/ab",
        "data/01/aa",
        "data/0x",
    ]
    assert list(storage.list("data/00/aa/")) == []  # a path through an object
    assert list(storage.list("nope/")) == []


def test_missing_root_reads_as_empty(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "not" / "yet")
    assert list(storage.list()) == []
    with pytest.raises(ObjectNotFound):
        storage.get("k")
    storage.delete("k")
    put_bytes(storage, "k", b"v")
    assert storage.get("k") == b"v"


def test_url_is_an_absolute_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = LocalStorage(Path("rel") / "repo")
    assert storage.url == (tmp_path / "rel" / "repo").as_uri()
    assert storage.url.startswith("file:///")
    assert storage.features.local_path and storage.features.create_only


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_is_access_denied(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    put_bytes(storage, "d/k", b"v")
    (tmp_path / "d").chmod(0o500)
    try:
        with pytest.raises(StorageAccessDenied, match="permission denied"):
            put_bytes(storage, "d/k2", b"v")
    finally:
        (tmp_path / "d").chmod(0o700)


def test_unwritable_root_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    storage = LocalStorage(blocker / "repo")
    with pytest.raises(StorageError) as excinfo:
        put_bytes(storage, "k", b"v")
    assert str(blocker) in str(excinfo.value)
    assert not excinfo.value.retryable


def test_unsynced_puts_into_new_directories_are_all_made_durable_by_flush(tmp_path: Path) -> None:
    # sync=False defers the fsyncs of the file, of its directory and of the parents of the
    # directories the put created; flush does them all, and leaves nothing pending.
    storage = LocalStorage(tmp_path)
    keys = [f"c/gen/{i:02x}/obj{i}" for i in range(20)]
    for k in keys:
        put_bytes(storage, k, k.encode(), sync=False)
    pending_dirs = set(storage._pending_dirs)
    assert {tmp_path / "c", tmp_path / "c" / "gen"} <= pending_dirs  # parents of new directories
    assert {tmp_path / "c" / "gen" / f"{i:02x}" for i in range(20)} <= pending_dirs
    storage.flush()
    assert not storage._pending_files and not storage._pending_dirs
    assert [storage.get(k) for k in keys] == [k.encode() for k in keys]
