"""psycopg access to the databases we back up and restore into. psycopg lives in ``source/``."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from contentflow_backupd import procs
from contentflow_backupd.errors import SourceError
from contentflow_backupd.source.base import DatabaseInfo
from contentflow_backupd.source.conninfo import ConnInfo

CONNECT_TIMEOUT = 10
WAL_STATEMENT_TIMEOUT_MS = 30_000
"""``statement_timeout`` of the WAL job's and the archiver probe's sessions (:func:`wal_status`,
:func:`switch_wal`): a server that accepts connections but hangs cannot hold a worker of the
daemon forever (``connect_timeout`` bounds only the connection)."""
CANCEL_TIMEOUT = 5.0
"""Seconds :func:`cancel_queries` waits for the server to take one cancel request."""

_open: weakref.WeakKeyDictionary[psycopg.Connection[Any], str | None] = weakref.WeakKeyDictionary()
"""Every connection this process opened and still holds, with its owner (``procs.owner`` when it
was opened: ``"<cluster>:<job>"`` in the daemon's jobs)."""
_open_lock = threading.Lock()


def error_reason(exc: psycopg.Error) -> str:
    """The first line of a psycopg error, for messages (the rest is context and hints)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def scrubbed_reason(exc: psycopg.Error, info: ConnInfo) -> str:
    """:func:`error_reason` with ``info``'s password masked (a connection error may quote it)."""
    reason = error_reason(exc)
    return reason.replace(info.password, "********") if info.password else reason


def open_connection(info: ConnInfo, *, autocommit: bool = True, **params: str) -> psycopg.Connection[Any]:
    """``psycopg.connect`` to ``info`` with ``params`` over its own, over our defaults
    (``connect_timeout``, ``application_name``). Raises ``psycopg.Error``: callers translate it,
    with :func:`scrubbed_reason` for the message."""
    merged = {
        "connect_timeout": str(CONNECT_TIMEOUT),
        "application_name": "contentflow-backupd",
        **info.params,
        **params,
    }
    conn = psycopg.connect(ConnInfo(params=merged, password=info.password).full(), autocommit=autocommit)
    with _open_lock:
        _open[conn] = procs.owner.get()
    return conn


def cancel_queries(owner: str | None = None) -> int:
    """Cancel the statement running on every connection of ``owner`` (None: every connection)
    this process opened and still holds (a query blocked in libpq never returns to Python, so
    nothing else can stop it); returns how many cancel requests were sent. For the daemon's stop
    after its grace period, or one job's cancel: the job then fails with "canceling statement",
    runs its clean-up and records the run interrupted."""
    with _open_lock:
        live = [conn for conn, who in _open.items() if not conn.closed and (owner is None or who == owner)]
    sent = 0
    for conn in live:
        try:
            conn.cancel_safe(timeout=CANCEL_TIMEOUT)
            sent += 1
        except (psycopg.Error, OSError):
            continue  # closed meanwhile, or the server is gone: nothing runs there
    return sent


def connect(
    info: ConnInfo, *, what: str = "the database", statement_timeout_ms: int | None = None
) -> psycopg.Connection[Any]:
    """An autocommit connection, or ``SourceError`` that names the server (never the password).
    ``statement_timeout_ms``: the session's ``statement_timeout`` (after the URL's own
    ``options``, so it wins)."""
    params: dict[str, str] = {}
    if statement_timeout_ms is not None:
        given = info.params.get("options", "")
        params["options"] = f"{given} -c statement_timeout={statement_timeout_ms}".strip()
    try:
        return open_connection(info, autocommit=True, **params)
    except psycopg.Error as exc:
        reason = scrubbed_reason(exc, info)
        raise SourceError(
            f"cannot connect to {what} at {info.display()}: {reason}",
            hint=f"check {info.setting} (or PGHOST/PGPORT/PGUSER), and that the server runs",
        ) from None


def describe(info: ConnInfo) -> DatabaseInfo:
    with connect(info) as conn:
        row = conn.execute(
            "select current_database(), current_user, current_setting('server_version_num')::int,"
            " current_setting('server_version'),"
            " (select rolsuper from pg_roles where rolname = current_user),"
            " pg_database_size(current_database())"
        ).fetchone()
    assert row is not None
    return DatabaseInfo(
        database=row[0],
        user=row[1],
        server_version_num=row[2],
        server_version=row[3],
        is_superuser=bool(row[4]),
        size=int(row[5]) if row[5] is not None else None,
    )


def user_table_count(info: ConnInfo) -> int:
    with connect(info) as conn:
        row = conn.execute(
            "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where c.relkind in ('r', 'p', 'm', 'v', 'f', 'S')"
            " and n.nspname not in ('pg_catalog', 'information_schema')"
            " and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'"
        ).fetchone()
    return int(row[0]) if row else 0


def server_major(info: ConnInfo) -> int:
    """The server's major version, asked through the maintenance database (``info``'s own
    database need not exist yet)."""
    with connect(info.with_database(_maintenance_db(info)), what="the maintenance database") as conn:
        return int(conn.info.server_version) // 10000


def database_exists(info: ConnInfo, name: str) -> bool:
    with connect(info.with_database(_maintenance_db(info)), what="the maintenance database") as conn:
        row = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
    return row is not None


def create_database(info: ConnInfo, name: str) -> None:
    with connect(info.with_database(_maintenance_db(info)), what="the maintenance database") as conn:
        try:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise SourceError(f"cannot create database {name!r}: {exc}".strip()) from None


def drop_database(info: ConnInfo, name: str) -> None:
    """``DROP DATABASE IF EXISTS`` (``WITH (FORCE)`` from PostgreSQL 13: sessions left in it by
    a killed drill are ended), from the maintenance database of ``info``'s server."""
    maintenance = info.with_database(_maintenance_db(info.with_database(name)))
    with connect(maintenance, what="the maintenance database") as conn:
        force = " with (force)" if conn.info.server_version >= 130000 else ""
        try:
            conn.execute(sql.SQL("drop database if exists {}" + force).format(sql.Identifier(name)))
        except psycopg.Error as exc:
            reason = error_reason(exc)
            raise SourceError(f"cannot drop database {name!r} on {info.display()}: {reason}") from None


def _maintenance_db(info: ConnInfo) -> str:
    return "postgres" if info.dbname != "postgres" else "template1"


@dataclass(frozen=True)
class CreatedRestorePoint:
    lsn: str
    """Where PostgreSQL put the restore point (the end of its WAL record), e.g. ``0/3000100``."""
    timeline: int
    created_at: datetime
    """The server's clock when the point was made."""
    switched_to: str
    """The LSN ``pg_switch_wal()`` returned: WAL up to here goes to the archive next."""


def create_restore_point(info: ConnInfo, name: str) -> CreatedRestorePoint:
    """``pg_create_restore_point(name)``, then ``pg_switch_wal()`` so that the segment holding
    it is archived promptly. ``SourceError`` when the server refuses (in recovery, wal_level
    minimal, not allowed, a name too long)."""
    with connect(info) as conn:
        try:
            row = conn.execute(
                "select pg_create_restore_point(%s)::text, clock_timestamp()", (name,)
            ).fetchone()
            assert row is not None
            tli = conn.execute("select substr(pg_walfile_name(%s::pg_lsn), 1, 8)", (row[0],)).fetchone()
            switched = conn.execute("select pg_switch_wal()::text").fetchone()
        except psycopg.Error as exc:
            reason = error_reason(exc)
            raise SourceError(
                f"cannot create restore point {name!r} on {info.display()}: {reason}",
                hint="it needs a primary (not in recovery), wal_level replica or logical, and a "
                "superuser or EXECUTE on pg_create_restore_point and pg_switch_wal",
            ) from None
    assert tli is not None and switched is not None
    return CreatedRestorePoint(
        lsn=str(row[0]), timeline=int(str(tli[0]), 16), created_at=row[1], switched_to=str(switched[0])
    )


@dataclass(frozen=True)
class WalServerStatus:
    """Where the server's WAL is, and what its archiver reports (``pg_stat_archiver``)."""

    current_lsn: int
    """``pg_current_wal_lsn()`` (the write position)."""
    timeline: int
    wal_segment_size: int
    archive_mode: str
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    can_replicate: bool


def wal_status(info: ConnInfo) -> WalServerStatus:
    """The WAL position and archiver statistics of a primary; ``SourceError`` on a standby, or
    when the server does not answer within ``WAL_STATEMENT_TIMEOUT_MS``."""
    with connect(info, statement_timeout_ms=WAL_STATEMENT_TIMEOUT_MS) as conn:
        try:
            row = conn.execute(
                # pg_current_wal_lsn() raises on a standby: ask only a primary. The timeline is
                # the one being written (pg_walfile_name), not the last checkpoint's.
                "with s as (select pg_is_in_recovery() as standby),"
                " w as (select case when s.standby then null else pg_current_wal_lsn() end as lsn from s)"
                " select s.standby, w.lsn::text,"
                " case when w.lsn is null then null else pg_walfile_name(w.lsn) end,"
                " (select setting::bigint from pg_settings where name = 'wal_segment_size'),"
                " current_setting('archive_mode'),"
                " a.archived_count, a.last_archived_wal, a.last_archived_time,"
                " a.failed_count, a.last_failed_wal, a.last_failed_time,"
                " (select rolreplication or rolsuper from pg_roles where rolname = current_user)"
                " from s, w, pg_stat_archiver a"
            ).fetchone()
        except psycopg.Error as exc:
            raise SourceError(
                f"cannot read the WAL status of {info.display()}: {error_reason(exc)}"
            ) from None
    assert row is not None
    if row[0]:
        raise SourceError(
            f"{info.display()} is a standby (in recovery): the WAL job watches the primary",
            hint="point BACKUPD_DATABASE_URL at the primary",
        )
    hi, lo = row[1].split("/")
    return WalServerStatus(
        current_lsn=(int(hi, 16) << 32) | int(lo, 16),
        timeline=int(row[2][:8], 16),
        wal_segment_size=int(row[3]),
        archive_mode=str(row[4]),
        archived_count=int(row[5]),
        last_archived_wal=row[6],
        last_archived_time=row[7],
        failed_count=int(row[8]),
        last_failed_wal=row[9],
        last_failed_time=row[10],
        can_replicate=bool(row[11]),
    )


def switch_wal(info: ConnInfo) -> None:
    """``pg_switch_wal()``: close the current segment so it can be archived (at most
    ``WAL_STATEMENT_TIMEOUT_MS``: ``SourceError`` after it)."""
    with connect(info, statement_timeout_ms=WAL_STATEMENT_TIMEOUT_MS) as conn:
        try:
            conn.execute("select pg_switch_wal()")
        except psycopg.Error as exc:
            raise SourceError(f"cannot switch WAL on {info.display()}: {error_reason(exc)}") from None
