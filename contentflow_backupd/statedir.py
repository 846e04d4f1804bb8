"""Where the state directory is by default. Standard library only: the settings use it, and so
does the lean ``wal push`` client (``walsocket.py``), which must find the daemon's socket without
importing pydantic."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` (systemd), else ``/var/lib/contentflow-backupd`` as root, else
    ``$XDG_STATE_HOME/contentflow-backupd`` (``~/.local/state/contentflow-backupd``)."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/contentflow-backupd")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "contentflow-backupd"
