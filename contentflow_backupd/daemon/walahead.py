"""Pushing ahead: while PostgreSQL's archiver works through its backlog one ``archive_command`` at a
time, the daemon pushes the next segments it has marked ready, in parallel, so that the
archiver's call for a segment already stored is one round trip (pgBackRest's ``archive-async``
does the same with a spool).

- The daemon learns the ``pg_wal`` directory from the archiver's own requests (the client sends
  the file's absolute path), so it needs no setting and pushes only for a server that archives
  into it. It pushes files whose ``archive_status/<name>.ready`` exists: complete files that
  PostgreSQL will not change or recycle before the archiver's call for them exits 0.
- The ``.ready`` files stay PostgreSQL's: the daemon never renames or removes anything in
  ``pg_wal``. A segment counts as archived for PostgreSQL only when its ``archive_command`` exits
  0, exactly as without this.
- The archiver's call for a segment pushed ahead is answered from memory only when its open file
  is the very file that was pushed (same device, inode, size and modification time); anything
  else is pushed (and checked) as usual. A push ahead that fails (a conflict, a storage error) is
  only logged: the archiver's own call then pushes and reports it.
- Bounds: at most ``limit`` pushes ahead at once (each holds one segment in memory), and the
  names of the last ``REMEMBERED`` pushes.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from typing import NamedTuple

import structlog

from contentflow_backupd.errors import BackupdError
from contentflow_backupd.wal import classify

log = structlog.get_logger(__name__)

REMEMBERED = 4096
WAIT_FOR_RUNNING_S = 300.0
"""How long the archiver's call waits for a push ahead of the same file that is running."""


class FileId(NamedTuple):
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


Push = Callable[[str, bytes], str]
"""Push ``data`` as WAL file ``name`` (durably) and return ``stored`` or ``duplicate``."""


class PushAhead:
    def __init__(self, push: Push, limit: int) -> None:
        self._push = push
        self.limit = limit
        self._lock = threading.Lock()
        self._pg_wal: str | None = None
        self._done: collections.OrderedDict[str, tuple[FileId, str]] = collections.OrderedDict()
        self._running: dict[str, threading.Event] = {}
        self._ahead = 0
        self._stopped = False

    def stop(self) -> None:
        with self._lock:
            self._stopped = True

    # -- what the archiver asks ----------------------------------------------------------
    def saw(self, path: str | None) -> None:
        """The archiver asked for ``path``: remember its ``pg_wal``, and push ahead of it."""
        if self.limit <= 0 or not path or not os.path.isabs(path):
            return
        directory = os.path.dirname(path)
        if os.path.basename(directory) != "pg_wal" or not os.path.isdir(
            os.path.join(directory, "archive_status")
        ):
            return
        with self._lock:
            self._pg_wal = directory
        self.kick()

    def pushed(self, name: str, fd: int) -> str | None:
        """The status of ``name`` when the file open at ``fd`` is the one pushed ahead (waiting
        for a push of it that is running), else None: push it as usual. ``stored`` the first
        time, ``duplicate`` after, as the direct path would say."""
        with self._lock:
            running = self._running.get(name)
        if running is not None:
            running.wait(WAIT_FOR_RUNNING_S)
        with self._lock:
            done = self._done.get(name)
        if done is None:
            return None
        file_id, status = done
        if FileId.of(os.fstat(fd)) != file_id:
            return None
        self.remember(name, file_id, "duplicate")  # a later call for it: nothing new stored
        return status

    def claim(self, name: str) -> threading.Event | None:
        """The archiver's call pushes ``name`` itself: no push ahead of it starts meanwhile.
        Returns the event to pass to ``release``; None when a push ahead already runs."""
        with self._lock:
            if name in self._running:
                return None
            event = self._running[name] = threading.Event()
            return event

    def release(self, name: str, event: threading.Event | None) -> None:
        if event is None:
            return
        with self._lock:
            if self._running.get(name) is event:
                del self._running[name]
        event.set()

    # -- pushing ahead ---------------------------------------------------------------------
    def kick(self) -> None:
        """Start pushes of the next ready files, up to the limit."""
        with self._lock:
            pg_wal = self._pg_wal
            room = self.limit - self._ahead
            if pg_wal is None or room <= 0 or self._stopped:
                return
        try:
            ready = sorted(
                entry.name[: -len(".ready")]
                for entry in os.scandir(os.path.join(pg_wal, "archive_status"))
                if entry.name.endswith(".ready")
            )
        except OSError as exc:
            log.debug("wal_push_ahead_unreadable", error=str(exc))
            return
        for name in ready:
            if classify(name) is None:
                continue
            with self._lock:
                if room <= 0 or self._stopped:
                    return
                if name in self._done or name in self._running:
                    continue
                event = self._running[name] = threading.Event()
                self._ahead += 1
                room -= 1
            threading.Thread(
                target=self._push_ahead, args=(pg_wal, name, event), name="wal-push-ahead", daemon=True
            ).start()

    def _push_ahead(self, pg_wal: str, name: str, event: threading.Event) -> None:
        try:
            try:
                fd = os.open(os.path.join(pg_wal, name), os.O_RDONLY)
            except OSError:
                return  # archived and recycled meanwhile, or not ours to read
            try:
                file_id = FileId.of(os.fstat(fd))
                data = read_all(fd, file_id.size)
            finally:
                os.close(fd)
            try:
                status = self._push(name, data)
            except BackupdError as exc:
                log.info("wal_push_ahead_failed", wal=name, error=exc.message)
                return
            self.remember(name, file_id, status)
        except Exception:
            log.exception("wal_push_ahead_crashed", wal=name)
        finally:
            with self._lock:
                self._ahead -= 1
                if self._running.get(name) is event:
                    del self._running[name]
            event.set()
        self.kick()

    def remember(self, name: str, file_id: FileId, status: str) -> None:
        with self._lock:
            self._done[name] = (file_id, status)
            self._done.move_to_end(name)
            while len(self._done) > REMEMBERED:
                self._done.popitem(last=False)


def read_all(fd: int, size_hint: int) -> bytes:
    parts: list[bytes] = []
    offset = 0
    while True:
        block = os.pread(fd, max(size_hint - offset, 1 << 20), offset)
        if not block:
            return b"".join(parts)
        parts.append(block)
        offset += len(block)
