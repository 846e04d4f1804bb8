"""Signal handling that is safe whatever the main thread is doing.

A Python signal handler runs in the main thread between two bytecodes, wherever that thread is:
inside ``logging``'s lock, inside ``threading.Event.wait`` (which holds the Event's Condition),
inside ``SystemdNotifier``'s lock around a ``sendto``. A handler that logs, sets an Event, sends a
notification, starts a thread or imports a module can therefore deadlock on a lock its own thread
holds. So every handler in the project does one of two things and nothing else:

- **records** the signal (``SignalWatch``): the handler appends the number to a list, and the
  interpreter's C-level handler writes it to a self-pipe (``signal.set_wakeup_fd``); a watcher
  thread blocked on that pipe wakes, and calls the owner's callback *outside* the handler, where
  logging, ``Event.set`` and notifications are safe. The watcher wakes even while the main thread
  is stuck in a system call, since the C-level handler writes the pipe at once. The daemon and
  ``wal-stream`` use this. A reload signal (SIGHUP, for the daemon) is recorded the same way,
  in its own list: it is not a stop signal, so it never counts towards a second signal.
- **raises** (``raise_interrupted``, the one-shot commands): the first SIGTERM raises
  :class:`Interrupted` in the main thread, which unwinds the command through its ``finally``
  blocks (children stopped, the run recorded ``interrupted``); the handler is reset to the default
  first, so a second signal ends the process at once. SIGINT keeps Python's own handler
  (``KeyboardInterrupt``), which only raises too.

``deferred()`` holds signals back around a short, bounded clean-up that must not be cut in half
(dropping the database an interrupted ``restore --create`` created): they are only recorded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["RELOAD_SIGNALS", "STOP_SIGNALS", "Interrupted", "SignalWatch", "deferred", "raise_interrupted"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNALS = (signal.SIGHUP,)


class Interrupted(BaseException):
    """Raised by a signal handler: the run is recorded as ``interrupted``."""

    def __init__(self, message: str = "interrupted", signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


def raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    """The one-shot commands' SIGTERM handler: a second signal ends the process at once."""
    signal.signal(signum, signal.SIG_DFL)
    raise Interrupted(f"signal {signum}", signum)


class SignalWatch:
    """Record ``signals`` in their handler; call ``on_signal(signum, count)`` on a watcher thread.

    ``count`` is how many of the stop signals (``signals``) arrived so far (1 for the first).
    With ``second_raises`` the handler raises :class:`Interrupted` in the main thread from the
    second stop signal on (stop now), after recording it.

    With ``on_reload``, ``reload_signals`` (SIGHUP) are watched too: recorded in ``reloads``
    (never in ``received``, never counted, never raising), and ``on_reload(signum)`` is called on
    the watcher thread, unless a stop signal arrived before (a reload during shutdown is
    ignored). Without ``on_reload`` they keep their handler. Install and uninstall from the main
    thread (``signal.signal`` and ``signal.set_wakeup_fd`` need it).
    """

    def __init__(
        self,
        on_signal: Callable[[int, int], None],
        signals: tuple[int, ...] = STOP_SIGNALS,
        *,
        second_raises: bool = False,
        on_reload: Callable[[int], None] | None = None,
        reload_signals: tuple[int, ...] = RELOAD_SIGNALS,
    ) -> None:
        overlap = set(signals) & set(reload_signals) if on_reload is not None else set()
        if overlap:
            raise ValueError(f"signals {sorted(overlap)} cannot both stop and reload")
        self._on_signal = on_signal
        self._signals = signals
        self._second_raises = second_raises
        self._on_reload = on_reload
        self._reload_signals = reload_signals if on_reload is not None else ()
        self.received: list[int] = []
        """Stop signals, appended to by the handler (a list append takes no lock), in order."""
        self.reloads: list[int] = []
        """Reload signals, appended to by the handler, in order (the ignored ones too)."""
        self._count = 0
        self._old: dict[int, Any] = {}
        self._old_wakeup = -1
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None

    def install(self) -> SignalWatch:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_end, False)  # the C-level handler never blocks on a full pipe
        self._pipe = (read_end, write_end)
        self._thread = threading.Thread(target=self._watch, name="signal-watch", daemon=True)
        self._thread.start()
        self._old_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for signum in self._signals:
            self._old[signum] = signal.signal(signum, self._record)
        for signum in self._reload_signals:
            self._old[signum] = signal.signal(signum, self._record_reload)
        return self

    def uninstall(self) -> None:
        """Put the previous handlers back; the watcher thread ends."""
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old.clear()
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            _read_end, write_end = self._pipe
            self._pipe = None
            os.close(write_end)  # the watcher reads EOF and ends; it closes the read end

    @property
    def count(self) -> int:
        """How many stop signals arrived (reload signals do not count)."""
        return len(self.received)

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._second_raises and len(self.received) > 1:
            raise Interrupted(f"signal {signum}", signum)

    def _record_reload(self, signum: int, _frame: FrameType | None) -> None:
        self.reloads.append(signum)  # only recorded: the watcher thread acts on it

    def _watch(self) -> None:
        assert self._pipe is not None
        read_end = self._pipe[0]
        try:
            while True:
                try:
                    data = os.read(read_end, 64)
                except InterruptedError:
                    continue
                if not data:
                    return
                for signum in data:
                    if signum in self._signals:
                        self._count += 1
                        self._on_signal(signum, self._count)
                    elif signum in self._reload_signals and self._on_reload is not None and not self._count:
                        self._on_reload(signum)
        finally:
            os.close(read_end)


@contextlib.contextmanager
def deferred(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[list[int]]:
    """Hold ``signals`` back for a short, bounded block (main thread only): a signal that
    arrives meanwhile is only recorded in the yielded list, and the previous handlers come back
    when the block ends. For clean-up that is already the answer to a signal. Off the main
    thread (a daemon job) it holds nothing back: signals are the main thread's business there."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # handlers run in the main thread only: nothing to hold back here
        return

    def record(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    old = {signum: signal.signal(signum, record) for signum in signals}
    try:
        yield received
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
