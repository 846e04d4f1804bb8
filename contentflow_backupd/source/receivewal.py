"""``pg_receivewal`` as a supervised child process: its guard slot, the process, its stderr.

- **The guard slot** is created over an ordinary SQL connection with
  ``pg_create_physical_replication_slot(slot, immediately_reserve => true)`` rather than with
  ``pg_receivewal --create-slot``: a slot created that way holds WAL from the moment it exists
  (from the last checkpoint's redo point). ``pg_receivewal`` does not stream on it: the slot only
  guards WAL that is not archived yet, and ``confirm_archived`` advances it with
  ``pg_replication_slot_advance`` once a segment is durably stored in the repository, never
  backwards. So WAL that a stream received into its spool but did not upload stays on the server,
  and a successor with another spool (another host, or after ``kill -9``) streams it again. An
  existing slot is used as it is (same name, same retained WAL): an upgrade from the version that
  streamed on it keeps what it holds. The same connection tells the server's major version, which
  picks the ``pg_receivewal`` binary. Both need the ``REPLICATION`` attribute (or a superuser),
  like streaming itself.
- **The process** runs ``pg_receivewal -D spool --no-loop --no-password -d <conninfo>``, without
  ``--slot``. It resumes after the newest complete segment in its directory (or from the start of
  a ``.partial`` one), else from the server's current position; ``ops.wal.stream`` seeds an empty
  spool so that it resumes after the repository's newest segment. It builds its replication
  connection from ``-d`` itself (it drops ``dbname`` and adds ``replication=true``), so the
  ordinary ``BACKUPD_DATABASE_URL`` works. The conninfo on its command line never holds the
  password: that comes from a private ``PGPASSFILE`` (``libpq_env``) that lives as long as this
  object's ``with`` block. ``--no-loop`` makes it exit when the connection drops, so the caller
  restarts it and every failure shows in our log.
- **Stopping** sends SIGINT, the signal every version of ``pg_receivewal`` handles by flushing its
  ``.partial`` file and exiting 0 (PostgreSQL 15's ends on SIGTERM at once, without that), then
  SIGKILL after a timeout. A ``.partial`` file is never renamed to a complete segment on exit.
"""

from __future__ import annotations

import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import structlog

from contentflow_backupd.errors import SourceError
from contentflow_backupd.procs import spawn, stop_process
from contentflow_backupd.source import postgres
from contentflow_backupd.source.base import ReceiverExit
from contentflow_backupd.source.conninfo import ConnInfo, libpq_env
from contentflow_backupd.source.tools import StderrTail, find_tool
from contentflow_backupd.wal import format_lsn, parse_lsn

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = "10"


class PgReceiveWal:
    """One ``pg_receivewal`` guarded by a replication slot, started and stopped on request.

    Use it as a context manager: the passfile for the child exists only inside the block, and
    leaving the block stops a running child. Not thread-safe: one supervisor drives it.
    """

    def __init__(
        self,
        info: ConnInfo,
        *,
        spool_dir: Path,
        slot: str,
        bin_dir: Path | None = None,
        tmp_root: Path | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        self.info = info
        self.spool_dir = spool_dir
        self.slot = slot
        self._bin_dir = bin_dir
        self._tmp_root = tmp_root
        self._stop_timeout = stop_timeout
        self._stack = ExitStack()
        self._env: dict[str, str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tail: StderrTail | None = None
        self._started_at = 0.0
        self.server_major: int | None = None

    def describe(self) -> str:
        """The server streamed from, for logs (no password)."""
        return self.info.display()

    def __enter__(self) -> PgReceiveWal:
        self._env = self._stack.enter_context(libpq_env(self.info, self._tmp_root))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self._env = None
            self._stack.close()

    # -- the slot ----------------------------------------------------------------------------
    def ensure_slot(self) -> int:
        """Create the physical slot if it does not exist; return the server's major version.

        ``SourceError`` when the server cannot be reached, the slot cannot be created, or a
        logical slot already has the name.
        """
        with postgres.connect(self.info, what="the database to stream WAL from") as conn:
            try:
                row = conn.execute("select current_setting('server_version_num')::int").fetchone()
                assert row is not None
                major = int(row[0]) // 10000
                existing = conn.execute(
                    "select slot_type from pg_replication_slots where slot_name = %s", (self.slot,)
                ).fetchone()
                if existing is None:
                    try:
                        conn.execute("select pg_create_physical_replication_slot(%s, true)", (self.slot,))
                        log.info("replication_slot_created", slot=self.slot, server=self.info.display())
                    except psycopg.errors.DuplicateObject:
                        pass  # created by someone else in the meantime: that is what we wanted
                elif existing[0] != "physical":
                    raise SourceError(
                        f"replication slot {self.slot!r} on {self.info.display()} is a {existing[0]} "
                        "slot; wal-stream needs a physical one",
                        hint="choose another BACKUPD_WAL__SLOT, or drop that slot",
                    )
            except psycopg.Error as exc:
                reason = postgres.error_reason(exc)
                raise SourceError(
                    f"cannot create replication slot {self.slot!r} on {self.info.display()}: {reason}",
                    hint="the user needs the REPLICATION attribute, and the server wal_level >= replica "
                    "and max_replication_slots > 0",
                ) from None
        self.server_major = major
        return major

    def confirm_archived(self, lsn: int) -> int | None:
        """Advance the guard slot to ``lsn`` (the end of the newest segment durably stored), so
        the server may recycle the WAL before it. Never moves it back: a slot already at or past
        ``lsn`` is left alone (also when another stream of the cluster moved it there first).
        Returns the slot's ``restart_lsn`` afterwards, None when the slot is gone or holds no WAL
        (invalidated by ``max_slot_wal_keep_size``). ``SourceError`` when the server cannot be
        reached or refuses (a walsender of an older version still streaming on the slot).
        """
        target = format_lsn(lsn)
        with postgres.connect(
            self.info,
            what="the database to stream WAL from",
            statement_timeout_ms=postgres.WAL_STATEMENT_TIMEOUT_MS,  # a hung server holds no upload
        ) as conn:
            try:
                current = self._restart_lsn(conn)
                if current is None or current >= lsn:
                    return current
                try:
                    conn.execute("select pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, target))
                except psycopg.errors.InvalidParameterValue:
                    # "cannot advance replication slot to X, minimum is Y": another stream moved
                    # it past X in the meantime; it stays where it is
                    moved = self._restart_lsn(conn)
                    if moved is not None and moved >= lsn:
                        return moved
                    raise
                after = self._restart_lsn(conn)
            except psycopg.Error as exc:
                reason = postgres.error_reason(exc)
                raise SourceError(
                    f"cannot advance replication slot {self.slot!r} on {self.info.display()} to {target}: "
                    f"{reason}",
                    hint="the user needs the REPLICATION attribute, and no walsender may stream on the slot",
                ) from None
        log.debug("wal_guard_advanced", slot=self.slot, lsn=target, previous=format_lsn(current))
        return after

    def _restart_lsn(self, conn: psycopg.Connection[Any]) -> int | None:
        row = conn.execute(
            "select restart_lsn::text from pg_replication_slots where slot_name = %s", (self.slot,)
        ).fetchone()
        return None if row is None or row[0] is None else parse_lsn(str(row[0]))

    # -- the process -------------------------------------------------------------------------
    def argv(self, binary: Path) -> list[str]:
        params = dict(self.info.params)
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        conninfo = ConnInfo(params=params).safe()  # no password: it comes from PGPASSFILE
        return [
            str(binary),
            "--directory",
            str(self.spool_dir),
            "--no-loop",
            "--no-password",
            "--dbname",
            conninfo,
        ]

    def start(self) -> int:
        """Make sure the slot exists and start ``pg_receivewal``; return its pid.

        A no-op (returning the pid) while it runs. ``SourceError`` when it cannot be started.
        """
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        if self._env is None:
            raise RuntimeError("PgReceiveWal.start() outside its `with` block")
        self._reap()
        major = self.ensure_slot()
        binary = find_tool("pg_receivewal", major, self._bin_dir)
        try:
            proc = spawn(
                self.argv(binary),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=self._env,
            )
        except OSError as exc:
            raise SourceError(f"cannot start {binary}: {exc.strerror}") from None
        self._proc = proc
        self._tail = StderrTail(proc)
        self._started_at = time.monotonic()
        log.info("pg_receivewal_started", pid=proc.pid, slot=self.slot, binary=str(binary))
        return proc.pid

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def poll(self) -> ReceiverExit | None:
        """The exit of a ``pg_receivewal`` that ended by itself since the last call, else None."""
        if self._proc is None or self._proc.poll() is None:
            return None
        return self._reap()

    def stop(self) -> ReceiverExit | None:
        """Stop a running ``pg_receivewal`` (SIGINT, SIGKILL after the timeout) and log its exit.

        It flushes and keeps its ``.partial`` file. None when none was running or reaped.
        """
        proc = self._proc
        if proc is None:
            return None
        if stop_process(proc, self._stop_timeout, sig=signal.SIGINT):
            log.warning("pg_receivewal_killed", pid=proc.pid, timeout=self._stop_timeout)
        exited = self._reap()
        if exited is not None:
            log.info(
                "pg_receivewal_stopped",
                pid=proc.pid,
                returncode=exited.returncode,
                stderr=exited.stderr,
            )
        return exited

    def _reap(self) -> ReceiverExit | None:
        proc, tail = self._proc, self._tail
        self._proc = self._tail = None
        if proc is None:
            return None
        returncode = proc.wait()
        stderr = tail.text() if tail is not None else ""
        if proc.stderr is not None:
            proc.stderr.close()
        return ReceiverExit(returncode=returncode, stderr=stderr, ran_for=time.monotonic() - self._started_at)
