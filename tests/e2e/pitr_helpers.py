"""Helpers for point-in-time recovery tests: a committing workload, exact marks of what was
committed when, and restored data directories started with ``pg_ctl``."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.support.pg import PgCluster, free_port

TABLE = "pitr_rows"


@dataclass(frozen=True)
class Mark:
    """What was committed at a moment: rows with ``id <= max_id``, and nothing newer, had
    committed at ``time`` and before WAL position ``lsn``."""

    time: str
    max_id: int
    lsn: str
    xid: str | None = None
    """The id of the marking transaction itself, when asked for: recovering to it includes
    exactly the rows up to ``max_id``."""


def create_table(pg: PgCluster) -> None:
    pg.execute(f"create table {TABLE} (id bigint generated always as identity primary key, body text)")


class Workload:
    """Inserts one row per transaction, with increasing ids, until stopped."""

    def __init__(self, pg: PgCluster, pause: float = 0.003) -> None:
        self.pg = pg
        self.pause = pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Workload:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            with self.pg.connect() as conn:
                while not self._stop.is_set():
                    conn.execute(f"insert into {TABLE} (body) values (repeat('x', 200))")
                    time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc


def mark(pg: PgCluster, *, xid: bool = False) -> Mark:
    """Hold off writers while noting the time, the newest id and the WAL insert position: every
    transaction that committed before the mark has ``id <= max_id``, every later one commits
    after ``time`` and after ``lsn``. With ``xid``, the marking transaction takes an id and
    commits while writers are still held off."""
    with pg.connect() as conn, conn.transaction():
        conn.execute(f"lock table {TABLE} in exclusive mode")
        row = conn.execute(
            "select clock_timestamp()::text, coalesce(max(id), 0), pg_current_wal_insert_lsn()::text"
            f" from {TABLE}"
        ).fetchone()
        assert row is not None
        own = conn.execute("select pg_current_xact_id()::text").fetchone() if xid else None
    return Mark(time=row[0], max_id=int(row[1]), lsn=row[2], xid=own[0] if own else None)


def switch_and_wait_archived(pg: PgCluster | Restored, timeout: float = 60) -> None:
    """Close the current segment and wait until the archiver has pushed it."""
    with pg.connect() as conn:
        row = conn.execute("select pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        wanted = row[0]
        deadline = time.monotonic() + timeout
        while True:
            done = conn.execute("select last_archived_wal, last_failed_wal from pg_stat_archiver").fetchone()
            assert done is not None
            if done[0] is not None and done[0] >= wanted:
                return
            if done[1] is not None and done[1] >= wanted:
                log = pg.logfile.read_text(errors="replace")[-3000:] if pg.logfile.exists() else ""
                raise AssertionError(f"archive_command failed for {done[1]}:\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{wanted} was not archived within {timeout}s: {done}")
            time.sleep(0.1)


def rows(pg: PgCluster | Restored) -> list[int]:
    return [r[0] for r in pg.execute(f"select id from {TABLE} order by id")]


def _as_postgres() -> dict[str, Any]:
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


class Restored:
    """A restored data directory, started with ``pg_ctl`` on a free port as ``postgres``."""

    def __init__(self, pgdata: Path, source: PgCluster) -> None:
        self.pgdata = pgdata
        self.bin = source.bin
        self.password = source.password
        self.port = free_port()
        self.logfile = pgdata.with_name(pgdata.name + ".log")
        with open(pgdata / "postgresql.auto.conf", "a") as f:
            f.write(f"port = {self.port}\nunix_socket_directories = ''\n")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(dbname), autocommit=True)

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), *args],
            capture_output=True,
            text=True,
            check=check,
            **_as_postgres(),
        )

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def start(self) -> Restored:
        result = self.pg_ctl("-l", str(self.logfile), "-w", "-t", "120", "start", check=False)
        if result.returncode != 0:
            raise AssertionError(f"pg_ctl start failed: {result.stdout}{result.stderr}\n{self.log()[-4000:]}")
        return self

    def wait(self, until: str, timeout: float = 120) -> None:
        """Poll until the SQL ``until`` is true; fail with the server log when it stops."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.execute(f"select {until}")[0][0]:
                    return
            except psycopg.OperationalError:
                if self.pg_ctl("status", check=False).returncode != 0:
                    raise AssertionError(f"the restored server stopped:\n{self.log()[-4000:]}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {until}:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def wait_promoted(self) -> None:
        self.wait("not pg_is_in_recovery()")

    def wait_paused(self) -> None:
        self.wait("pg_get_wal_replay_pause_state() = 'paused'")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop", check=False)
