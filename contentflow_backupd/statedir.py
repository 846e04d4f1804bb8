"""Where the state directory is by default. Standard library only: the settings use it, and so
do the lean ``wal push`` and ``wal fetch`` clients (``walsocket.py``, ``entry.py``), which must find
the daemon's socket and the prefetch spool without importing pydantic (or even ``pathlib``, whose
import costs a few milliseconds of every ``archive_command``)."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


def default_state_path() -> str:
    """``$STATE_DIRECTORY`` (systemd), else ``/var/lib/contentflow-backupd`` as root, else
    ``$XDG_STATE_HOME/contentflow-backupd`` (``~/.local/state/contentflow-backupd``)."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    if os.geteuid() == 0:
        return "/var/lib/contentflow-backupd"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "contentflow-backupd")


def default_state_dir() -> Path:
    """``default_state_path()`` as a ``Path`` (the settings' type)."""
    from pathlib import Path

    return Path(default_state_path())


def default_member(state_dir: str | Path, host: str | None = None) -> str:
    """The default fleet member name (``fleet.member``): the host name (``host``, default this
    machine's) and 8 hex digits of BLAKE2b over the state directory's absolute path, so that two
    daemons of one host with their own state directories are two members, and a restarted daemon
    is the same member. Characters outside ``[A-Za-z0-9_.-]`` become ``-``."""
    import hashlib
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]", "-", host if host is not None else os.uname().nodename)
    name = name.lstrip("_.-")[:100] or "host"
    digest = hashlib.blake2b(os.path.abspath(os.fspath(state_dir)).encode(), digest_size=4).hexdigest()
    return f"{name}-{digest}"
