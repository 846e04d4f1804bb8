"""What every part of ``SqlCatalog`` stands on: the engine and one short transaction per method.

On SQLite, writes begin with ``BEGIN IMMEDIATE`` so that a writer takes the write lock up front
and waits for it (``busy_timeout``, 30 s) instead of failing on a read-to-write lock upgrade;
reads begin ``DEFERRED`` and, in WAL mode, never block writers. On PostgreSQL, lock waits are
bounded by ``lock_timeout`` (30 s) unless the URL sets ``options``.

SQLAlchemy, Alembic and driver errors are translated to ``CatalogError`` here, once
(``SqlSessions._translate``); the message names the catalog URL with its password hidden.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from contentflow_backupd.errors import CatalogError

BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 10

_SQLITE_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_WRITE_OPTION = "contentflow_catalog_write"  # execution option: begin with BEGIN IMMEDIATE


class SqlSessions:
    """The catalog's engine and its transactions; each role of ``SqlCatalog`` (a subclass in
    its own module) runs every method in one ``_session``."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        """``read_only``: a SQLite file keeps its journal mode (setting WAL writes its header)."""
        try:
            parsed = make_url(url)
        except SQLAlchemyError:
            raise CatalogError("invalid catalog URL (not shown: it may hold a password)") from None
        self.url = parsed.render_as_string(hide_password=True)
        password = parsed.password
        self._password = password if isinstance(password, str) and password else None
        with self._translate("open"):
            self._engine = _create_engine(parsed, read_only=read_only)
        self._writer = self._engine.execution_options(**{_WRITE_OPTION: True})
        self._reads = sessionmaker(self._engine)
        self._writes = sessionmaker(self._writer)

    @contextmanager
    def _session(self, what: str, *, write: bool) -> Iterator[Session]:
        """One transaction (a write one when ``write``), committed when the block ends; ``what``
        names the operation in a ``CatalogError``."""
        maker = self._writes if write else self._reads
        with self._translate(what), maker.begin() as session:
            yield session

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Turn SQLAlchemy, Alembic, driver and file-system errors into ``CatalogError``."""
        try:
            yield
        except Exception as exc:
            if not isinstance(exc, SQLAlchemyError | OSError | _alembic_command_error()):
                raise
            orig = exc.orig if isinstance(exc, DBAPIError) else exc
            reason = " ".join(str(orig).split())[:500] or type(orig).__name__
            leaked = self._password is not None and self._password in str(exc)
            if self._password:
                reason = reason.replace(self._password, "***")
            error = CatalogError(
                f"catalog {self.url}: cannot {what}: {reason}",
                hint="check that the catalog database is reachable, its URL and its credentials"
                if isinstance(exc, DBAPIError | OSError)
                else None,
            )
            if leaked:
                raise error from None
            raise error from exc


def utc(value: datetime) -> datetime:
    """``value`` in UTC (a naive one is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _NoAlembicError(Exception):
    """Stands for Alembic's CommandError while Alembic is not imported."""


def _alembic_command_error() -> type[Exception]:
    util = sys.modules.get("alembic.util")
    error = getattr(util, "CommandError", None) if util is not None else None
    return error if isinstance(error, type) and issubclass(error, Exception) else _NoAlembicError


# -- engines -------------------------------------------------------------------------------
def _create_engine(url: URL, *, read_only: bool = False) -> Engine:
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not read_only:
            _make_parent_directory(url)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_on_connect_read_only if read_only else _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if backend == "postgresql":
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in url.query:
            connect_args["application_name"] = "contentflow-backupd catalog"
        if "options" not in url.query:
            connect_args["options"] = f"-c lock_timeout={BUSY_TIMEOUT_MS}"
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    raise CatalogError(
        f"catalog {url.render_as_string(hide_password=True)}: unsupported database {backend!r}",
        hint="use a sqlite:///path or postgresql://user@host/db URL",
    )


def _make_parent_directory(url: URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module: ``_sqlite_on_begin`` emits BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _set_wal_journal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_connect_read_only(dbapi_connection: Any, _record: Any) -> None:
    """``_sqlite_on_connect`` without ``journal_mode = WAL`` (a write when the file is not in WAL
    mode yet) nor the parent directory."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _set_wal_journal(cursor: Any) -> None:
    """``journal_mode = WAL``, waiting for the lock: when processes create the file at once,
    SQLite answers ``database is locked`` at once instead of calling the busy handler."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_BUSY_CODES
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_on_begin(connection: Connection) -> None:
    write = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
