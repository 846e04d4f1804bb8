"""Processes: is a pid alive, stop a child (stdlib only; Linux ``/proc`` where it helps)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

__all__ = ["process_alive", "stop_process"]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this machine. A process of another user (``EPERM``) runs; a zombie,
    not reaped yet by its parent (a container's init may be slow), does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return not fields or fields[0] != "Z"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10, *, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to a running child, then kill it if it has not exited within ``timeout``
    seconds, and reap it. True when it had to be killed."""
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True
    return False
