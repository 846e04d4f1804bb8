"""How the daemon process leaves when a clean stop is not possible: a deadline armed at the first
signal, an exit that does not wait for stuck threads, an exception raised in a job's thread."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading

import structlog

log = structlog.get_logger(__name__)

EXIT_FAILED_STOP = 1


def arm_exit(delay: float, code: int, reason: str) -> None:
    """End the process with ``code`` in ``delay`` seconds unless it ended before."""
    timer = threading.Timer(delay, forced_exit, args=(code, reason))
    timer.name = "shutdown-deadline"
    timer.daemon = True
    timer.start()


def forced_exit(code: int, reason: str) -> None:
    # Logging is tried on its own thread: a stuck stderr or a log lock held by a stuck thread
    # must not keep us from leaving.
    names = sorted(t.name for t in threading.enumerate() if t is not threading.current_thread())
    message = threading.Thread(
        target=lambda: log.error("daemon_exit_forced", reason=reason, exit_code=code, threads=names),
        daemon=True,
    )
    message.start()
    message.join(1.0)
    os._exit(code)  # no flush: the main thread may hold a stream's lock, blocked in a write


def exit_now(code: int) -> None:
    """Leave without waiting for threads (a stuck job thread would keep ``sys.exit`` waiting)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def raise_in_thread(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    """Raise ``exc_type`` in ``thread`` at its next Python instruction (a blocked system call
    returns first: ``terminate_children`` ends the pipes it waits on)."""
    if thread.ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))
