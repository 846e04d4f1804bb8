"""Where a restore drill works, and how a crashed drill is cleaned up.

Each drill works in ``<state_dir>/drills/<drill-id>/``: ``pgdata`` (the restored or new data
directory), ``pgdata.recovery`` (restore_command's settings), ``run`` (socket, pg_hba.conf,
server log). The directory holds a marker, ``drill.json``: the drill's pid (and its process start
time, so a reused pid is not mistaken for it), host, the server binaries and the scratch database
on ``BACKUPD_DRILL__DATABASE_URL``, when any. The marker is written before the directory appears
under its name (it is made as ``.new-<id>`` and renamed), so a directory without a marker is
never a live drill's.

``cleanup_stale_drills(state_dir)`` stops any scratch postmaster whose drill is gone (``pg_ctl
stop -m immediate``), drops its scratch database when given the drill server's connection, and
removes the directory. Every drill calls it first; the daemon calls it at start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import iso, utcnow
from contentflow_backupd.ops.locks import pid_alive
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.postgres import drop_database
from contentflow_backupd.source.scratch import (
    ScratchServer,
    check_reachable,
    server_bin_dir,
    server_owner,
    stop_leftover,
)

log = structlog.get_logger(__name__)

DRILLS_DIR = "drills"
MARKER = "drill.json"
NEW_PREFIX = ".new-"
ABANDONED_NEW_S = 3600.0
"""A ``.new-*`` directory older than this was left by a drill that died while creating it."""


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux ``/proc``), None elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class Workspace:
    """A drill's directory, its marker, and the scratch server started in it (registered
    before it starts, so that whatever happens next, the drill stops it)."""

    path: Path
    marker: dict[str, Any]
    server: ScratchServer | None = None

    @property
    def pgdata(self) -> Path:
        return self.path / "pgdata"

    @property
    def run_dir(self) -> Path:
        return self.path / "run"

    @classmethod
    def create(cls, state_dir: Path, drill_id: str, *, shared: bool) -> Workspace:
        """Make ``<state_dir>/drills/<drill_id>`` with its marker. ``shared``: another OS user
        (the scratch server's) must be able to enter it (mode 0711, not listable)."""
        root = state_dir / DRILLS_DIR
        mode = 0o711 if shared else 0o700
        root.mkdir(parents=True, exist_ok=True, mode=mode)
        os.chmod(root, mode)
        marker = {
            "id": drill_id,
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "host": socket.gethostname(),
            "started_at": iso(utcnow()),
            "bin_dir": None,
            "database": None,
        }
        new = root / f"{NEW_PREFIX}{drill_id}"
        new.mkdir(mode=mode)
        os.chmod(new, mode)
        workspace = cls(new, marker)
        workspace._write_marker()
        final = root / drill_id
        os.rename(new, final)
        workspace.path = final
        return workspace

    def note(self, **facts: Any) -> None:
        """Record facts the cleanup needs (``bin_dir``, ``database``) before they matter."""
        self.marker.update({k: str(v) if isinstance(v, Path) else v for k, v in facts.items()})
        self._write_marker()

    def start_empty_server(
        self,
        major: int,
        pg_bin: Path | None,
        *,
        ready_timeout: float | None = None,
        client_bin: Path | None = None,
    ) -> ScratchServer:
        """A fresh PostgreSQL ``major`` (``initdb``) started in this workspace as the server's OS
        user, answering queries; registered as ``self.server`` before it starts."""
        owner = server_owner()
        check_reachable(self.path, owner)
        bin_dir = server_bin_dir(major, pg_bin, client_bin)
        self.note(bin_dir=bin_dir)
        server = self.server = ScratchServer(self.pgdata, self.run_dir, bin_dir, owner, superuser="postgres")
        server.make_run_dir()
        server.initdb()
        server.configure()
        server.start()
        server.wait_ready("postgres", promoted=False, timeout=ready_timeout)
        return server

    def _write_marker(self) -> None:
        tmp = self.path / f".{MARKER}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.marker, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / MARKER)

    def remove(self) -> None:
        """Remove the directory, first stopping any postmaster still running in it."""
        bin_dir = self.marker.get("bin_dir")
        try:
            stop_leftover(self.pgdata, Path(bin_dir) if bin_dir else None)
        except (OSError, BackupdError) as exc:
            log.error("drill_server_stop_failed", error=str(exc))
        shutil.rmtree(self.path, ignore_errors=True)


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _owner_alive(marker: dict[str, Any]) -> bool:
    pid = marker.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    if not pid_alive(pid, marker.get("host"), socket.gethostname()):
        return False
    recorded = marker.get("pid_start")
    if marker.get("host") != socket.gethostname() or recorded is None:
        return True
    return bool(_process_start(pid) == recorded)  # another process got the pid: the drill is gone


def _entries(root: Path) -> Iterator[Path]:
    try:
        yield from sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return


def cleanup_stale_drills(state_dir: Path, *, database: ConnInfo | None = None) -> list[str]:
    """Stop and remove what drills that are no longer running left under
    ``<state_dir>/drills/``: scratch postmasters (immediate shutdown), their files and, given
    ``database`` (the drill server, ``BACKUPD_DRILL__DATABASE_URL``), their scratch databases.
    A directory whose scratch database cannot be dropped now is kept (its marker names the
    database) for a later call. Drills still running (their pid lives) are left alone. Returns
    the ids of the drills cleaned up. Never raises for a leftover it cannot remove: logs it."""
    root = state_dir / DRILLS_DIR
    cleaned: list[str] = []
    for entry in _entries(root):
        if entry.name.startswith(NEW_PREFIX):
            with suppress(OSError):
                if time.time() - entry.stat().st_mtime > ABANDONED_NEW_S:
                    shutil.rmtree(entry, ignore_errors=True)
            continue
        marker = _read_marker(entry) or {}
        if _owner_alive(marker):
            continue
        bin_dir = marker.get("bin_dir")
        try:
            if stop_leftover(entry / "pgdata", Path(bin_dir) if bin_dir else None):
                log.warning("drill_server_stopped", drill_id=entry.name, pgdata=str(entry / "pgdata"))
        except (OSError, BackupdError) as exc:
            log.error("drill_cleanup_failed", drill_id=entry.name, error=str(exc))
            continue
        scratch_db = marker.get("database")
        if scratch_db:
            if database is None:
                log.warning("drill_database_left", drill_id=entry.name, database=scratch_db)
                continue
            try:
                drop_database(database, str(scratch_db))
            except BackupdError as exc:
                log.error("drill_cleanup_failed", drill_id=entry.name, database=scratch_db, error=exc.message)
                continue
        shutil.rmtree(entry, ignore_errors=True)
        log.info("drill_cleaned_up", drill_id=entry.name)
        cleaned.append(entry.name)
    return cleaned
