"""Storage in a local directory (a mounted disk, NFS, a USB drive).

A key maps to the file ``root/key``; ``/`` in a key is a directory level. ``put`` writes a temp
file (``.tmp-*``, mode 0600) next to the target, fsyncs it, renames it into place (or, for
``if_absent``, hard-links it, which fails atomically when the target exists) and fsyncs the
directory, so a crash leaves the old object or the new one, never a partial one. Directories are
created with mode 0700 and their parents fsynced. With ``sync=False`` every one of those fsyncs
(the file, its directory, the parents of new directories) waits for the next ``flush``.

Filesystem limits that the contract's other drivers do not have:

- A key cannot also be a "directory" of other keys: ``a/b`` and ``a/b/c`` cannot both exist
  (``StorageError``, not retryable). Repository layouts never need that.
- A key whose last segment starts with ``.tmp-`` is reserved for temp files and rejected.
- ``if_absent`` relies on hard links; on a filesystem without them (FAT, some network mounts)
  it falls back to check-then-rename, which is racy between concurrent writers.
- Deleting the last key of a directory leaves the empty directory behind (harmless; removing it
  would race with a concurrent ``put`` into it).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat as stat_mod
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from contentflow_backupd.errors import (
    ObjectExists,
    ObjectNotFound,
    StorageAccessDenied,
    StorageError,
)
from contentflow_backupd.fsutil import fsync_dir
from contentflow_backupd.storage.base import ObjectInfo, StorageFeatures, validate_key

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20
_FEATURES = StorageFeatures(
    atomic_put=True,
    ranged_get=True,
    create_only=True,
    object_lock=False,
    max_concurrency=8,
    local_path=True,
)
# What link(2) says on filesystems that have no hard links.
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV)
# Errors that mean "there is no object at this path": a missing file, a path through a file, or
# a directory where the key would be a file.
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)


def _translate(exc: OSError, key: str | None, path: Path | str) -> StorageError:
    what = f"{path}" if key is None else f"{path} (key {key!r})"
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT:
        return ObjectNotFound(f"no such object: {what}", key=key)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageAccessDenied(
            f"permission denied: {what}",
            key=key,
            hint="check the owner and mode of the backup directory",
        )
    if exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on device writing {what}", key=key)
    return StorageError(f"local storage error on {what}: {reason}", key=key)


@contextlib.contextmanager
def _fs(key: str | None, path: Path | str) -> Iterator[None]:
    """Translate ``OSError`` from filesystem calls into the storage error tree, once."""
    try:
        yield
    except OSError as exc:
        raise _translate(exc, key, path) from exc


def _check_range(key: str, offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise StorageError(f"invalid range offset={offset} length={length}", key=key)


class _Limited(io.RawIOBase):
    """At most ``remaining`` bytes of an open file; closing it closes the file."""

    def __init__(self, raw: BinaryIO, remaining: int) -> None:
        self._raw = raw
        self._remaining = remaining

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        if self._remaining <= 0:
            return 0
        data = self._raw.read(min(len(view), self._remaining))
        view[: len(data)] = data
        self._remaining -= len(data)
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


class LocalStorage:
    """Objects as files under ``root``. See the module docstring."""

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.abspath(root))
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending_files: set[Path] = set()
        self._pending_dirs: set[Path] = set()

    @property
    def features(self) -> StorageFeatures:
        return _FEATURES

    @property
    def url(self) -> str:
        return self._root.as_uri()

    @property
    def root(self) -> Path:
        return self._root

    def _path(self, key: str) -> Path:
        return self._root / validate_key(key)

    # -- writing --------------------------------------------------------------------------

    def _ensure_dir(self, key: str, directory: Path, *, sync: bool = True) -> None:
        """Create ``directory`` and missing parents (0700), fsyncing each new one's parent now,
        or (``sync=False``) at the next ``flush``, like the object that needs it."""
        if directory.is_dir() or directory.parent == directory:
            return
        self._ensure_dir(key, directory.parent, sync=sync)
        with _fs(key, directory):
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                if directory.is_dir():
                    return  # created by a concurrent put
                raise StorageError(
                    f"{directory} is an object, it cannot also be a directory of keys (key {key!r})",
                    key=key,
                ) from None
            if sync:
                fsync_dir(directory.parent)
            else:
                with self._pending_lock:
                    self._pending_dirs.add(directory.parent)

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False, sync: bool = True) -> int:
        path = self._path(key)
        if path.name.startswith(TMP_PREFIX):
            raise StorageError(f"key {key!r}: names starting with {TMP_PREFIX!r} are reserved")
        self._ensure_dir(key, path.parent, sync=sync)
        with _fs(key, path.parent):
            fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        tmp = Path(tmp_name)
        try:
            size = self._write_temp(key, fd, tmp, stream, sync=sync)
            with _fs(key, path):
                if if_absent:
                    self._link_new(key, tmp, path)
                else:
                    self._replace(key, tmp, path)
                if sync:
                    fsync_dir(path.parent)
                else:
                    with self._pending_lock:
                        self._pending_files.add(path)
                        self._pending_dirs.add(path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return size

    @staticmethod
    def _write_temp(key: str, fd: int, tmp: Path, stream: BinaryIO, *, sync: bool = True) -> int:
        out = os.fdopen(fd, "wb")
        size = 0
        try:
            while True:
                # The caller's stream is read outside the translation: its errors are its own.
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                with _fs(key, tmp):
                    out.write(chunk)
                size += len(chunk)
            with _fs(key, tmp):
                out.flush()
                if sync:
                    os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                out.close()
            raise
        with _fs(key, tmp):
            out.close()
        return size

    @staticmethod
    def _link_new(key: str, tmp: Path, path: Path) -> None:
        try:
            os.link(tmp, path)
        except FileExistsError:
            if path.is_dir():
                raise _conflict(key, path) from None
            raise ObjectExists(f"object already exists: {path}", key=key) from None
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            # A filesystem without hard links (FAT, some network mounts): check, then rename.
            if os.path.lexists(path):
                raise ObjectExists(f"object already exists: {path}", key=key) from None
            os.replace(tmp, path)

    @staticmethod
    def _replace(key: str, tmp: Path, path: Path) -> None:
        try:
            os.replace(tmp, path)
        except IsADirectoryError:
            raise _conflict(key, path) from None

    # -- reading --------------------------------------------------------------------------

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        path = self._path(key)
        _check_range(key, offset, length)
        try:
            f = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            if exc.errno in _MISSING:
                raise ObjectNotFound(f"no such object: {path}", key=key) from exc
            raise _translate(exc, key, path) from exc
        try:
            with _fs(key, path):
                if offset:
                    f.seek(offset)
        except BaseException:
            f.close()
            raise
        if length is None:
            return f
        return io.BufferedReader(_Limited(f, length))

    def get(self, key: str) -> bytes:
        path = self._path(key)
        with self.open(key) as f, _fs(key, path):
            return f.read()

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno in _MISSING:
                raise ObjectNotFound(f"no such object: {path}", key=key) from exc
            raise _translate(exc, key, path) from exc
        if not stat_mod.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"no such object: {path} is not a file", key=key)
        return _info(key, st)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Walk the deepest directory fixed by ``prefix``, sorted so keys come in byte order.

        Within a directory, a subdirectory ``d`` sorts as ``d/``: all its keys start with that,
        so yielding it in that place keeps the global order (``a-b`` < ``a/b`` < ``ab``).
        """
        head, sep, rest = prefix.rpartition("/")
        if sep and not _is_valid_key(head):
            return iter(())  # no key can start with this; and "../" must not leave the root
        start = self._root / head if head else self._root
        key_base = f"{head}/" if head else ""
        return self._walk(start, key_base, rest)

    def _walk(self, directory: Path, key_base: str, name_prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if e.name.startswith(name_prefix)]
        except OSError as exc:
            if exc.errno in _MISSING:
                return
            raise _translate(exc, None, directory) from exc
        keyed: list[tuple[str, os.DirEntry[str], bool]] = []
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX):
                continue
            with _fs(None, entry.path):
                is_dir = entry.is_dir()
            keyed.append((entry.name + "/" if is_dir else entry.name, entry, is_dir))
        keyed.sort(key=lambda item: item[0])
        for _, entry, is_dir in keyed:
            key = key_base + entry.name
            if is_dir:
                yield from self._walk(Path(entry.path), key + "/", "")
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # deleted while we were listing
            except OSError as exc:
                raise _translate(exc, key, entry.path) from exc
            if stat_mod.S_ISREG(st.st_mode):
                yield _info(key, st)

    # -- deleting -------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except OSError as exc:
            if exc.errno in _MISSING or (exc.errno == errno.EPERM and path.is_dir()):
                return
            raise _translate(exc, key, path) from exc
        with _fs(key, path.parent):
            fsync_dir(path.parent)

    def flush(self) -> None:
        """fsync every file and directory written with ``sync=False`` before this call. By now
        the kernel has usually written most of the data back, so this costs far less than an
        fsync per object.

        Flushes run one at a time: a flush called while another one runs (a writer flushing in
        the background while it streams) waits for it, then fsyncs what is still pending, so it
        never returns before the files the other one took are durable (or put back as pending
        when that one failed)."""
        with self._flush_lock:
            self._flush_pending()

    def _flush_pending(self) -> None:
        with self._pending_lock:
            files, dirs = self._pending_files, self._pending_dirs
            self._pending_files, self._pending_dirs = set(), set()
        try:
            for path in sorted(files):
                with _fs(None, path):
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            for directory in sorted(dirs):
                with _fs(None, directory):
                    fsync_dir(directory)
        except BaseException:
            with self._pending_lock:  # not durable: a later flush must try again
                self._pending_files |= files
                self._pending_dirs |= dirs
            raise

    def close(self) -> None:
        pass


def _is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except StorageError:
        return False
    return True


def _conflict(key: str, path: Path) -> StorageError:
    return StorageError(
        f"{path} is a directory of other keys, it cannot also be an object (key {key!r})",
        key=key,
    )


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key=key, size=st.st_size, modified=datetime.fromtimestamp(st.st_mtime, UTC))
