"""The server of a restored data directory, for ``recover --start``: started with ``pg_ctl`` as
the directory's owner with the directory's own configuration (it is meant to resume service, not
a scratch instance), then watched until recovery has ended, paused or shut down at its target.

Watching uses both the postmaster (``postmaster.pid``: is it still alive?) and a connection
(``pg_is_in_recovery()``, the replay pause state, ``pg_last_xact_replay_timestamp()``). A server
that stops while recovering is an error with the tail of its log; so is a connection refused for
another reason than "starting up" (a wrong password, no ``pg_hba.conf`` entry).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psycopg

from contentflow_backupd.errors import SourceError, UsageError
from contentflow_backupd.procs import process_alive
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.postgres import open_connection, scrubbed_reason
from contentflow_backupd.source.scratch import server_bin_dir
from contentflow_backupd.source.tools import child_env

LOG_NAME = "contentflow-recover.log"
_RETRY_SQLSTATES = {None, "57P03"}  # no server yet / "the database system is starting up"

Reached = Literal["promoted", "paused", "shut down"]


@dataclass(frozen=True)
class RecoveryStatus:
    reached: Reached
    replayed_to: datetime | None
    """Commit time of the last transaction replayed (None: none replayed, or shut down)."""
    detail: str


def data_directory_major(pgdata: Path) -> int:
    """The major version of a data directory (its ``PG_VERSION``)."""
    try:
        return int((pgdata / "PG_VERSION").read_text().strip().split(".")[0])
    except (OSError, ValueError):
        raise UsageError(f"{pgdata} holds no readable PG_VERSION: not a PostgreSQL data directory") from None


class RestoredServer:
    """``pg_ctl`` on one restored data directory, run as the directory's owner (when we are root,
    through ``subprocess``'s ``user``/``group``; otherwise we must be the owner)."""

    def __init__(self, pgdata: Path, *, pg_bin: Path | None = None, client_bin: Path | None = None) -> None:
        """The server binaries are found as a drill's are (``server_bin_dir``): ``pg_bin``
        (``BACKUPD_DRILL__PG_BIN``) or ``client_bin`` (``BACKUPD_PG_BIN``) or the conventional
        locations, always of the data directory's major: no other major can run it."""
        self.pgdata = pgdata
        self.logfile = pgdata / LOG_NAME
        self.pg_ctl = server_bin_dir(data_directory_major(pgdata), pg_bin, client_bin) / "pg_ctl"
        st = pgdata.stat()
        self._owner = (st.st_uid, st.st_gid)
        if os.geteuid() not in (0, st.st_uid):
            raise UsageError(
                f"{pgdata} belongs to uid {st.st_uid}: start it as that user, or run recover as root"
            )

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        as_owner: dict[str, Any] = {}
        if os.geteuid() == 0:
            as_owner = {"user": self._owner[0], "group": self._owner[1], "extra_groups": []}
        return subprocess.run(
            [str(self.pg_ctl), "-D", str(self.pgdata), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            cwd=str(self.pgdata),
            check=False,
            **as_owner,
        )

    def start(self) -> None:
        """``pg_ctl start`` without waiting (recovery may take long); ``SourceError`` when
        ``pg_ctl`` refuses."""
        result = self._run("-l", str(self.logfile), "-W", "start")
        if result.returncode != 0:
            raise SourceError(
                f"pg_ctl start on {self.pgdata} failed: {(result.stderr or result.stdout).strip()[-2000:]}",
                hint=f"see {self.logfile}",
            )

    def postmaster_alive(self) -> bool:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        return process_alive(pid)

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def wait_recovery(
        self, info: ConnInfo, action: Literal["promote", "pause", "shutdown"], *, poll: float = 0.5
    ) -> RecoveryStatus:
        """Block until recovery has ended (``promote``, also the default without a target),
        paused at the target (``pause``) or shut the server down there (``shutdown``). Checks go
        through ``info`` (the recovered server's address). ``SourceError`` with the log's tail
        when the server stops otherwise, or refuses the connection for good."""
        while True:
            if not self.postmaster_alive():
                time.sleep(poll)  # pg_ctl -W returns before postmaster.pid exists
                if self.postmaster_alive():
                    continue
                if action == "shutdown" and (self.pgdata / "recovery.signal").exists():
                    return RecoveryStatus("shut down", None, "the server shut down at the recovery target")
                raise SourceError(
                    f"the recovered server in {self.pgdata} stopped during recovery:\n{self.log_tail()}",
                    hint=f"read {self.logfile}; fix the cause, then start it again with pg_ctl",
                )
            status = self._probe(info)
            if status is not None and (status.reached == "promoted" or action == "pause"):
                return status
            time.sleep(poll)

    def _probe(self, info: ConnInfo) -> RecoveryStatus | None:
        """One look through a connection; None while recovery goes on (or the server is not up)."""
        try:
            conn = open_connection(info, connect_timeout="5", application_name="contentflow-backupd")
        except psycopg.OperationalError as exc:
            if exc.sqlstate in _RETRY_SQLSTATES:
                return None
            reason = scrubbed_reason(exc, info)
            raise SourceError(
                f"the recovered server at {info.display()} refuses the connection: {reason}",
                hint="give the recovered server's address and credentials with --check-url",
            ) from None
        try:
            with conn:
                row = conn.execute(
                    "select pg_is_in_recovery(), pg_last_xact_replay_timestamp(),"
                    " current_setting('server_version_num')::int >= 140000"
                ).fetchone()
                assert row is not None
                in_recovery, replayed, has_state = bool(row[0]), row[1], bool(row[2])
                if not in_recovery:
                    return RecoveryStatus(
                        "promoted", replayed, "recovery ended; the server is open for writes"
                    )
                query = (
                    "select pg_get_wal_replay_pause_state() = 'paused'"
                    if has_state
                    else "select pg_is_wal_replay_paused()"
                )
                try:
                    paused = conn.execute(query).fetchone()
                except psycopg.errors.ObjectNotInPrerequisiteState:
                    return None  # recovery ended since the first query: the next look sees it promoted
        except psycopg.OperationalError:
            # The server went away while we asked (it stopped at the end of recovery, or
            # crashed): the next look finds the postmaster gone and says so with its log.
            return None
        if paused is not None and paused[0]:
            return RecoveryStatus("paused", replayed, "recovery is paused at the target (read-only)")
        return None
