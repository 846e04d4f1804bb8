"""Where a restore drill works, and how a crashed drill is cleaned up.

Each drill works in ``<state_dir>/drills/<drill-id>/``: ``pgdata`` (the restored or new data
directory), ``pgdata.recovery`` (restore_command's settings), ``run`` (socket, pg_hba.conf,
server log). The directory holds a marker, ``drill.json``: the drill's pid (and its process start
time, so a reused pid is not mistaken for it), host, the server binaries and the scratch database
on ``BACKUPD_DRILL__DATABASE_URL``, when any. The marker is written before the directory appears
under its name (it is made as ``.new-<id>`` and renamed), so a directory without a marker is
never a live drill's.

When the scratch server runs as another OS user than us (we are root, PostgreSQL refuses root: it
runs as ``postgres``), that user cannot enter the state directory (0700, ours, and it must stay
so: it holds the catalog, keys and secrets). The drill's files then live in a scratch directory
of its own outside the state directory: ``mkdtemp`` under ``BACKUPD_DRILL__SCRATCH_DIR`` (default
``/var/tmp``, else the system's temporary directory): a new directory with a random name, made
atomically with mode 0700 and then opened to 0711 (enterable, not listable); inside it ``pgdata``
and ``run`` belong to the server's user with mode 0700. The marker stays in
``<state_dir>/drills/<drill-id>/`` and names that directory (``scratch``), so the cleanup finds
it. Nothing of the state directory is opened to anyone.

``cleanup_stale_drills(state_dir, scratch=..., admin=...)`` stops any scratch postmaster whose
drill is gone (``pg_ctl stop -m immediate``), drops its scratch database when given the drill
server's connection, and removes the directory (and its scratch directory). Every drill calls
it first; the daemon calls it at start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd.errors import BackupdError, UsageError
from contentflow_backupd.fsutil import require_free_space
from contentflow_backupd.model import iso, utcnow
from contentflow_backupd.ops.locks import pid_alive
from contentflow_backupd.source.base import Database, DatabaseAdmin, ScratchServer, ScratchServers

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


SCRATCH_PREFIX = "contentflow-backupd-"
"""The name of a drill's scratch directory outside the state directory starts with this."""


def scratch_root(configured: Path | None) -> Path:
    """Where drills whose server runs as another OS user put their files: ``configured``
    (``BACKUPD_DRILL__SCRATCH_DIR``), else ``/var/tmp`` (kept on disk, not in memory: a physical
    drill restores the whole cluster), else the system's temporary directory."""
    if configured is not None:
        return configured
    var_tmp = Path("/var/tmp")  # noqa: S108 - mkdtemp below: a private directory, random name
    return var_tmp if var_tmp.is_dir() else Path(tempfile.gettempdir())


def make_scratch_dir(root: Path, drill_id: str) -> Path:
    """A new private directory under ``root`` that another OS user may enter but not list (0711).
    ``mkdtemp`` creates it atomically with a random name and mode 0700, so nothing another user
    prepared under ``root`` (a symlink, a directory of theirs) is ever used."""
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{drill_id}-", dir=root))
    except OSError as exc:
        raise UsageError(
            f"cannot create the scratch directory of a scratch PostgreSQL under {root}: {exc.strerror}",
            hint="set BACKUPD_DRILL__SCRATCH_DIR to a directory where contentflow-backupd can create "
            "directories and the postgres user can enter (its parents need o+x)",
        ) from None
    os.chmod(path, 0o711)  # noqa: S103 - enterable by the server's user, not listable
    return path


@dataclass
class Workspace:
    """A drill's directory (``home``: its marker, always in the state directory), where its
    files go (``path``: ``home`` itself, or its scratch directory outside the state directory
    when the server runs as another OS user), and the scratch server started in it (registered
    before it starts, so that whatever happens next, the drill stops it)."""

    path: Path
    marker: dict[str, Any]
    scratch: ScratchServers
    """Makes the scratch server and stops one left running (``source.base.ScratchServers``)."""
    server: ScratchServer | None = None
    home: Path | None = None

    @property
    def pgdata(self) -> Path:
        return self.path / "pgdata"

    @property
    def run_dir(self) -> Path:
        return self.path / "run"

    @classmethod
    def create(
        cls,
        state_dir: Path,
        drill_id: str,
        *,
        shared: bool,
        scratch: ScratchServers,
        scratch_dir: Path | None = None,
    ) -> Workspace:
        """Make ``<state_dir>/drills/<drill_id>`` (0700) with its marker. ``shared``: another OS
        user (the scratch server's) must be able to reach the files: they go in a new scratch
        directory under ``scratch_root(scratch_dir)`` (0711, not listable), named in the marker.
        ``SpaceReserved`` before anything is made when the file system the drill's files go to
        is below its free-space reserve (``fsutil.require_free_space``)."""
        require_free_space(state_dir, "the scratch instance (a restore drill or migration check)")
        if shared:
            require_free_space(
                scratch_root(scratch_dir), "the scratch instance (a restore drill or migration check)"
            )
        root = state_dir / DRILLS_DIR
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        marker = {
            "id": drill_id,
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "host": socket.gethostname(),
            "started_at": iso(utcnow()),
            "bin_dir": None,
            "database": None,
            "scratch": None,
        }
        new = root / f"{NEW_PREFIX}{drill_id}"
        new.mkdir(mode=0o700)
        os.chmod(new, 0o700)
        workspace = cls(new, marker, scratch, home=new)
        if shared:
            private = make_scratch_dir(scratch_root(scratch_dir), drill_id)
            marker["scratch"] = str(private)
            workspace.path = private
        workspace._write_marker()
        final = root / drill_id
        os.rename(new, final)
        workspace.home = final
        if not shared:
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
        owner = self.scratch.owner()
        self.scratch.check_reachable(self.path, owner)
        bin_dir = self.scratch.bin_dir(major, pg_bin, client_bin)
        self.note(bin_dir=bin_dir)
        server = self.server = self.scratch.server(
            self.pgdata, self.run_dir, bin_dir, owner, superuser="postgres"
        )
        server.make_run_dir()
        server.initdb()
        server.configure()
        server.start()
        server.wait_ready("postgres", promoted=False, timeout=ready_timeout)
        return server

    def _write_marker(self) -> None:
        home = self.home or self.path
        tmp = home / f".{MARKER}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.marker, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, home / MARKER)

    def remove(self) -> None:
        """Remove the directory (and its scratch directory), first stopping any postmaster
        still running in it."""
        bin_dir = self.marker.get("bin_dir")
        try:
            self.scratch.stop_leftover(self.pgdata, Path(bin_dir) if bin_dir else None)
        except (OSError, BackupdError) as exc:
            log.error("drill_server_stop_failed", error=str(exc))
        shutil.rmtree(self.path, ignore_errors=True)
        if self.home is not None and self.home != self.path:
            shutil.rmtree(self.home, ignore_errors=True)


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


def _scratch_of(marker: dict[str, Any], entry: Path) -> Path | None:
    """The drill's scratch directory outside the state directory, when its marker names one that
    is what a drill makes: a real directory (no symlink) of ours named after the drill."""
    named = marker.get("scratch")
    if not isinstance(named, str) or not named:
        return None
    path = Path(named)
    try:
        st = path.lstat()
    except OSError:
        return None
    if (
        not stat.S_ISDIR(st.st_mode)
        or st.st_uid != os.geteuid()
        or not path.name.startswith(f"{SCRATCH_PREFIX}{entry.name}-")
    ):
        log.warning("drill_scratch_dir_ignored", drill_id=entry.name, path=named)
        return None
    return path


def _entries(root: Path) -> Iterator[Path]:
    try:
        yield from sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return


def cleanup_stale_drills(
    state_dir: Path,
    *,
    scratch: ScratchServers,
    admin: DatabaseAdmin,
    database: Database | None = None,
) -> list[str]:
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
        work = _scratch_of(marker, entry) or entry
        try:
            if scratch.stop_leftover(work / "pgdata", Path(bin_dir) if bin_dir else None):
                log.warning("drill_server_stopped", drill_id=entry.name, pgdata=str(work / "pgdata"))
        except (OSError, BackupdError) as exc:
            log.error("drill_cleanup_failed", drill_id=entry.name, error=str(exc))
            continue
        scratch_db = marker.get("database")
        if scratch_db:
            if database is None:
                log.warning("drill_database_left", drill_id=entry.name, database=scratch_db)
                continue
            try:
                admin.drop_database(database, str(scratch_db))
            except BackupdError as exc:
                log.error("drill_cleanup_failed", drill_id=entry.name, database=scratch_db, error=exc.message)
                continue
        if work != entry:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(entry, ignore_errors=True)
        log.info("drill_cleaned_up", drill_id=entry.name)
        cleaned.append(entry.name)
    return cleaned
