"""A new data directory from a ``pg_basebackup`` tar stream: parsed on one thread, written by many.

Extraction is streaming and trusts nothing in the stream (``tarfile``'s ``filter=`` is missing on
some 3.11 releases, so members are checked here, before anything is written for them):

- names are relative: absolute names, ``..`` components and NUL bytes are refused; ``./`` is
  dropped;
- regular files, directories, symbolic links and hard links only: device files, FIFOs and other
  types are refused;
- a symbolic link must be relative and free of ``..``: every link then points into the directory
  of the link or below, so no chain of links (nor a later member written through one) leaves the
  data directory. A tablespace link (absolute) is refused;
- a hard link must name a regular file extracted earlier from the same stream;
- nothing is overwritten: every file is created with ``O_EXCL | O_NOFOLLOW`` (a repeated name
  fails);
- directories are created 0700 and files 0600, as PostgreSQL creates them; when running as root,
  everything is given to the owner.

Parallelism (issue 15, docs/physical.md "Restore speed"): one thread, the caller's, reads the
stream in order, parses the tar headers (``tarfile`` itself, so pax and GNU headers mean what
they mean to ``tarfile``), makes directories and links and creates every file; the contents of the
files go to ``writers`` threads as slices of the stream's chunks (no copy), each written at its
offset with ``pwrite``. Whichever writer writes the last slice of a file hands it to the sync
threads (``SYNCS_PER_WRITER`` per writer: an fsync waits for the disk, not for a core), which
fsync and close it. Writes, fsyncs and the decryption and decompression of the chunks
(``repository/pipeline.py``) release the GIL, so they run on all cores; what stays serial is the
tar headers (a few hundred bytes per file) and the stream digest. At most ``2 * writers`` slices
are queued or being written, each inside one chunk, and at most ``MAX_OPEN_FILES`` files are
open: with the reader's prefetch window this bounds the memory of a restore.

The whole stream is read, to its last byte, even past the end-of-archive blocks, so that the
reader's check of the stream digest always runs. The extraction returns only when every writer
is done; on any failure (a damaged chunk, an unsafe member, a write error, Ctrl-C) the writers
are stopped and waited for before the error goes up, so that nothing is written after the caller
starts to remove the directory.

Durability: every file is fsynced before it is closed and every directory at the end, as
``pg_basebackup`` does, so a restore that reported success survives a crash even when the
restored configuration has ``fsync = off``.
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from contentflow_backupd.errors import BackupdError
from contentflow_backupd.fsutil import fsync_dir
from contentflow_backupd.source.base import ExtractStats, Owner
from contentflow_backupd.source.pgdata import DIR_MODE, FILE_MODE, give_to

_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


class UnsafeArchive(BackupdError):
    """The tar stream holds a member that would leave the data directory or is not allowed."""


def member_path(name: str) -> str | None:
    """The safe relative form of a member name; None for the top directory itself."""
    if "\x00" in name or name.startswith("/"):
        raise UnsafeArchive(f"the backup holds a member with an absolute or invalid name: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"the backup holds a member whose name leaves the data directory: {name!r}")
    return "/".join(parts) or None


def _check_symlink(name: str, target: str) -> None:
    parts = PurePosixPath(target).parts
    if not target or target.startswith("/") or "\x00" in target or ".." in parts:
        hint = " (a tablespace; tablespaces are not supported)" if name.startswith("pg_tblspc/") else ""
        raise UnsafeArchive(
            f"the backup holds a symbolic link {name} -> {target} that may point outside the data "
            f"directory{hint}; refusing to restore it"
        )


# -- the stream ----------------------------------------------------------------------------
class ChunkWindow:
    """A forward-only file over an iterator of byte chunks, for ``tarfile``'s random-access mode.

    ``tarfile`` reads headers with ``read`` (small copies) and skips with ``seek`` (forward only:
    a backward seek raises ``tarfile.ReadError``); file contents are taken with ``take`` as
    slices of the chunks themselves, which keeps each chunk alive only while a slice of it is."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._cur = memoryview(b"")
        self._pos = 0

    def _fill(self) -> bool:
        while not self._cur:
            nxt = next(self._chunks, None)
            if nxt is None:
                return False
            self._cur = memoryview(nxt)
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        while (size < 0 or size > 0) and self._fill():
            piece = self._cur if size < 0 else self._cur[:size]
            parts.append(bytes(piece))
            self._advance(len(piece))
            size -= 0 if size < 0 else len(piece)
        return b"".join(parts)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or offset < self._pos:
            raise tarfile.ReadError(f"the tar stream cannot seek back to {offset} from {self._pos}")
        for _ in self.take(offset - self._pos):
            pass
        return self._pos

    def take(self, size: int) -> Iterator[memoryview]:
        """The next ``size`` bytes as slices, each inside one chunk; ``tarfile.ReadError`` when
        the stream ends first."""
        while size > 0:
            if not self._fill():
                raise tarfile.ReadError("unexpected end of data")
            piece = self._cur[:size]
            self._advance(len(piece))
            size -= len(piece)
            yield piece

    def drain(self) -> int:
        """Read to the end of the stream; returns the bytes skipped."""
        skipped = len(self._cur)
        self._cur = memoryview(b"")
        for chunk in self._chunks:
            skipped += len(chunk)
        self._pos += skipped
        return skipped

    def _advance(self, n: int) -> None:
        self._cur = self._cur[n:]
        self._pos += n


# -- the writers ---------------------------------------------------------------------------
SYNCS_PER_WRITER = 4
"""fsync threads per writer thread: an fsync waits for the disk, not for a CPU, so more of them
in flight keep the disk busy while the writers go on."""
MAX_OPEN_FILES = 256
"""Files created and not yet synced and closed (well below the usual limit of 1024 descriptors)."""


class _OpenFile:
    """A file being written: its descriptor, and how many of its slices are still unwritten."""

    __slots__ = ("complete", "fd", "pending")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = 0
        self.complete = False
        """Every slice has been handed over (set by the parsing thread)."""


class FileWriters:
    """Files created on the calling thread, written by ``workers`` threads (slices at their
    offsets), then fsynced and closed by ``SYNCS_PER_WRITER * workers`` threads; see the module
    docstring. ``close()`` waits for every thread, closes what is still open and raises the first
    error of a thread; ``abort()`` drops the queued work, waits for the running work and closes
    what is still open, without raising."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._writers = ThreadPoolExecutor(self.workers, thread_name_prefix="restore-write")
        self._syncs = ThreadPoolExecutor(SYNCS_PER_WRITER * self.workers, thread_name_prefix="restore-sync")
        self._slices = threading.Semaphore(2 * self.workers)
        """Slices queued or being written: each holds its chunk in memory."""
        self._files = threading.Semaphore(MAX_OPEN_FILES)
        self._lock = threading.Lock()
        self._open: set[_OpenFile] = set()
        self._error: Exception | None = None

    def create(self, path: Path, owner: Owner) -> _OpenFile:
        """Create ``path`` 0600 for ``owner``, here: a name that exists fails at once
        (``FileExistsError``), and so does a link in its place."""
        self._check()
        self._files.acquire()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, FILE_MODE)
        except BaseException:
            self._files.release()
            raise
        f = _OpenFile(fd)
        with self._lock:
            self._open.add(f)
        os.fchmod(fd, FILE_MODE)
        give_to(path, owner, fd=fd)
        return f

    def write(self, f: _OpenFile, data: memoryview, offset: int) -> None:
        self._check()
        self._slices.acquire()
        with self._lock:
            f.pending += 1
        try:
            self._writers.submit(self._write, f, data, offset)
        except BaseException:
            self._slices.release()
            raise

    def finish(self, f: _OpenFile) -> None:
        """Every slice of ``f`` has been handed over: it is synced and closed after the last."""
        self._check()
        with self._lock:
            f.complete = True
            synced_here = f.pending == 0
        if synced_here:
            self._syncs.submit(self._sync, f)

    def _write(self, f: _OpenFile, data: memoryview, offset: int) -> None:
        try:
            if self._error is not None:
                return
            while data:
                n = os.pwrite(f.fd, data, offset)
                data, offset = data[n:], offset + n
            with self._lock:
                f.pending -= 1
                last = f.complete and f.pending == 0
            if last:
                self._syncs.submit(self._sync, f)
        except Exception as exc:  # noqa: BLE001 - handed to the parsing thread, which raises it
            self._fail(exc)
        finally:
            self._slices.release()

    def _sync(self, f: _OpenFile) -> None:
        try:
            if self._error is not None:
                return
            os.fsync(f.fd)
            with self._lock:
                self._open.discard(f)
            os.close(f.fd)
            self._files.release()
        except Exception as exc:  # noqa: BLE001 - handed to the parsing thread, which raises it
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._writers.shutdown(wait=True)  # the writers hand their last files to the syncs
        self._syncs.shutdown(wait=True)
        self._close_leftovers()
        self._check()

    def abort(self) -> None:
        self._fail(RuntimeError("the extraction was aborted"))  # queued work does nothing
        self._writers.shutdown(wait=True, cancel_futures=True)
        self._syncs.shutdown(wait=True, cancel_futures=True)
        self._close_leftovers()

    def _close_leftovers(self) -> None:
        with self._lock:
            left, self._open = self._open, set()
        for f in left:
            os.close(f.fd)


# -- extraction ----------------------------------------------------------------------------
def extract_tar(chunks: Iterable[bytes], dest: Path, owner: Owner, *, writers: int = 1) -> ExtractStats:
    """Extract the tar stream ``chunks`` into the (empty, existing) directory ``dest``, the files'
    contents written by ``writers`` threads."""
    stats = ExtractStats(writers=max(1, writers))
    directories: list[Path] = [dest]
    window = ChunkWindow(chunks)
    pool = FileWriters(writers)
    try:
        with tarfile.TarFile(fileobj=window, mode="r") as tar:  # type: ignore[arg-type]
            for member in tar:
                rel = member_path(member.name)
                if rel is None:
                    continue
                _check_member(member, rel, stats)
                _make_parents(dest, rel, owner, directories)
                try:
                    _extract_member(window, pool, member, rel, dest, owner, directories, stats)
                except FileExistsError:
                    raise UnsafeArchive(f"the backup holds {rel!r} twice; refusing to overwrite it") from None
        window.drain()  # the digest of the whole stream is checked when it ends
        pool.close()
    except BaseException:
        pool.abort()
        raise
    for directory in reversed(directories):
        fsync_dir(directory)
    stats.directories = len(directories) - 1
    return stats


def _check_member(member: tarfile.TarInfo, rel: str, stats: ExtractStats) -> None:
    """Refuse a member before anything is made for it."""
    if member.type == tarfile.SYMTYPE:
        _check_symlink(rel, member.linkname)
    elif member.type == tarfile.LNKTYPE:
        source = member_path(member.linkname)
        if source is None or source not in stats.names:
            raise UnsafeArchive(
                f"the backup holds a hard link {rel} to {member.linkname!r}, which is not a "
                "file extracted before it; refusing to restore it"
            )
    elif member.type not in (*_REGULAR, tarfile.DIRTYPE) or member.sparse is not None:
        raise UnsafeArchive(
            f"the backup holds {rel!r} of tar type {member.type!r} (a device, FIFO or other "
            "special file, or a sparse file); a data directory holds only files, directories and links"
        )


def _extract_member(
    window: ChunkWindow,
    pool: FileWriters,
    member: tarfile.TarInfo,
    rel: str,
    dest: Path,
    owner: Owner,
    directories: list[Path],
    stats: ExtractStats,
) -> None:
    target = dest / rel
    if member.type in _REGULAR:
        _write_file(window, pool, member, target, owner)
        stats.files += 1
        stats.bytes += member.size
        stats.names.add(rel)
    elif member.type == tarfile.DIRTYPE:
        _make_dir(target, owner, directories)
    elif member.type == tarfile.SYMTYPE:
        os.symlink(member.linkname, target)
        give_to(target, owner)
        stats.links += 1
    else:  # a hard link, checked by _check_member
        os.link(dest / str(member_path(member.linkname)), target, follow_symlinks=False)
        stats.links += 1


def _make_parents(dest: Path, rel: str, owner: Owner, directories: list[Path]) -> None:
    current = dest
    for part in rel.split("/")[:-1]:
        current = current / part
        if not current.exists():
            _make_dir(current, owner, directories)


def _make_dir(path: Path, owner: Owner, directories: list[Path]) -> None:
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise UnsafeArchive(f"the backup holds {path.name} both as a file and as a directory") from None
        return  # made earlier as a parent: its mode and owner are set already
    os.chmod(path, DIR_MODE)  # mkdir's mode goes through the umask
    give_to(path, owner)
    directories.append(path)


def _write_file(
    window: ChunkWindow, pool: FileWriters, member: tarfile.TarInfo, path: Path, owner: Owner
) -> None:
    """Create ``path`` here (so a repeated name fails at once); its contents go to the writers."""
    f = pool.create(path, owner)
    offset = 0
    for piece in window.take(member.size):
        pool.write(f, piece, offset)
        offset += len(piece)
    pool.finish(f)
