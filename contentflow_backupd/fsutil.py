"""Small filesystem helpers shared by the storage driver, the restore writers, drills and the
state directory's ``tmp`` (stdlib and ``errors`` only)."""

from __future__ import annotations

import os
from pathlib import Path

from contentflow_backupd.errors import SpaceReserved

__all__ = ["RESERVE_BYTES", "RESERVE_SHARE", "free_space_reserve", "fsync_dir", "require_free_space"]

RESERVE_BYTES = 1024**3
RESERVE_SHARE = 0.05
"""The free space kept on a local file system before a drill or a large temporary file starts:
1 GiB, or 5% of a file system smaller than 20 GiB. It is the room the WAL spools (``wal-spool``,
``wal-prefetch`` in the state directory) need while the repository is out of reach."""


def free_space_reserve(total_bytes: int) -> int:
    """The reserve of a file system of ``total_bytes``: ``RESERVE_BYTES`` or ``RESERVE_SHARE``
    of it, whichever is smaller."""
    return min(RESERVE_BYTES, int(total_bytes * RESERVE_SHARE))


def require_free_space(path: Path, what: str) -> None:
    """``SpaceReserved`` naming ``path``, its free bytes and the reserve when the file system
    ``path`` is on (or would be on: its nearest existing parent) has less free space than
    :func:`free_space_reserve` keeps; ``what`` is what refuses to start."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    reserve = free_space_reserve(total)
    if free < reserve:
        raise SpaceReserved(
            f"{what} did not start: {path} has {free} bytes free ({free / 2**20:.0f} MiB), below the "
            f"reserve of {reserve} bytes ({reserve / 2**20:.0f} MiB: 1 GiB, or 5% of a smaller file "
            "system) kept for the WAL spools",
            hint="free space on that file system, or move the state directory (BACKUPD_STATE_DIR) or "
            "the drills' scratch directory (BACKUPD_DRILL__SCRATCH_DIR) to a larger one",
        )


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that the entries created, renamed or removed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
