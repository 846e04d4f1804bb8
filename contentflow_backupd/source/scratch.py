"""A private, disposable PostgreSQL instance for restore drills (``ops/drill/run.py``): the
``ScratchServer`` protocol of ``source/base.py``.

- A physical drill starts the restored data directory as it is (no ``initdb``); a logical drill
  without ``BACKUPD_DRILL__DATABASE_URL`` runs ``initdb`` for a new one.
- The server binaries have the data directory's major version: ``BACKUPD_DRILL__PG_BIN``, else
  ``/usr/lib/postgresql/<major>/bin``, else ``PATH`` (checked with ``postgres --version``).
- It listens on a free loopback port and in a private socket directory (0700, the server's
  user's), and admits only socket connections: its own ``pg_hba.conf`` says ``local all all
  trust`` and nothing else, so no TCP client gets in.
- The source's settings that could reach outside the instance are overridden at the end of
  ``postgresql.auto.conf`` (the last line wins): archiving is off (``archive_mode``,
  ``archive_command``, ``archive_library``), ``recovery_end_command``,
  ``archive_cleanup_command`` and ``primary_conninfo`` are empty, no synchronous standby is
  waited for, SSL is off (the source's certificates are not here), logs go to the log file.
  So the only thing that touches the repository is ``restore_command``, which only fetches.
- When we run as root it runs as the ``postgres`` OS user (PostgreSQL refuses root), like the
  test clusters do, in a private directory outside our 0700 state directory
  (``ops/drill/workspace.py``); otherwise as us. Its environment is ours without this tool's secrets
  (``source.conninfo.child_env``), except the ``AWS_*`` credentials ``restore_command`` needs
  for an S3 repository.

Nothing is left running by design: ``stop()`` after use, and ``stop_leftover(pgdata)`` for a
server whose drill was killed (the next drill calls it).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from contentflow_backupd.errors import SourceError, UsageError
from contentflow_backupd.procs import process_alive
from contentflow_backupd.source import facts
from contentflow_backupd.source.base import ServerState
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.pgdata import Owner, conf_quote, resolve_owner, write_private_file
from contentflow_backupd.source.tools import child_env, tool_major

_SETTING_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=|\s)")
START_GRACE_S = 30.0
"""How long a started server may take to write ``postmaster.pid``."""

ISOLATION: dict[str, str] = {
    "archive_mode": "off",
    "archive_command": "",
    "archive_library": "",
    "archive_cleanup_command": "",
    "recovery_end_command": "",
    "primary_conninfo": "",
    "primary_slot_name": "",
    "synchronous_standby_names": "",
    "hot_standby": "on",
    "ssl": "off",
    "logging_collector": "off",
    "log_destination": "stderr",
    "external_pid_file": "",
    "cluster_name": "backupd-drill",
}
_ISOLATION_SINCE = {"archive_library": 15}  # settings unknown to older servers


def server_owner() -> Owner:
    """Who runs the scratch server: ``postgres`` when we are root, else us."""
    if os.geteuid() != 0:
        return resolve_owner(None)
    try:
        return resolve_owner("postgres")
    except UsageError:
        raise UsageError(
            "restore drills and migrate's schema check run a scratch PostgreSQL, which refuses to run "
            "as root, and there is no 'postgres' OS user to run it as",
            hint="run contentflow-backupd as an ordinary user (e.g. the one running PostgreSQL)",
        ) from None


def check_reachable(path: Path, owner: Owner) -> None:
    """``owner`` must be able to enter every existing directory on the way to ``path``."""
    if owner.is_me:
        return
    for directory in [*reversed(path.parents), path]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            return
        if st.st_uid == owner.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == owner.gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            raise UsageError(
                f"the scratch PostgreSQL (restore drill, migrate's schema check or dry run) runs as "
                f"{owner.name}, who cannot enter {directory} (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"its files are under {path}",
                hint=f"set BACKUPD_DRILL__SCRATCH_DIR to a directory whose parents {owner.name} can "
                f"enter (o+x), or run contentflow-backupd as {owner.name}",
            )


def server_bin_dir(major: int, pg_bin: Path | None, client_bin: Path | None = None) -> Path:
    """The directory of ``postgres``, ``pg_ctl`` and ``initdb`` of exactly ``major``: the major
    of the backup (or the server) a scratch server stands in for.

    ``pg_bin`` (``BACKUPD_DRILL__PG_BIN``) must hold that major. Otherwise, found the way the
    client tools are: ``client_bin`` (``BACKUPD_PG_BIN``) when it holds a server of that major,
    then ``/usr/lib/postgresql/<major>/bin``, then the ``postgres`` on ``PATH``.
    """
    if pg_bin is not None:
        candidates = [pg_bin]
    else:
        candidates = [] if client_bin is None else [client_bin]
        candidates.append(Path(f"/usr/lib/postgresql/{major}/bin"))
        import shutil

        on_path = shutil.which("postgres")
        if on_path:
            candidates.append(Path(os.path.realpath(on_path)).parent)
    seen: list[str] = []
    for directory in candidates:
        if (directory / "postgres").exists() and (directory / "pg_ctl").exists():
            found = tool_major(directory / "postgres")
            if found == major:
                return directory
            seen.append(f"{directory} holds PostgreSQL {found}")
            if pg_bin is not None:
                raise SourceError(
                    f"BACKUPD_DRILL__PG_BIN={pg_bin} holds PostgreSQL {found}; the backup needs {major}",
                    hint=f"point BACKUPD_DRILL__PG_BIN at the PostgreSQL {major} server binaries",
                )
    if pg_bin is not None:
        where = f"BACKUPD_DRILL__PG_BIN={pg_bin}"
    else:
        where = (
            "BACKUPD_PG_BIN, " if client_bin is not None else ""
        ) + f"/usr/lib/postgresql/{major}/bin or PATH"
    found_text = f" ({'; '.join(seen)})" if seen else ""
    raise SourceError(
        f"the PostgreSQL {major} server (postgres, pg_ctl) was not found in {where}{found_text}",
        hint=f"install the PostgreSQL {major} server package, or set BACKUPD_DRILL__PG_BIN to its "
        "bin directory",
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as(owner: Owner) -> dict[str, Any]:
    if os.geteuid() == 0 and owner.uid != 0:
        return {"user": owner.uid, "group": owner.gid, "extra_groups": []}
    return {}


def _server_env(owner: Owner) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    env = child_env(keep)
    if os.geteuid() == 0 and owner.uid != 0:
        import pwd

        env["HOME"] = pwd.getpwuid(owner.uid).pw_dir
    return env


class PgScratchServer:
    """One scratch PostgreSQL: ``pgdata`` (restored, or made by ``initdb``) and ``run_dir`` (socket,
    pg_hba.conf, log), both owned by ``owner``."""

    def __init__(self, pgdata: Path, run_dir: Path, bin_dir: Path, owner: Owner, *, superuser: str) -> None:
        self.pgdata = pgdata
        self.run_dir = run_dir
        self.bin_dir = bin_dir
        self.owner = owner
        self.superuser = superuser
        self.port = free_port()
        self.logfile = run_dir / "postgres.log"
        self._started = False

    def conninfo(self, dbname: str) -> ConnInfo:
        return ConnInfo(
            params={
                "host": str(self.run_dir),
                "port": str(self.port),
                "user": self.superuser,
                "dbname": dbname,
            }
        )

    def _run(self, argv: list[str], what: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=_server_env(self.owner),
                cwd=self.run_dir,
                check=False,
                **_as(self.owner),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceError(f"{what} failed: {exc}") from None

    def make_run_dir(self) -> None:
        self.run_dir.mkdir(mode=0o700)
        os.chmod(self.run_dir, 0o700)
        if os.geteuid() == 0:
            os.chown(self.run_dir, self.owner.uid, self.owner.gid)

    def initdb(self) -> None:
        """A new, empty cluster in ``pgdata`` (logical drills)."""
        if not (self.bin_dir / "initdb").exists():
            raise SourceError(
                f"initdb was not found in {self.bin_dir}, so no scratch PostgreSQL could be made",
                hint="install the PostgreSQL server package of this major version (it ships initdb), or "
                "set BACKUPD_DRILL__PG_BIN to the directory of its initdb, pg_ctl and postgres",
            )
        self.pgdata.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(self.pgdata, self.owner.uid, self.owner.gid)
        result = self._run(
            [
                str(self.bin_dir / "initdb"), "-D", str(self.pgdata), "-U", self.superuser, "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync",
            ],
            "initdb of the scratch instance",
        )  # fmt: skip
        if result.returncode != 0:
            raise SourceError(
                f"initdb of the scratch instance failed: {(result.stderr or result.stdout).strip()[-2000:]}"
            )

    def configure(self, extra: Mapping[str, str] | None = None) -> None:
        """Private access (own pg_hba.conf), the free port, and ``ISOLATION`` (plus ``extra``)
        at the end of ``postgresql.auto.conf``."""
        hba = self.run_dir / "pg_hba.conf"
        ident = self.run_dir / "pg_ident.conf"
        write_private_file(
            hba, b"# restore drill: socket connections only\nlocal all all trust\n", self.owner
        )
        write_private_file(ident, b"", self.owner)
        if not (self.pgdata / "postgresql.conf").exists():  # Debian keeps it in /etc
            write_private_file(self.pgdata / "postgresql.conf", b"", self.owner)
        major = tool_major(self.bin_dir / "postgres") or 0
        settings = {k: v for k, v in ISOLATION.items() if major >= _ISOLATION_SINCE.get(k, 0)}
        settings.update(
            {
                "listen_addresses": "127.0.0.1",
                "port": str(self.port),
                "unix_socket_directories": str(self.run_dir),
                "hba_file": str(hba),
                "ident_file": str(ident),
            }
        )
        settings.update(extra or {})
        auto = self.pgdata / "postgresql.auto.conf"
        kept = []
        if auto.exists():
            for line in auto.read_text(encoding="utf-8").splitlines():
                m = _SETTING_LINE.match(line)
                if m is None or m.group(1).lower() not in settings:
                    kept.append(line)
        lines = [*kept, "# Restore drill: a private scratch instance (contentflow-backupd)"]
        lines += [f"{name} = {conf_quote(value)}" for name, value in settings.items()]
        write_private_file(auto, ("\n".join(lines) + "\n").encode(), self.owner, replace=True)

    def start(self) -> None:
        """``pg_ctl start`` without waiting: ``wait_ready`` follows the server."""
        argv = [str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.logfile), "-W", "start"]
        self._started = True  # from here on, stop() has something to stop
        result = self._run(argv, "pg_ctl start of the scratch instance", timeout=60)
        if result.returncode != 0:
            raise SourceError(
                f"the scratch PostgreSQL did not start: {(result.stderr or result.stdout).strip()[-1000:]}; "
                f"server log: {self.log_tail()}"
            )

    def wait_ready(
        self,
        dbname: str,
        *,
        promoted: bool,
        timeout: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> ServerState:
        """Poll until ``dbname`` answers queries (and, with ``promoted``, recovery has ended).
        ``SourceError`` with the end of the server log when the server stops on the way."""
        t0 = time.monotonic()
        info = self.conninfo(dbname)
        seen_pid = False
        while True:
            if cancelled is not None and cancelled():
                raise SourceError("the restore drill was stopped (shutdown) before the server was ready")
            pid = self.postmaster_pid()
            seen_pid = seen_pid or pid is not None
            if pid is not None and process_alive(pid):
                try:
                    state = facts.server_state(info)
                except SourceError:
                    state = None
                if state is not None and (not promoted or not state.in_recovery):
                    return state
            elif seen_pid or time.monotonic() - t0 > START_GRACE_S:
                raise SourceError(f"the scratch PostgreSQL stopped before it was ready: {self.log_tail()}")
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise SourceError(
                    f"the scratch PostgreSQL was not ready within {timeout:.0f}s: {self.log_tail()}"
                )
            time.sleep(0.25)

    def postmaster_pid(self) -> int | None:
        return postmaster_pid(self.pgdata)

    def stop(self) -> None:
        """Fast shutdown, immediate when that fails; idempotent."""
        if not self._started:
            return
        self._started = False
        pg_ctl = str(self.bin_dir / "pg_ctl")
        for mode in ("fast", "immediate"):
            if self.postmaster_pid() is None:
                return
            self._run(
                [pg_ctl, "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop"], "pg_ctl stop", 90
            )
        stop_leftover(self.pgdata, None)

    def log_tail(self, limit: int = 3000) -> str:
        try:
            text = self.logfile.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        lines = [line for line in text.strip().splitlines() if line.strip()]
        tail = "\n".join(lines[-25:])
        return tail[-limit:] or "(empty server log)"


# -- leftovers -------------------------------------------------------------------------------
def postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
    except OSError:
        return None
    return int(first) if first.strip().isdigit() else None


def _serves(pid: int, pgdata: Path) -> bool:
    """Whether ``pid`` is a postmaster of ``pgdata`` (its working directory; Linux ``/proc``)."""
    try:
        return os.path.realpath(f"/proc/{pid}/cwd") == os.path.realpath(pgdata)
    except OSError:
        return False


def stop_leftover(pgdata: Path, bin_dir: Path | None, *, timeout: float = 30.0) -> bool:
    """Stop a scratch postmaster left running in ``pgdata`` (immediate shutdown): ``pg_ctl stop -m
    immediate`` with ``bin_dir``, else SIGQUIT to the pid in ``postmaster.pid`` once ``/proc``
    confirms it serves ``pgdata``. Returns whether one was running."""
    pid = postmaster_pid(pgdata)
    if pid is None or not process_alive(pid) or not _serves(pid, pgdata):
        return False
    if bin_dir is not None and (bin_dir / "pg_ctl").exists():
        st = pgdata.stat()
        owner = Owner(st.st_uid, st.st_gid, str(st.st_uid))
        subprocess.run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(pgdata),
                "-m",
                "immediate",
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
            ],
            capture_output=True,
            timeout=timeout + 30,
            env=_server_env(owner),
            check=False,
            **_as(owner),
        )
    if process_alive(pid):
        try:
            os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    return True
