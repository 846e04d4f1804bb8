"""Local process locks (``flock``) so that two backups of one cluster never run at once here."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from contentflow_backupd.errors import LockedError
from contentflow_backupd.procs import process_alive


@contextmanager
def exclusive(lock_dir: Path, name: str, *, what: str) -> Iterator[None]:
    """Hold ``lock_dir/name.lock`` for the block, or raise ``LockedError`` naming the holder."""
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = lock_dir / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(
                f"{what} is already running (pid {holder}); refusing to run two at once",
                hint="wait for it to finish",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def pid_alive(pid: int | None, host: str | None, this_host: str) -> bool:
    """Whether the process that wrote a ``running`` record may still be running."""
    if pid is None:
        return False
    if host is not None and host != this_host:
        return True  # another machine's process: we cannot tell, assume alive
    return process_alive(pid)
