"""The WAL prefetch spool: segments fetched (and authenticated) ahead of PostgreSQL's recovery,
waiting in a local directory until its ``restore_command`` asks for them.

Standard library only, outside any subpackage and without ``from __future__`` (each import is
a fraction of a millisecond of every ``restore_command``): ``wal fetch`` serves from here before it
loads anything heavy (``entry.py``). The prefetch helper fills it (``ops/wal/prefetch.py``).

Layout of ``<state dir>/wal-prefetch/<cluster>/`` (mode 0700):

- ``helper.lock``: held (``flock``) by the one running helper, which writes ``<pid> <token>
  answers`` into it once it has emptied the spool at its start; the token is random, new for each
  helper; ``answers``: it answers requests (below).
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
- ``want``: ``<name> [<nonce>]``, the name PostgreSQL asked for last (the helper prefetches the
  segments after it), overwritten in place (padded), so that asking costs no rename. With a
  nonce it is a *request*: ``wal fetch`` did not find the file in the spool and waits for the
  helper's answer instead of starting the full command (a Python start with every import, and a
  key derivation: about half a second, paid at every end of recovery and timeline switch, when
  PostgreSQL asks for files that are not archived).
- ``<name>.missing``: ``<token> <nonce> missing|failed``, the helper's answer to the request of
  that nonce: the file is not in the archive (``wal fetch`` exits 1, as the full command does), or
  fetching it failed (``wal fetch`` runs the full command, which reports the error). Only a check
  that *started after* the helper read the request answers it, so "not archived" is as fresh as
  the full command's answer would be. A found file is simply put in the spool and served.
"""

import os
import time

TYPE_CHECKING = False  # not typing's: importing typing costs a few ms of every restore_command
if TYPE_CHECKING:
    from collections.abc import Callable

WANT = "want"
LOCK = "helper.lock"
IDENTITY = ".id"
FETCHING = ".fetching"
MISSING = ".missing"
ANSWERS = "answers"
_TMP = ".tmp-"
_WANT_SIZE = 64
_SUFFIXES = (IDENTITY, FETCHING, MISSING)

SERVED = "served"
NOT_ARCHIVED = "not archived"
FALLBACK = "fallback"
"""What ``wal fetch`` does after asking the helper: the file is at ``dest``; exit 1 (not in the
archive); or run the full command."""


def file_identity(st: os.stat_result) -> list[str]:
    return [str(st.st_dev), str(st.st_ino), str(st.st_size), str(st.st_mtime_ns)]


def read_token(lock_fd: int) -> tuple[str, bool] | None:
    """The token a running helper wrote into the lock file (None: not written yet), and whether
    it answers requests (a helper of an older version does not)."""
    try:
        parts = os.pread(lock_fd, 128, 0).decode().split()
    except (OSError, UnicodeDecodeError):
        return None
    return (parts[1], parts[2:] == [ANSWERS]) if len(parts) in (2, 3) else None


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
        """WAL files waiting in the spool (segments, history files...: whole, with their
        identity)."""
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return set()
        return {
            e
            for e in entries
            if e not in (WANT, LOCK) and not e.startswith(_TMP) and not e.endswith(_SUFFIXES)
        }

    def write_token(self, lock_fd: int, token: str) -> None:
        """The helper's mark, once the spool is emptied: files it writes carry ``token``, and it
        answers requests."""
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()} {token} {ANSWERS}\n".encode(), 0)

    def answer(self, name: str, token: str, nonce: str, found: str) -> None:
        """Answer the request ``nonce`` for ``name``: ``found`` is ``missing`` (not in the
        archive) or ``failed`` (the full command must fetch it and report). Written to a
        temporary name and renamed: a reader sees the whole answer or none."""
        tmp = self._p(f"{_TMP}{name}{MISSING}-{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(f"{token} {nonce} {found}")
        os.replace(tmp, self._p(name + MISSING))

    def drop(self, name: str) -> None:
        for suffix in ("", *_SUFFIXES):
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

    def wanted(self) -> tuple[str, str, float] | None:
        """The name PostgreSQL asked for last, the nonce of the request waiting for an answer
        ("": none waits), and when."""
        try:
            with open(self._p(WANT), "rb") as f:
                parts = f.read(_WANT_SIZE).decode().split()
            mtime = os.stat(self._p(WANT)).st_mtime
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        if not parts:
            return None
        return parts[0], parts[1] if len(parts) > 1 else "", mtime

    # -- restore_command's side ------------------------------------------------------------------
    def want(self, name: str, nonce: str = "") -> None:
        """Tell the helper what PostgreSQL asks for (with ``nonce``: and that this caller waits
        for its answer): written in place, padded to a fixed size (a reader sees the old request,
        the new one, or blanks it ignores; never a rename to pay)."""
        line = f"{name} {nonce}" if nonce else name
        fd = os.open(self._p(WANT), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, line.encode()[:_WANT_SIZE].ljust(_WANT_SIZE), 0)
        finally:
            os.close(fd)

    def await_answer(
        self, name: str, dest: str, token: str, nonce: str, wait_s: float, alive: "Callable[[], bool]"
    ) -> str:
        """After ``want(name, nonce)``: wait up to ``wait_s`` for the helper of ``token`` to put
        ``name`` in the spool (then serve it) or to answer the request. ``SERVED``,
        ``NOT_ARCHIVED`` or ``FALLBACK`` (failed, no answer in time, or the helper is gone:
        ``alive`` is asked about once a second)."""
        path = self._p(name)
        expected = f"{token} {nonce} "
        deadline = check = time.monotonic()
        deadline += wait_s
        while True:
            if os.path.exists(path):
                return SERVED if self.serve(name, dest, token) else FALLBACK
            try:
                with open(path + MISSING) as f:
                    answer = f.read()
            except FileNotFoundError:
                answer = ""
            if answer.startswith(expected):
                _unlink(path + MISSING)  # read: a standby asking every few seconds leaves none
                return NOT_ARCHIVED if answer[len(expected) :] == "missing" else FALLBACK
            now = time.monotonic()
            if now >= deadline:
                return FALLBACK
            if now - check >= 1.0:
                if not alive():
                    return FALLBACK
                check = now
            time.sleep(0.002)

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
