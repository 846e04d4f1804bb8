"""The parallel tar extractor (``source/extract.py``) on real files in ``tmp_path``: any number of
writers gives the same directory as one; the stream is read to its end (so the reader's stream
digest is checked); a failure of the stream or of a write stops the extraction with that error,
and only once no writer thread runs and no descriptor is left open. The member checks
themselves are tested in tests/e2e/test_pitr.py."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import resource
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from contentflow_backupd.errors import IntegrityError
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.pipeline import ChunkReader, ChunkWriter
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.source.base import Owner
from contentflow_backupd.source.drivers import LocalDataDirectories
from contentflow_backupd.source.extract import ChunkWindow, extract_tar
from contentflow_backupd.storage.memory import MemoryStorage

ME = Owner(os.geteuid(), os.getegid(), "me")


def _tar_bytes(seed: int = 7) -> bytes:
    """A data directory's shape: nested directories, many small files, a few files of several
    hundred KiB (spanning many chunks), an empty file, a long name (a pax header) and links."""
    rnd = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes | None = None, type_: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type = type_
            info.linkname = link
            info.mode = 0o600
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        add("global", type_=tarfile.DIRTYPE)
        add("global/pg_control", rnd.randbytes(8192))
        for db in (1, 5, 16384):
            add(f"base/{db}", type_=tarfile.DIRTYPE)
            for rel in range(40):
                size = rnd.choice([0, 1, 511, 512, 513, 8192, 24576, 70_000])
                add(f"base/{db}/{1000 + rel}", rnd.randbytes(size))
        for n in range(3):
            add(f"base/16384/2{n}0000", rnd.randbytes(rnd.randint(300_000, 900_000)))
        add("empty", b"")
        add("pg_wal/" + "x" * 120, b"a long name: its path is in a pax header")
        add("PG_VERSION", b"15\n")
        add("base/1/link", type_=tarfile.SYMTYPE, link="1000")
        add("hard", type_=tarfile.LNKTYPE, link="PG_VERSION")
    return buf.getvalue()


def _chunks(raw: bytes, seed: int = 3, tail: bytes = b"") -> list[bytes]:
    """``raw`` cut at random places, from 1 byte to 200 KiB, then ``tail``."""
    rnd = random.Random(seed)
    out, i = [], 0
    while i < len(raw):
        n = rnd.choice([1, 7, 512, 4096, 65_536, 200_000])
        out.append(raw[i : i + n])
        i += n
    return [*out, tail] if tail else out


def _tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry under ``root``: its mode, and its contents or link target."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = (st.st_mode, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = (st.st_mode, "")
        else:
            out[rel] = (st.st_mode, path.read_bytes())
    return out


def _new(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    dest.mkdir()
    return dest


def _restore_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("restore-")]


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("writers", [2, 3, 8])
def test_any_number_of_writers_gives_the_directory_one_writer_gives(tmp_path: Path, writers: int) -> None:
    raw = _tar_bytes()
    one = extract_tar(_chunks(raw), _new(tmp_path, "one"), ME, writers=1)
    many = extract_tar(_chunks(raw, seed=writers), _new(tmp_path, "many"), ME, writers=writers)
    assert (one.writers, many.writers) == (1, writers)
    assert _tree(tmp_path / "many") == _tree(tmp_path / "one")
    assert dataclasses.replace(many, writers=1) == one
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar.getmembers():
            if member.isreg():
                source = tar.extractfile(member)
                assert source is not None
                assert (tmp_path / "many" / member.name).read_bytes() == source.read(), member.name
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "many").rglob("*") if p.is_file()} == {0o600}
    assert not _restore_threads()


def test_the_adapter_uses_its_number_of_writers(tmp_path: Path) -> None:
    stats = LocalDataDirectories(writers=5).extract_tar(_chunks(_tar_bytes()), _new(tmp_path, "d"), ME)
    assert stats.writers == 5 and LocalDataDirectories().writers == 1


def test_the_stream_is_read_to_its_last_byte(tmp_path: Path) -> None:
    consumed: list[int] = []

    def stream() -> Iterator[bytes]:
        for n, chunk in enumerate(_chunks(_tar_bytes(), tail=b"\0" * 10_000)):
            consumed.append(n)
            yield chunk
        consumed.append(-1)  # the end: where ChunkReader.iter_stream checks the stream digest

    extract_tar(stream(), _new(tmp_path, "d"), ME, writers=4)
    assert consumed[-1] == -1


def test_a_stream_whose_digest_does_not_match_fails_the_extraction(tmp_path: Path) -> None:
    repo = Repository.init(
        MemoryStorage(), KekSecret("passphrase", b"pw", "t"), chunker=ChunkerParams(avg_size=64 * 1024)
    )
    entry = ChunkWriter(repo, "main", "g", {}).write_stream("base.tar", "t", io.BytesIO(_tar_bytes()))
    reader = ChunkReader(repo, "main", "g", concurrency=3)
    extract_tar(reader.iter_stream(entry), _new(tmp_path, "good"), ME, writers=3)
    wrong = dataclasses.replace(entry, digest="0" * 64)
    with pytest.raises(IntegrityError, match="does not match its digest"):
        extract_tar(reader.iter_stream(wrong), _new(tmp_path, "bad"), ME, writers=3)


def test_a_failing_stream_stops_every_writer_before_the_error_goes_up(tmp_path: Path) -> None:
    fds = _open_fds()
    chunks = _chunks(_tar_bytes())

    def damaged() -> Iterator[bytes]:
        for n, chunk in enumerate(chunks):
            if n == len(chunks) // 2:
                raise IntegrityError("object main/chunks/g/ab/abcd is damaged", key="main/chunks/g/ab/abcd")
            yield chunk

    with pytest.raises(IntegrityError, match="abcd"):
        extract_tar(damaged(), _new(tmp_path, "d"), ME, writers=4)
    assert not _restore_threads()
    assert _open_fds() == fds


def test_a_write_error_stops_the_extraction_with_that_error(tmp_path: Path) -> None:
    """A file larger than RLIMIT_FSIZE fails to write with EFBIG (Python ignores SIGXFSZ): a real
    write error, raised on a writer thread."""
    fds = _open_fds()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
    try:
        with pytest.raises(OSError, match="too large") as raised:
            extract_tar(_chunks(_tar_bytes()), _new(tmp_path, "d"), ME, writers=3)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert raised.value.errno is not None
    assert not _restore_threads()
    assert _open_fds() == fds


def test_the_window_takes_slices_inside_chunks_and_seeks_forward_only() -> None:
    window = ChunkWindow([b"abc", b"", b"defg", b"h"])
    assert window.read(2) == b"ab" and window.tell() == 2
    assert [bytes(p) for p in window.take(4)] == [b"c", b"def"]
    with pytest.raises(tarfile.ReadError):
        window.seek(1)
    assert window.seek(7) == 7 and window.read(5) == b"h"
    with pytest.raises(tarfile.ReadError, match="unexpected end"):
        list(window.take(1))
    assert window.drain() == 0
