"""What other sessions of a database are doing: locks, long transactions, progress views, and the
free space of the server's WAL volume (psycopg lives in ``source/``).

Used by the migration guard's pre-flight checks and its progress logger. Every function opens one
short autocommit connection (``source.postgres.connect``) with its own ``statement_timeout`` and
``lock_timeout``, never counts its own session, and raises ``SourceError`` (naming the server,
never the password) when the server cannot be asked. Queries of other sessions are shortened to
:data:`QUERY_CHARS` characters, whitespace collapsed; a query that mentions a password is hidden.
Without ``pg_read_all_stats`` (or superuser), PostgreSQL shows other users' queries as
``<insufficient privilege>`` and their state as unknown: the functions report what is visible.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import psycopg
import structlog

from contentflow_backupd.errors import SourceError
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.postgres import connect, error_reason

log = structlog.get_logger(__name__)

PRISMA_ADVISORY_LOCK = 72707369
"""The key of Prisma Migrate's ``pg_advisory_lock`` (held for the whole of ``migrate deploy``)."""
QUERY_CHARS = 200
_SESSION_TIMEOUTS = "set statement_timeout = '10s'; set lock_timeout = '2s'"


def short_query(query: str | None) -> str | None:
    """A session's query for logs and reports: whitespace collapsed, at most :data:`QUERY_CHARS`
    characters, hidden when it mentions a password (``ALTER ROLE ... PASSWORD '...'``) (pure)."""
    if query is None:
        return None
    text = " ".join(query.split())
    if "password" in text.lower():
        return "<hidden: the statement mentions a password>"
    return text if len(text) <= QUERY_CHARS else text[: QUERY_CHARS - 3] + "..."


def advisory_lock_ids(key: int) -> tuple[int, int]:
    """``(classid, objid)`` under which ``pg_locks`` shows a bigint advisory lock key: the high
    and the low 32 bits of its two's complement (``objsubid`` is 1 for one bigint key) (pure)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


# -- advisory lock holders -------------------------------------------------------------------
@dataclass(frozen=True)
class LockHolder:
    """A session holding (``granted``) or waiting for an advisory lock."""

    pid: int
    application_name: str
    state: str | None
    granted: bool
    since: datetime | None
    """Waiters: when the wait began (PostgreSQL 14+). Holders: the start of their transaction,
    else of their session (PostgreSQL does not record when a session-level lock was taken)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["since"] = self.since.isoformat() if self.since else None
        return out


def prisma_lock_holders(info: ConnInfo, *, key: int = PRISMA_ADVISORY_LOCK) -> list[LockHolder]:
    """Sessions of ``info``'s database that hold or wait for the advisory lock ``key`` (Prisma's
    by default), holders first."""
    classid, objid = advisory_lock_ids(key)
    with _session(info) as conn:
        waitstart = "l.waitstart" if conn.info.server_version >= 140000 else "null::timestamptz"
        rows = _fetch(
            conn,
            info,
            "advisory locks",
            "select l.pid, coalesce(a.application_name, ''), a.state, l.granted,"
            f" case when l.granted then coalesce(a.xact_start, a.backend_start) else {waitstart} end"
            " from pg_locks l left join pg_stat_activity a on a.pid = l.pid"
            " where l.locktype = 'advisory' and l.classid = %s::oid and l.objid = %s::oid"
            " and l.objsubid = 1"
            " and l.database = (select oid from pg_database where datname = current_database())"
            " and l.pid is distinct from pg_backend_pid()"
            " order by l.granted desc, l.pid",
            (classid, objid),
        )
    return [LockHolder(int(r[0]), str(r[1]), r[2], bool(r[3]), r[4]) for r in rows]


# -- old transactions ------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenTransaction:
    pid: int
    user: str | None
    application: str
    state: str | None
    age_seconds: float
    """How long the transaction has been open (``now() - xact_start``)."""
    query: str | None
    """The current (or, when idle in transaction, the last) statement, shortened."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def old_transactions(info: ConnInfo, older_than_seconds: float) -> list[OpenTransaction]:
    """Client sessions of ``info``'s database, other than ours, whose transaction has been open
    longer than ``older_than_seconds``, oldest first. Only this database counts: its sessions are
    the ones that hold locks a migration of it needs. Background workers (autovacuum yields to
    DDL on its own) are left out."""
    with _session(info) as conn:
        rows = _fetch(
            conn,
            info,
            "open transactions",
            "select pid, usename, coalesce(application_name, ''), state,"
            " extract(epoch from clock_timestamp() - xact_start)::float8, query"
            " from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
            " and backend_type = 'client backend' and xact_start is not null"
            " and xact_start < clock_timestamp() - make_interval(secs => %s)"
            " order by xact_start, pid",
            (float(older_than_seconds),),
        )
    return [OpenTransaction(int(r[0]), r[1], str(r[2]), r[3], float(r[4]), short_query(r[5])) for r in rows]


def sees_all_sessions(info: ConnInfo) -> bool:
    """Whether the role sees other roles' sessions in ``pg_stat_activity`` (superuser, or a
    member of ``pg_read_all_stats``, which ``pg_monitor`` includes); others see only their own
    sessions' transactions and queries."""
    with _session(info) as conn:
        row = _fetch(conn, info, "role memberships", "select pg_has_role('pg_read_all_stats', 'usage')")
    return bool(row[0][0])


# -- the WAL volume --------------------------------------------------------------------------
@dataclass(frozen=True)
class WalVolume:
    """The file system holding the server's ``pg_wal``, as seen from this process."""

    path: Path | None
    """``<data_directory>/pg_wal``, when the server showed its data directory."""
    free_bytes: int | None
    """Free bytes for unprivileged users (``f_bavail``); None when not visible from here."""
    reason: str | None
    """Why ``free_bytes`` is None."""


def wal_volume(info: ConnInfo) -> WalVolume:
    """The free space of the server's WAL volume where it is visible from here: the role reads
    ``data_directory`` (superuser, or ``pg_read_all_settings``, which ``pg_monitor`` includes),
    the server runs on this host (a Unix socket, loopback, or an address of this host), and this
    process can reach ``pg_wal`` (``os.statvfs``, which follows a symlinked ``pg_wal`` to its own
    volume). Otherwise ``free_bytes`` is None with the reason, also logged at debug level
    (``wal_volume_not_visible``). ``SourceError`` only when the server cannot be reached."""
    with _session(info) as conn:
        try:
            row = conn.execute(
                "select current_setting('data_directory'), inet_server_addr()::text"
            ).fetchone()
        except psycopg.Error as exc:
            return _not_visible(
                None, f"the server does not show data_directory to this role: {error_reason(exc)}"
            )
    assert row is not None
    wal_dir, server_addr = Path(str(row[0])) / "pg_wal", row[1]
    if server_addr is not None and not is_local_address(server_addr):
        return _not_visible(wal_dir, f"the server listens on {server_addr}, not an address of this host")
    try:
        st = os.statvfs(wal_dir)
    except OSError as exc:
        why = (
            "does not exist here"
            if exc.errno == errno.ENOENT
            else f"cannot be read from here ({exc.strerror})"
        )
        return _not_visible(wal_dir, f"the server's WAL directory {wal_dir} {why}")
    return WalVolume(wal_dir, int(st.f_bavail) * int(st.f_frsize), None)


def wal_volume_free_bytes(info: ConnInfo) -> int | None:
    """``wal_volume(info).free_bytes``: None when not visible from here (see :func:`wal_volume`)."""
    return wal_volume(info).free_bytes


def is_local_address(addr: str) -> bool:
    """Whether ``addr`` (an IP address, maybe with a ``/prefix``) belongs to this host: loopback,
    or an address this process can bind a socket to."""
    host = addr.split("/", 1)[0]
    try:
        ip = ip_address(host)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


def _not_visible(path: Path | None, reason: str) -> WalVolume:
    log.debug("wal_volume_not_visible", reason=reason)
    return WalVolume(path, None, reason)


# -- progress --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunningStatement:
    pid: int
    user: str | None
    application: str
    state: str | None
    duration_seconds: float | None
    """Since the statement started (idle in transaction: since the last one started)."""
    wait_event_type: str | None
    wait_event: str | None
    query: str | None


@dataclass(frozen=True)
class Blocker:
    pid: int
    application: str
    state: str | None
    query: str | None


@dataclass(frozen=True)
class LockWait:
    """A session waiting for a heavyweight lock, and the sessions it waits for
    (``pg_blocking_pids``)."""

    pid: int
    application: str
    query: str | None
    locktype: str | None
    mode: str | None
    relation: str | None
    waiting_seconds: float | None
    """Since the wait began (PostgreSQL 14+), else since the statement started."""
    blocked_by: tuple[Blocker, ...]


@dataclass(frozen=True)
class HeldLock:
    """A lock stronger than ``ROW EXCLUSIVE`` held on a relation: the locks DDL takes."""

    pid: int
    relation: str
    mode: str


@dataclass(frozen=True)
class ProgressRow:
    """One row of ``pg_stat_progress_{create_index,cluster,vacuum,analyze}`` in a common shape."""

    kind: str
    pid: int
    relation: str | None
    command: str | None
    phase: str | None
    blocks_done: int | None
    blocks_total: int | None
    tuples_done: int | None
    tuples_total: int | None


@dataclass(frozen=True)
class ProgressSnapshot:
    """What the other sessions of a database were doing at ``taken_at`` (the server's clock)."""

    taken_at: datetime
    statements: tuple[RunningStatement, ...]
    lock_waits: tuple[LockWait, ...]
    locks_held: tuple[HeldLock, ...]
    progress: tuple[ProgressRow, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at.isoformat(),
            "statements": [asdict(s) for s in self.statements],
            "lock_waits": [asdict(w) for w in self.lock_waits],
            "locks_held": [asdict(h) for h in self.locks_held],
            "progress": [asdict(p) for p in self.progress],
        }


_HEAVY_MODES = (
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)

# (kind, first server version, view, relation, command, phase, blocks done/total, tuples done/total)
_PROGRESS_VIEWS = (
    ("create_index", 120000, "pg_stat_progress_create_index", "command",
     "blocks_done", "blocks_total", "tuples_done", "tuples_total"),
    ("cluster", 120000, "pg_stat_progress_cluster", "command",
     "heap_blks_scanned", "heap_blks_total", "heap_tuples_written", "null::bigint"),
    ("vacuum", 90600, "pg_stat_progress_vacuum", "'VACUUM'",
     "heap_blks_scanned", "heap_blks_total", "null::bigint", "null::bigint"),
    ("analyze", 130000, "pg_stat_progress_analyze", "'ANALYZE'",
     "sample_blks_scanned", "sample_blks_total", "null::bigint", "null::bigint"),
)  # fmt: skip


def progress_snapshot(info: ConnInfo, *, pids: Sequence[int] | None = None) -> ProgressSnapshot:
    """The non-idle client sessions of ``info``'s database other than ours (the running
    statements), the sessions waiting for a lock with the sessions blocking them, the locks
    stronger than ``ROW EXCLUSIVE`` held on relations, and the rows of the progress views for
    the database. With ``pids``, only what concerns those sessions (a wait counts when the waiter
    or one of its blockers is among them)."""
    only = None if pids is None else [int(p) for p in pids]
    with _session(info) as conn:
        version = conn.info.server_version
        row = conn.execute("select clock_timestamp()").fetchone()
        assert row is not None
        taken_at = row[0]
        statements = [
            RunningStatement(int(r[0]), r[1], str(r[2]), r[3], _float(r[4]), r[5], r[6], short_query(r[7]))
            for r in _fetch(
                conn,
                info,
                "running statements",
                "select pid, usename, coalesce(application_name, ''), state,"
                " extract(epoch from clock_timestamp() - query_start)::float8,"
                " wait_event_type, wait_event, query from pg_stat_activity"
                " where datname = current_database() and pid <> pg_backend_pid()"
                " and backend_type = 'client backend' and state is distinct from 'idle'"
                " and (%(pids)s::int[] is null or pid = any(%(pids)s::int[]))"
                " order by query_start nulls last, pid",
                {"pids": only},
            )
        ]
        waits = _lock_waits(conn, info, only, version)
        held = [
            HeldLock(int(r[0]), str(r[1]), str(r[2]))
            for r in _fetch(
                conn,
                info,
                "relation locks",
                "select l.pid, l.relation::regclass::text, l.mode from pg_locks l"
                " where l.locktype = 'relation' and l.granted and l.mode = any(%(modes)s)"
                " and l.database = (select oid from pg_database where datname = current_database())"
                " and l.relation >= 16384 and l.pid is distinct from pg_backend_pid()"
                " and (%(pids)s::int[] is null or l.pid = any(%(pids)s::int[]))"
                " order by l.pid, 2, l.mode",
                {"modes": list(_HEAVY_MODES), "pids": only},
            )
        ]
        progress: list[ProgressRow] = []
        for kind, since, view, command, bdone, btotal, tdone, ttotal in _PROGRESS_VIEWS:
            if version < since:
                continue
            progress.extend(
                ProgressRow(kind, int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7])
                for r in _fetch(
                    conn,
                    info,
                    view,
                    f"select pid, relid::regclass::text, {command}, phase,"
                    f" {bdone}::bigint, {btotal}::bigint, {tdone}::bigint, {ttotal}::bigint from {view}"
                    " where datname = current_database()"
                    " and (%(pids)s::int[] is null or pid = any(%(pids)s::int[])) order by pid",
                    {"pids": only},
                )
            )
    return ProgressSnapshot(taken_at, tuple(statements), tuple(waits), tuple(held), tuple(progress))


def _lock_waits(
    conn: psycopg.Connection[Any], info: ConnInfo, only: list[int] | None, version: int
) -> list[LockWait]:
    since = "l.waitstart" if version >= 140000 else "null::timestamptz"
    rows = _fetch(
        conn,
        info,
        "lock waits",
        "select w.pid, coalesce(w.application_name, ''), w.query, l.locktype, l.mode,"
        " case when l.relation is not null then l.relation::regclass::text end,"
        f" extract(epoch from clock_timestamp() - coalesce({since}, w.query_start))::float8,"
        " pg_blocking_pids(w.pid)"
        " from pg_stat_activity w"
        " left join lateral (select * from pg_locks where pid = w.pid and not granted limit 1) l on true"
        " where w.datname = current_database() and w.pid <> pg_backend_pid()"
        " and w.wait_event_type = 'Lock' order by w.pid",
    )
    blocker_pids = sorted({int(p) for r in rows for p in (r[7] or [])})
    blockers: dict[int, Blocker] = {}
    if blocker_pids:
        for b in _fetch(
            conn,
            info,
            "blocking sessions",
            "select pid, coalesce(application_name, ''), state, query from pg_stat_activity"
            " where pid = any(%s::int[])",
            (blocker_pids,),
        ):
            blockers[int(b[0])] = Blocker(int(b[0]), str(b[1]), b[2], short_query(b[3]))
    waits = []
    for r in rows:
        blocked_by = tuple(blockers.get(int(p), Blocker(int(p), "", None, None)) for p in (r[7] or []))
        if only is not None and int(r[0]) not in only and not any(b.pid in only for b in blocked_by):
            continue
        waits.append(
            LockWait(int(r[0]), str(r[1]), short_query(r[2]), r[3], r[4], r[5], _float(r[6]), blocked_by)
        )
    return waits


# -- helpers ---------------------------------------------------------------------------------
def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@contextmanager
def _session(info: ConnInfo) -> Iterator[psycopg.Connection[Any]]:
    """``connect(info)`` with short timeouts of its own; closed on leaving the block."""
    with connect(info) as conn:
        try:
            conn.execute(_SESSION_TIMEOUTS)
        except psycopg.Error as exc:
            raise SourceError(f"cannot query {info.display()}: {error_reason(exc)}") from None
        yield conn


def _fetch(
    conn: psycopg.Connection[Any], info: ConnInfo, what: str, query: str, params: Any = None
) -> list[tuple[Any, ...]]:
    try:
        return conn.execute(query, params).fetchall()
    except psycopg.Error as exc:
        raise SourceError(
            f"cannot read the {what} of {info.display()}: {error_reason(exc)}",
            hint="the role needs to read pg_stat_activity and pg_locks (pg_monitor shows all sessions)",
        ) from None
