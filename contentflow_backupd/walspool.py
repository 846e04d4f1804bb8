"""The WAL prefetch spool: segments fetched (and authenticated) ahead of PostgreSQL's recovery,
waiting in a local directory until its ``restore_command`` asks for them.

Standard library only, outside any subpackage and without ``from __future__`` (each import is
a fraction of a millisecond of every ``restore_command``): ``wal fetch`` serves from here before it
loads anything heavy (``entry.py``). The prefetch helper fills it (``ops/wal/prefetch.py``).

Layout of ``<state dir>/wal-prefetch/<cluster>/`` (mode 0700):

- ``helper.lock``: held (``flock``) by the one running helper, which writes ``<pid> <token>``
  into it once it has emptied the spool at its start; the token is random, new for each helper.
- ``<name>``: a segment as ``WalArchive.fetch`` returned it: every chunk authenticated (AES-GCM)
  when it was fetched. Written to a temporary name and renamed, after its identity:
- ``<name>.id``: ``<token> <device> <inode> <size> <mtime_ns>`` of the file the helper wrote.
  ``wal fetch`` serves a segment only when the helper that wrote it still holds the lock (its
  token) and the file is still the very one it wrote (same device, inode, size and modification
  time). So a file left by an earlier helper (a crash, a reboot: its data may be torn), or changed
  in the spool since, is never given to PostgreSQL: it is removed, and the segment is fetched from
  the repository. (Reading and hashing 16 MiB would cost more than the rest of the call.)
- ``<name>.fetching``: the helper is fetching it now (a request for it waits instead of fetching
  it a second time).
- ``want``: the name PostgreSQL asked for last (the helper prefetches the segments after it),
  overwritten in place (padded), so that asking costs no rename.
"""

import os
import time

WANT = "want"
LOCK = "helper.lock"
IDENTITY = ".id"
FETCHING = ".fetching"
_TMP = ".tmp-"
_WANT_SIZE = 64


def file_identity(st: os.stat_result) -> list[str]:
    return [str(st.st_dev), str(st.st_ino), str(st.st_size), str(st.st_mtime_ns)]


def read_token(lock_fd: int) -> str | None:
    """The token a running helper wrote into the lock file (None: not written yet)."""
    try:
        parts = os.pread(lock_fd, 128, 0).decode().split()
    except (OSError, UnicodeDecodeError):
        return None
    return parts[1] if len(parts) == 2 else None


class WalSpool:
    def __init__(self, path: str) -> None:
        self.path = path

    def _p(self, name: str) -> str:
        return os.path.join(self.path, name)

    def create(self) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    # -- the helper's side -------------------------------------------------------------------
    def put(self, name: str, data: bytes, token: str) -> None:
        """Store ``data`` (authenticated by the caller) as ``name``, written by the helper of
        ``token``: identity first, then the data under its name, so that a name present is a
        whole file with its identity."""
        tmp = self._p(f"{_TMP}{name}-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            st = os.fstat(fd)
        finally:
            os.close(fd)
        with open(self._p(name + IDENTITY), "w") as f:
            f.write(" ".join([token, *file_identity(st)]))
        os.replace(tmp, self._p(name))

    def fetching(self, name: str, on: bool) -> None:
        marker = self._p(name + FETCHING)
        if on:
            with open(marker, "w"):
                pass
        else:
            _unlink(marker)

    def names(self) -> set[str]:
        """Segments waiting in the spool (whole, with their identity)."""
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return set()
        return {e for e in entries if "." not in e and e not in (WANT,) and not e.startswith(_TMP)}

    def write_token(self, lock_fd: int, token: str) -> None:
        """The helper's mark, once the spool is emptied: segments it writes carry ``token``."""
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()} {token}\n".encode(), 0)

    def drop(self, name: str) -> None:
        for suffix in ("", IDENTITY, FETCHING):
            _unlink(self._p(name + suffix))

    def clear(self, *, keep_want: bool = False) -> None:
        """Remove every file but the lock: the helper's last act, and its first (then keeping
        ``want``: the request of the ``wal fetch`` that started it) after a crash."""
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return
        for e in entries:
            if e != LOCK and not (keep_want and e == WANT):
                try:
                    os.unlink(self._p(e))
                except (FileNotFoundError, IsADirectoryError):
                    continue

    def wanted(self) -> tuple[str, float] | None:
        """The name PostgreSQL asked for last, and when."""
        try:
            with open(self._p(WANT), "rb") as f:
                name = f.read(_WANT_SIZE).decode().strip()
            return name, os.stat(self._p(WANT)).st_mtime
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    # -- restore_command's side ------------------------------------------------------------------
    def want(self, name: str) -> None:
        """Tell the helper what PostgreSQL asks for: written in place, padded to a fixed size (a
        reader sees the old name, the new one, or blanks it ignores; never a rename to pay)."""
        fd = os.open(self._p(WANT), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, name.encode()[:_WANT_SIZE].ljust(_WANT_SIZE), 0)
        finally:
            os.close(fd)

    def serve(self, name: str, dest: str, token: str | None, wait_s: float = 0.0) -> bool:
        """Give ``name`` to PostgreSQL at ``dest`` when the running helper (``token``: its mark
        in the lock file) wrote it and it is unchanged, after waiting up to ``wait_s`` while the
        helper is fetching it. False: fetch it from the repository."""
        if token is None:
            return False
        path = self._p(name)
        deadline = time.monotonic() + wait_s
        while not os.path.exists(path):
            if time.monotonic() >= deadline or not os.path.exists(path + FETCHING):
                return False
            time.sleep(0.005)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            try:
                with open(path + IDENTITY) as f:
                    expected = f.read().split()
            except FileNotFoundError:
                return False
            if expected != [token, *file_identity(os.fstat(fd))]:
                self.drop(name)  # an earlier helper's, or changed here: never served
                return False
            dest = os.path.abspath(dest)
            try:
                os.replace(path, dest)  # the file just checked (only the helper writes here)
            except OSError:  # another file system: copy it
                _copy(fd, dest)
        finally:
            os.close(fd)
        self.drop(name)
        return True


def _copy(fd: int, dest: str) -> None:
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.wal-fetch-{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            offset = 0
            while block := os.pread(fd, 1 << 20, offset):
                out.write(block)
                offset += len(block)
        os.replace(tmp, dest)
    finally:
        _unlink(tmp)


def _unlink(path: str) -> None:
    """Remove ``path`` if it exists (not ``contextlib.suppress``: importing contextlib costs a few
    milliseconds of every ``restore_command``)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
