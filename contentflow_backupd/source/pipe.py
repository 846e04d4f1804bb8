"""Reading a child program's stdout pipe with fewer wake-ups, and ahead of the consumer.

``pg_dump`` writes its archive in pieces of a few KB, and a reader that waits on the pipe wakes
up for nearly every one of them: ~40,000 reads for a 570 MB archive, each a system call and a
context switch on both sides, which on a 2-core machine is CPU taken from the server's COPY and
from our pipeline. ``PipeReader`` reads the same bytes in the same order, but after a short read
it lets the pipe fill for a moment (``BATCH_WAIT``) before reading again: ~2,000 reads instead,
and the writer never blocks as long as the pipe holds more than it writes in that moment. That
needs a large pipe: when the pipe could not be widened to ``READ_SIZE`` (``tools.widen_pipe`` is
best effort), every read is taken at once, as before.

``prefetch`` also starts a thread that drains the pipe into memory (at most ``limit`` bytes)
while the command is still starting up (imports, opening the repository and the catalog), so
that the child does not stop at a full pipe: the dump and our start-up then overlap instead of
following each other. Once the consumer reads, the thread goes on reading the pipe while the
consumer works through what was read ahead: for every ``CATCH_UP`` bytes taken it may read
``CATCH_UP - 1``, so the backlog shrinks steadily, the memory held never grows past ``limit``,
and the child keeps going meanwhile; when the backlog is nearly gone, the consumer stops the
thread and reads the pipe itself. Before, the thread stopped at the first read: the child then
waited on a full pipe (and the server's COPY on the child) until the consumer had worked
through the whole backlog, up to 64 MB, with a core partly idle (bench/README.md, 2026-12-08).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

READ_SIZE = 1024 * 1024
"""The most one read takes from the pipe (the size ``tools.widen_pipe`` asks for)."""
SHORT_READ = 256 * 1024
"""A read that returns less than this found the pipe nearly empty: the next one waits first."""
BATCH_WAIT = 0.002
"""Seconds the pipe gets to fill after a short read. A 1 MiB pipe fills in 5 ms at 200 MB/s,
so a writer at that rate still never waits for us."""
PREFETCH_LIMIT = 64 * 1024 * 1024
"""Bytes read ahead while the command starts up (peak memory grows by at most this much)."""
CATCH_UP = 8
"""Once the consumer reads, the read-ahead thread may read ``CATCH_UP - 1`` bytes for every
``CATCH_UP`` the consumer takes: the backlog shrinks by an eighth of what is taken (64 MiB are
gone after 512 MiB), and the child runs at seven eighths of the consumer's pace meanwhile. On 2
cores (340 MB database, ``bench/timeline.py``) the cores stood idle 1.20-1.27 core-s a backup
before, 1.13-1.25 with 2, 1.02-1.06 with 4, 0.89-0.97 with 8; each byte the thread reads
costs one more copy (~0.02 CPU-s per 100 MB)."""


def pipe_size(fd: int) -> int | None:
    """The capacity of the pipe ``fd`` (``F_GETPIPE_SZ``); None where that cannot be asked."""
    import fcntl

    getsz = getattr(fcntl, "F_GETPIPE_SZ", None)
    if getsz is None:
        return None
    with contextlib.suppress(OSError):
        return int(fcntl.fcntl(fd, getsz))
    return None


class PipeReader(io.RawIOBase):
    """A readable binary stream over the pipe ``fd`` (not closed by this object: its owner
    closes the pipe, after ``stop``). Not thread-safe: one consumer reads."""

    def __init__(self, fd: int, *, batch_wait: float = BATCH_WAIT) -> None:
        super().__init__()
        self._fd = fd
        self.batched = (pipe_size(fd) or 0) >= READ_SIZE
        """Whether short reads are followed by ``batch_wait`` (only with a pipe of ``READ_SIZE``)."""
        self._batch_wait = batch_wait if self.batched else 0.0
        self._wait_next = False
        self._eof = False
        self._ahead: deque[bytes] = deque()
        self._ahead_offset = 0
        """Bytes of ``_ahead[0]`` already handed out."""
        self._held = 0
        """Bytes in ``_ahead`` not handed out yet (guarded by ``_room``)."""
        self._taken = 0
        """Bytes the consumer took from ``_ahead`` (guarded by ``_room``)."""
        self._room = threading.Condition()
        """Notified when the consumer took bytes from ``_ahead``, or the thread must stop."""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: OSError | None = None
        self.reads = 0
        """Reads from the pipe so far (for tests and profiles)."""
        self.read_ahead = 0
        """Bytes the prefetch thread read (for tests and profiles)."""
        self.peak_held = 0
        """The most bytes read ahead and not handed out yet at any time (for tests and profiles):
        at most the ``prefetch`` limit."""

    def readable(self) -> bool:
        return True

    # -- reading ahead ------------------------------------------------------------------------
    def prefetch(self, limit: int = PREFETCH_LIMIT) -> None:
        """Drain the pipe into memory on a thread, at most ``limit`` bytes held at once, until
        EOF or the consumer has (nearly) caught up with it (module docstring)."""
        if self._thread is None and limit > 0:
            self._thread = threading.Thread(
                target=self._read_ahead, args=(limit,), name="pipe-ahead", daemon=True
            )
            self._thread.start()

    def _room_for(self, limit: int) -> int:
        """Bytes the thread may read now (under ``_room``): up to ``limit`` held, less one byte
        for every ``CATCH_UP`` the consumer has taken (so the backlog shrinks)."""
        return limit - self._taken // CATCH_UP - self._held

    def _read_ahead(self, limit: int) -> None:
        try:
            while True:
                with self._room:
                    while not self._stop.is_set() and self._room_for(limit) <= 0:
                        self._room.wait()
                    if self._stop.is_set():
                        return
                    room = self._room_for(limit)
                data = self._read(min(READ_SIZE, room))
                if not data:
                    self._eof = True
                    return
                with self._room:
                    self._ahead.append(data)
                    self._held += len(data)
                    self.peak_held = max(self.peak_held, self._held)
                self.read_ahead += len(data)
        except OSError as exc:
            self._error = exc  # raised to the consumer, in order, after what was read

    def stop(self) -> None:
        """End the reading ahead; returns once the thread has left (it leaves after its read
        in progress, which returns at the child's next write or exit). Idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        with self._room:
            self._room.notify_all()
        while thread.is_alive():
            thread.join(timeout=0.1)  # a signal handler can still run meanwhile
        self._thread = None

    # -- reading ------------------------------------------------------------------------------
    def _read(self, size: int) -> bytes:
        if self._wait_next:
            time.sleep(self._batch_wait)
        data = os.read(self._fd, size)
        self.reads += 1
        self._wait_next = self.batched and 0 < len(data) < SHORT_READ
        return data

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        if self._thread is not None and self._held <= len(view):
            # Caught up (or nearly): the rest comes from the pipe directly, after what the
            # thread's read in progress adds.
            self.stop()
        if self._ahead:
            return self._take_ahead(view)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._eof or not len(view):
            return 0
        if self._wait_next:
            time.sleep(self._batch_wait)
        n = os.readv(self._fd, [view[:READ_SIZE]])
        self.reads += 1
        self._wait_next = self.batched and 0 < n < SHORT_READ
        self._eof = n == 0
        return n

    def _take_ahead(self, view: memoryview) -> int:
        """Copy what was read ahead into ``view``, as much as fits."""
        filled = 0
        while self._ahead and filled < len(view):
            head = self._ahead[0]
            n = min(len(head) - self._ahead_offset, len(view) - filled)
            view[filled : filled + n] = memoryview(head)[self._ahead_offset : self._ahead_offset + n]
            filled += n
            self._ahead_offset += n
            if self._ahead_offset == len(head):
                self._ahead.popleft()  # freed as it is handed out
                self._ahead_offset = 0
        with self._room:
            self._held -= filled
            self._taken += filled
            self._room.notify()
        return filled
