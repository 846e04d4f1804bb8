"""The WAL prefetch spool: segments fetched (and authenticated) ahead of PostgreSQL's recovery,
waiting in a local directory until its ``restore_command`` asks for them.

Standard library and blake3 only: ``wal fetch`` serves from here before it loads anything heavy
(``entry.py``). The prefetch helper fills it (``ops/wal/prefetch.py``).

Layout of ``<state dir>/wal-prefetch/<cluster>/`` (mode 0700):

- ``<name>``: a segment as ``WalArchive.fetch`` returned it: every chunk authenticated (AES-GCM)
  when it was fetched. Written to a temporary name and renamed, after its digest:
- ``<name>.b3``: the BLAKE3 digest of ``<name>`` (hex). A segment is served only when its bytes
  still have this digest, so a file damaged or changed in the spool (or cut short by a crash) is
  never given to PostgreSQL: it is removed, and the segment is fetched from the repository.
- ``<name>.fetching``: the helper is fetching it now (a request for it waits instead of fetching
  it a second time).
- ``want``: the name PostgreSQL asked for last (the helper prefetches the segments after it).
- ``helper.lock``: held (``flock``) by the one running helper, which writes its pid into it.
"""

from __future__ import annotations

import contextlib
import os
import time

import blake3

WANT = "want"
LOCK = "helper.lock"
DIGEST = ".b3"
FETCHING = ".fetching"
_TMP = ".tmp-"


def digest(data: bytes) -> str:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()


class WalSpool:
    def __init__(self, path: str) -> None:
        self.path = path

    def _p(self, name: str) -> str:
        return os.path.join(self.path, name)

    def create(self) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    # -- the helper's side -------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` (authenticated by the caller) as ``name``: digest first, then the data
        under its name, so that a name present is a whole file with its digest."""
        tmp = self._p(f"{_TMP}{name}-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
        with open(self._p(name + DIGEST), "w") as f:
            f.write(digest(data))
        os.replace(tmp, self._p(name))

    def fetching(self, name: str, on: bool) -> None:
        marker = self._p(name + FETCHING)
        if on:
            with open(marker, "w"):
                pass
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)

    def names(self) -> set[str]:
        """Segments waiting in the spool (whole, with their digest)."""
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return set()
        return {e for e in entries if "." not in e and e not in (WANT,) and not e.startswith(_TMP)}

    def drop(self, name: str) -> None:
        for suffix in ("", DIGEST, FETCHING):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._p(name + suffix))

    def clear(self, *, keep_want: bool = False) -> None:
        """Remove every file but the lock: the helper's last act, and its first (then keeping
        ``want``: the request of the ``wal fetch`` that started it) after a crash."""
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return
        for e in entries:
            if e != LOCK and not (keep_want and e == WANT):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(self._p(e))

    def wanted(self) -> tuple[str, float] | None:
        """The name PostgreSQL asked for last, and when."""
        try:
            with open(self._p(WANT)) as f:
                name = f.read().strip()
            return name, os.stat(self._p(WANT)).st_mtime
        except (FileNotFoundError, ValueError):
            return None

    # -- restore_command's side ------------------------------------------------------------------
    def want(self, name: str) -> None:
        tmp = self._p(f"{_TMP}{WANT}-{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(name)
        os.replace(tmp, self._p(WANT))

    def serve(self, name: str, dest: str, wait_s: float = 0.0) -> bool:
        """Give ``name`` to PostgreSQL at ``dest`` when the spool holds it intact (after waiting
        up to ``wait_s`` while the helper is fetching it). False: fetch it from the repository."""
        path = self._p(name)
        deadline = time.monotonic() + wait_s
        while not os.path.exists(path):
            if time.monotonic() >= deadline or not os.path.exists(path + FETCHING):
                return False
            time.sleep(0.005)
        try:
            with open(path, "rb") as f:
                data = f.read()
            with open(path + DIGEST) as f:
                expected = f.read().strip()
        except FileNotFoundError:
            return False
        if digest(data) != expected:
            self.drop(name)  # damaged or changed here: never served
            return False
        dest = os.path.abspath(dest)
        try:
            os.replace(path, dest)  # the very bytes just checked (only the helper writes here)
        except OSError:  # another file system: write the checked bytes
            tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.wal-fetch-{os.getpid()}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, dest)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        self.drop(name)
        return True
