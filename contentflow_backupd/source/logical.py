"""Logical backups and restores: ``pg_dump -Fc`` out, ``pg_restore`` in, streamed end to end."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

import psycopg
import structlog

from contentflow_backupd.errors import BackupdError, SourceError
from contentflow_backupd.fsutil import require_free_space
from contentflow_backupd.procs import spawn, stop_process
from contentflow_backupd.source import facts, postgres
from contentflow_backupd.source.base import DatabaseInfo
from contentflow_backupd.source.conninfo import ConnInfo, libpq_env
from contentflow_backupd.source.pipe import PREFETCH_LIMIT, PipeReader
from contentflow_backupd.source.tools import StderrTail, find_tool, tool_major, widen_pipe

log = structlog.get_logger(__name__)


class PgDumpSource:
    """A database dumped with ``pg_dump``; passwords reach it only through a private passfile."""

    def __init__(
        self,
        info: ConnInfo,
        *,
        bin_dir: Path | None = None,
        tmp_root: Path | None = None,
        prefetch_limit: int = PREFETCH_LIMIT,
        lock_wait_timeout_s: float | None = None,
    ) -> None:
        self.info = info
        self._lock_wait_s = lock_wait_timeout_s
        """``pg_dump --lock-wait-timeout`` (``jobs.lock_wait_timeout``); None: wait forever."""
        self._bin_dir = bin_dir
        self._tmp_root = tmp_root
        self._prefetch_limit = prefetch_limit
        self._described: DatabaseInfo | None = None
        self._started: tuple[ExitStack, subprocess.Popen[bytes], StderrTail, PipeReader] | None = None
        self._facts: dict[str, Any] = {}
        self._snapshot: DumpSnapshot | None = None
        self._dump_major: int | None = None

    def describe(self) -> DatabaseInfo:
        if self._described is None:
            self._described = postgres.describe(self.info)
        return self._described

    def start(self) -> None:
        """Start ``pg_dump`` now, ahead of ``dump()``: the command line opens the repository and
        the catalog while pg_dump connects, reads the schema and dumps, its output read ahead
        into memory (at most ``prefetch_limit`` bytes) so that it does not stop at a full
        pipe meanwhile. ``close()`` stops it when ``dump()`` never comes."""
        if self._started is None:
            self._started = self._spawn()
            self._started[3].prefetch(self._prefetch_limit)

    def close(self) -> None:
        if self._started is not None:
            stack, proc, _tail, reader = self._started
            self._started = None
            self._snapshot = None
            stop_process(proc)
            reader.stop()  # the pipe is at EOF now: the read ahead ends at once
            if proc.stdout is not None:
                proc.stdout.close()
            stack.close()

    def _spawn(self) -> tuple[ExitStack, subprocess.Popen[bytes], StderrTail, PipeReader]:
        server = self.describe()
        pg_dump = find_tool("pg_dump", server.major, self._bin_dir)
        self._dump_major = tool_major(pg_dump)
        if self._dump_major is not None and self._dump_major >= _SETS_TRANSACTION_TIMEOUT > server.major:
            log.warning(
                "dump_restores_into_newer_servers_only",
                pg_dump_major=self._dump_major,
                server_major=server.major,
                reason=f"pg_dump {self._dump_major} archives need pg_restore {self._dump_major}+, which "
                f"sets transaction_timeout: this backup restores into PostgreSQL "
                f"{_SETS_TRANSACTION_TIMEOUT}+ only (an upgrade), not into {server.major}; set "
                f"BACKUPD_PG_BIN to the PostgreSQL {server.major} client tools for restorable backups",
            )
        # -Z0: we compress per chunk; a compressed dump would defeat dedup.
        argv = [
            str(pg_dump),
            "--format=custom",
            "--compress=0",
            "--no-password",
            "--dbname",
            self.info.safe(),
        ]
        if self._lock_wait_s is not None:
            argv.insert(-2, f"--lock-wait-timeout={max(1, round(self._lock_wait_s * 1000))}")
        stack = ExitStack()
        try:
            snapshot = DumpSnapshot.open(self.info)
            if snapshot is not None:
                stack.callback(snapshot.close)
                argv.insert(-2, f"--snapshot={snapshot.snapshot_id}")
            env = stack.enter_context(libpq_env(self.info, self._tmp_root))
            proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0)
            assert proc.stdout is not None
            widen_pipe(proc.stdout.fileno())
            if snapshot is not None:
                snapshot.start_counting()
                self._snapshot = snapshot
        except BaseException:
            stack.close()
            raise
        return stack, proc, StderrTail(proc), PipeReader(proc.stdout.fileno())

    def dump_facts(self) -> dict[str, Any]:
        """What the last completed ``dump()`` recorded in its own snapshot (see ``DumpSnapshot``)."""
        return dict(self._facts)

    @contextmanager
    def dump(self) -> Iterator[BinaryIO]:
        started, self._started = self._started, None
        self._facts = {}
        stack, proc, tail, reader = started or self._spawn()
        snapshot, self._snapshot = self._snapshot, None
        with stack:
            assert proc.stdout is not None
            try:
                yield cast(BinaryIO, reader)
            except BaseException:
                stop_process(proc)
                raise
            finally:
                reader.stop()
                proc.stdout.close()
            rc = proc.wait()
            log.debug("dump_read", reads=reader.reads, read_ahead_bytes=reader.read_ahead)
            if rc != 0:
                raise _dump_failed(self.info.display(), rc, tail.text(), self._lock_wait_s)
            if snapshot is not None:
                self._facts = snapshot.finish()
            if self._dump_major is not None:
                # pg_restore must be at least this new to read the archive
                self._facts["pg_dump_major"] = self._dump_major


def _dump_failed(database: str, rc: int, stderr: str, lock_wait_s: float | None) -> SourceError:
    """pg_dump's failure; one that gave up waiting for a table lock (``--lock-wait-timeout``
    makes it cancel its ``LOCK TABLE`` with a statement timeout) says so and names the setting."""
    if lock_wait_s is not None and "LOCK TABLE" in stderr and "timeout" in stderr:
        return SourceError(
            f"pg_dump of {database} gave up waiting for a table lock after {lock_wait_s:g}s "
            f"(BACKUPD_JOBS__LOCK_WAIT_TIMEOUT): a session holds a conflicting lock (ACCESS "
            f"EXCLUSIVE: ALTER TABLE, VACUUM FULL, LOCK TABLE...); nothing was committed: {stderr}",
            hint="find the holder in pg_locks / pg_stat_activity, or raise jobs.lock_wait_timeout",
        )
    return SourceError(f"pg_dump of {database} failed (exit {rc}): {stderr}")


class DumpSnapshot:
    """The snapshot a dump is taken in, and the facts recorded in it.

    A ``REPEATABLE READ, READ ONLY`` transaction exports its snapshot (``pg_export_snapshot()``)
    for ``pg_dump --snapshot``, records the schema fingerprint, and, while pg_dump runs, counts
    the rows of the tables, smallest first, in that same snapshot: the counts are exactly the
    rows the dump holds. The transaction stays open until pg_dump has ended. Counting never
    makes a backup longer: when pg_dump ends, the count in progress is cancelled and the tables
    not counted yet keep the planner's estimate (``row_estimates``), as does a table someone
    holds locked for more than 5 s (``lock_timeout``: the facts never hold up a backup).

    Best effort: when the snapshot cannot be exported (a server or pooler that refuses it), the
    dump runs without one and records no facts.
    """

    def __init__(self, conn: psycopg.Connection[Any], snapshot_id: str, facts_: dict[str, Any]) -> None:
        self._conn = conn
        self.snapshot_id = snapshot_id
        self._facts = facts_
        self._tables: list[facts.TableSize] = []
        self._counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def open(cls, info: ConnInfo) -> DumpSnapshot | None:
        try:
            conn = postgres.connect(info)
        except BackupdError as exc:
            log.warning("dump_snapshot_unavailable", reason=exc.message)
            return None
        try:
            conn.execute("begin isolation level repeatable read, read only")
            # Never wait long for a lock: the facts are best effort, the dump is not.
            conn.execute("set local lock_timeout = '5s'")
            row = conn.execute("select pg_export_snapshot()").fetchone()
            assert row is not None
            recorded = facts.fingerprint_in(conn).to_details()
            tables = facts.tables_in(conn)
        except psycopg.Error as exc:
            conn.close()
            log.warning("dump_snapshot_unavailable", reason=postgres.error_reason(exc))
            return None
        snapshot = cls(conn, str(row[0]), recorded)
        if len(tables) <= facts.MAX_OBJECTS:
            snapshot._tables = sorted(tables, key=lambda t: (t.heap_bytes, t.name))
        return snapshot

    def start_counting(self) -> None:
        self._thread = threading.Thread(target=self._count, name="dump-row-counts", daemon=True)
        self._thread.start()

    def _count(self) -> None:
        try:
            self._counts.update(facts.count_rows_in(self._conn, self._tables, self._stop.is_set))
        except psycopg.Error:
            return  # cancelled when pg_dump ended (or the server went away: pg_dump fails too)

    def finish(self) -> dict[str, Any]:
        """Stop counting, end the transaction; returns the facts (fingerprint, counts)."""
        self.close()
        out = dict(self._facts)
        if self._tables:
            out["row_counts"] = {t.name: self._counts[t.name] for t in self._tables if t.name in self._counts}
            out["row_estimates"] = {
                t.name: t.estimated_rows for t in self._tables if t.name not in self._counts
            }
        log.info(
            "dump_facts_recorded",
            tables=len(self._tables),
            exact_counts=len(self._counts),
            estimated=len(self._tables) - len(self._counts),
        )
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        # Cancel again until the thread has left: a count may start just after a cancel.
        while self._thread is not None and self._thread.is_alive():
            self._conn.cancel()
            self._thread.join(timeout=0.5)
        self._conn.close()


_SETS_TRANSACTION_TIMEOUT = 17
"""pg_dump and pg_restore from this major on send ``SET transaction_timeout = 0``."""


class PgRestoreTarget:
    """A database restored into with ``pg_restore``."""

    def __init__(self, info: ConnInfo, *, bin_dir: Path | None = None, tmp_root: Path | None = None) -> None:
        if not info.dbname:
            raise SourceError("the target URL names no database", hint="e.g. postgresql://host/dbname")
        self.info = info
        self._bin_dir = bin_dir
        self._tmp_root = tmp_root
        self._pg_restore: Path | None = None

    def describe(self) -> str:
        return self.info.display()

    def _find_pg_restore(self, dump_major: int | None) -> Path:
        """pg_restore at least as new as the target server and as the pg_dump that made the
        archive (an older one cannot read its format), and able to restore into the target:
        refused here, before anything is written."""
        server_major = postgres.server_major(self.info)
        if dump_major is None or dump_major <= server_major:
            path = find_tool("pg_restore", server_major, self._bin_dir)
        else:
            try:
                path = find_tool("pg_restore", dump_major, self._bin_dir)
            except SourceError as exc:
                raise SourceError(
                    f"the backup was made by pg_dump {dump_major}, whose archives only pg_restore "
                    f"{dump_major} or newer can read ({exc.message}); nothing was restored",
                    hint=f"install the PostgreSQL {dump_major} client tools (or newer) or set "
                    "BACKUPD_PG_BIN to their directory",
                ) from None
        restore_major = tool_major(path)
        if restore_major is not None and restore_major >= _SETS_TRANSACTION_TIMEOUT > server_major:
            # pg_restore 17+ sends SET transaction_timeout, which older servers reject: with
            # --exit-on-error the restore would fail at its first statement.
            if dump_major is not None and dump_major >= _SETS_TRANSACTION_TIMEOUT:
                raise SourceError(
                    f"the backup was made by pg_dump {dump_major}: only pg_restore {dump_major} or newer "
                    f"reads it, and those set transaction_timeout, which PostgreSQL {server_major} does "
                    f"not have; it restores into PostgreSQL {_SETS_TRANSACTION_TIMEOUT} or newer only; "
                    "nothing was restored",
                    hint=f"restore it into a PostgreSQL {_SETS_TRANSACTION_TIMEOUT}+ server (or --to-file); "
                    f"back up PostgreSQL {server_major} with its own client tools (BACKUPD_PG_BIN) so "
                    "its backups restore into it",
                )
            raise SourceError(
                f"pg_restore {path} is version {restore_major}, which sets transaction_timeout: "
                f"PostgreSQL {server_major} does not have it; nothing was restored",
                hint=f"set BACKUPD_PG_BIN to the PostgreSQL {server_major} client tools "
                f"(or {_SETS_TRANSACTION_TIMEOUT - 1} or older, at least {dump_major or server_major})",
            )
        return path

    def prepare(self, *, create: bool, clean: bool, dump_major: int | None = None) -> bool:
        self._pg_restore = self._find_pg_restore(dump_major)
        name = self.info.dbname
        assert name is not None
        if not postgres.database_exists(self.info, name):
            if not create:
                raise SourceError(
                    f"target database {name!r} does not exist on {self.info.display()}",
                    hint="add --create to create it",
                )
            postgres.create_database(self.info, name)
            log.info("database_created", database=name)
            return True
        tables = postgres.user_table_count(self.info)
        if tables and not clean:
            raise SourceError(
                f"target database {self.info.display()} already holds {tables} tables, views or "
                "sequences; refusing to restore over them",
                hint="restore into a new database (--create), or add --clean to drop and replace "
                "the objects in the backup",
            )
        return False

    def drop_created(self) -> None:
        assert self.info.dbname is not None
        postgres.drop_database(self.info, self.info.dbname)

    def drop_hint(self) -> str:
        maintenance = self.info.with_database("postgres" if self.info.dbname != "postgres" else "template1")
        sql_name = '"' + (self.info.dbname or "").replace('"', '""') + '"'
        return f"psql {shlex.quote(maintenance.safe())} -c {shlex.quote('DROP DATABASE ' + sql_name)}"

    def restore(self, archive: Iterable[bytes], *, clean: bool, jobs: int, no_owner: bool) -> None:
        pg_restore = self._pg_restore or find_tool(
            "pg_restore", postgres.describe(self.info).major, self._bin_dir
        )
        argv = [str(pg_restore), "--no-password", "--exit-on-error", "--dbname", self.info.safe()]
        if clean:
            argv += ["--clean", "--if-exists"]
        if no_owner:
            argv += ["--no-owner", "--no-privileges"]
        if jobs > 1:
            self._restore_parallel(argv, archive, jobs)
        else:
            self._restore_streaming([*argv, "--single-transaction"], archive)

    def _restore_streaming(self, argv: list[str], archive: Iterable[bytes]) -> None:
        with libpq_env(self.info, self._tmp_root) as env:
            proc = spawn(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
            )
            tail = StderrTail(proc)
            assert proc.stdin is not None
            try:
                for data in archive:
                    try:
                        proc.stdin.write(data)
                    except BrokenPipeError:
                        break
                proc.stdin.close()
                rc = proc.wait()
            except BaseException:
                # Kill before pg_restore commits (also while waiting for it, after the last
                # byte: it may still be restoring): its one transaction rolls back.
                proc.kill()
                proc.wait()
                raise
        if rc != 0:
            raise SourceError(
                f"pg_restore into {self.info.display()} failed (exit {rc}); the restore ran in one "
                f"transaction and was rolled back: {tail.text()}"
            )

    def _restore_parallel(self, argv: list[str], archive: Iterable[bytes], jobs: int) -> None:
        # pg_restore --jobs needs a seekable archive: it is written to a private 0600 file in
        # the state directory, removed afterwards. Parallel restores are not one transaction.
        require_free_space(
            self._tmp_root or Path(tempfile.gettempdir()), "pg_restore --jobs (its archive copy)"
        )
        if self._tmp_root is not None:
            self._tmp_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, path = tempfile.mkstemp(prefix="restore-", suffix=".dump", dir=self._tmp_root)
        try:
            with os.fdopen(fd, "wb") as f:
                for data in archive:
                    f.write(data)
            with libpq_env(self.info, self._tmp_root) as env:
                proc = spawn(
                    [*argv, f"--jobs={jobs}", path],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=env,
                )
                try:
                    _out, stderr = proc.communicate()
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
            if proc.returncode != 0:
                err = stderr.decode("utf-8", errors="replace").strip()[-4000:]
                raise SourceError(
                    f"pg_restore --jobs={jobs} into {self.info.display()} failed (exit "
                    f"{proc.returncode}); a parallel restore is not one transaction, so the target "
                    f"may be partly restored: {err}"
                )
        finally:
            Path(path).unlink(missing_ok=True)
