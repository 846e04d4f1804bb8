"""The stall watchdog: a daemon job whose progress has not moved for ``jobs.stall_timeout`` is
stopped and recorded ``failed`` ("stalled"), so one cluster's hung job (a ``pg_dump`` behind a
lock, a server that stopped answering) does not hold a worker of the shared pool forever.

Progress is the job's ``observability.progress.Tracker``: its position (phase, when the phase
started, units done) changes whenever the job moves. The loops that move data advance it (a dump
or a base backup: every chunk read, about 1 MiB; a restore: every chunk written; verification:
every object), so a healthy job moves every few seconds. A phase that waits with its own bound
(``waiting for WAL``: ``wal.archive_timeout``) declares it (``quiet_s``): the watchdog counts
only the time past that bound.

:class:`StallRule` is the decision (pure, its clock given); :func:`watching` runs it on a thread
beside one job and calls ``on_stall`` once. What stopping means is the job runner's
(``JobRunner.stall``): the job's cancel event (``model.JobCancel.fail``), SIGTERM to its
children, a cancel request to its queries.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Position = tuple[str, float, int, float | None]
"""``Tracker.position()``: phase, when it started, units done, ``quiet_until``."""

CHECK_MIN = 0.5
CHECK_MAX = 15.0


@dataclass
class Stalled:
    """A stall: how long nothing moved, and in which phase."""

    seconds: float
    phase: str

    def reason(self, timeout_s: float) -> str:
        return (
            f"stalled: no progress for {self.seconds:.0f}s in phase {self.phase!r} "
            f"(BACKUPD_JOBS__STALL_TIMEOUT is {timeout_s:g}s)"
        )


class StallRule:
    """Has the job stalled? Fed its position at times ``now`` (seconds of one monotonic clock):
    stalled once the position has not changed for ``timeout_s``, not counting the time its
    phase may be quiet (``quiet_until``)."""

    def __init__(self, timeout_s: float, now: float) -> None:
        if timeout_s <= 0:
            raise ValueError("a stall timeout is greater than zero")
        self.timeout_s = timeout_s
        self._last: Position | None = None
        self._since = now

    def check(self, position: Position, now: float) -> Stalled | None:
        if position != self._last:
            self._last, self._since = position, now
            return None
        quiet_until = position[3]
        since = self._since if quiet_until is None else max(self._since, quiet_until)
        if math.isinf(since):
            return None
        if now - since >= self.timeout_s:
            return Stalled(now - self._since, position[0])
        return None


def check_interval(timeout_s: float) -> float:
    """How often the watchdog looks: often enough to stop a stall within about a tenth of the
    timeout past it, rarely enough to cost nothing."""
    return min(CHECK_MAX, max(CHECK_MIN, timeout_s / 10))


@contextlib.contextmanager
def watching(
    position: Callable[[], Position],
    timeout_s: float | None,
    on_stall: Callable[[Stalled], None],
    *,
    clock: Callable[[], float] = time.monotonic,
    name: str = "stall-watchdog",
) -> Iterator[None]:
    """Watch one job while the block runs: ``on_stall`` is called once, on the watchdog's
    thread, when :class:`StallRule` says it stalled. ``timeout_s`` None: not watched."""
    if timeout_s is None:
        yield
        return
    done = threading.Event()
    interval = check_interval(timeout_s)

    def watch() -> None:
        rule = StallRule(timeout_s, clock())
        while not done.wait(interval):
            stalled = rule.check(position(), clock())
            if stalled is not None:
                on_stall(stalled)
                return

    # in a copy of this thread's context: its log events carry the job's bound fields
    thread = threading.Thread(target=contextvars.copy_context().run, args=(watch,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
