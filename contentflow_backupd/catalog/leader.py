"""The daemon's leader lock: which of several daemons on one catalog runs the jobs.

- **PostgreSQL catalog** (``mode == "shared"``): a session-level ``pg_try_advisory_lock(key)`` on a
  dedicated connection (its own engine, no pool, autocommit, so it never sits idle in a
  transaction). The lock lives exactly as long as that session: when the leader's process dies or
  its backend is terminated, PostgreSQL releases it and a standby's next ``try_acquire()`` wins.
  The key is a stable 64-bit value derived from ``"contentflow-backupd:" + name`` (never Prisma's
  migration key 72707369, nor the catalog's migration key). TCP keepalives and
  ``tcp_user_timeout`` bound how long ``check()`` can hang on a dead network.
- **SQLite catalog** (``mode == "exclusive"``): an exclusive, non-blocking ``flock`` on
  ``<database file>.daemon.lock`` holding the holder's pid. A second daemon on the same file
  cannot run: it calls :meth:`LeaderLock.require`, which raises ``LockedError`` naming the pid.
  The lock name matters only on PostgreSQL: one SQLite catalog file admits one daemon.

Contract of every lock:

- ``try_acquire() -> bool``: True when this lock holds leadership afterwards (idempotent while
  held). False when another holder has it, or (PostgreSQL) when the catalog cannot be reached:
  that is logged, and a later call reconnects.
- ``check() -> bool``: whether leadership is still held. On PostgreSQL it runs a cheap query on
  the lock's connection; when the connection died the lock is lost (logged), the connection is
  dropped, and False is returned.
- ``release()``: give leadership up (idempotent; closes the connection or file).
- ``holder() -> str | None``: who holds the lock, for messages (pid, and host on PostgreSQL).

A leader cut off from the catalog learns it only at its next ``check()`` (bounded by
``statement_timeout`` and ``tcp_user_timeout``), while the server may already have released the
lock to a standby: call ``check()`` before starting each job, not only on a timer.
- No method raises a library error; ``require()`` raises ``LockedError``. Thread-safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Literal

import structlog
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from contentflow_backupd.errors import CatalogError, LockedError

__all__ = ["PRISMA_MIGRATE_KEY", "FileLeaderLock", "LeaderLock", "PgLeaderLock", "leader_key"]

log = structlog.get_logger(__name__)

PRISMA_MIGRATE_KEY = 72707369  # Prisma Migrate's advisory lock: never ours
KEY_PREFIX = "contentflow-backupd:"
CONNECT_TIMEOUT_S = 10
# Settings of the lock's session (name, value, first server version): no idle timeout may end it
# (and leadership with it); the server drops the session of a leader cut off by the network
# within about 25 s (keepalives, tcp_user_timeout), so a standby can take over within 30 s.
SESSION_SETTINGS = (
    ("idle_session_timeout", "0", 140000),
    ("idle_in_transaction_session_timeout", "0", 0),
    ("statement_timeout", "10s", 0),
    ("tcp_keepalives_idle", "10", 0),
    ("tcp_keepalives_interval", "5", 0),
    ("tcp_keepalives_count", "3", 0),
    ("tcp_user_timeout", "25000", 120000),
)


def leader_key(name: str) -> int:
    """The advisory lock key of ``name``: the first 8 bytes of BLAKE2b(prefix + name), as a signed
    64-bit integer (PostgreSQL's bigint)."""
    digest = hashlib.blake2b((KEY_PREFIX + name).encode(), digest_size=8).digest()
    key = int.from_bytes(digest, "big", signed=True)
    if key == PRISMA_MIGRATE_KEY:  # pragma: no cover - one chance in 2**64
        key ^= 1 << 62
    return key


_LOCK_HELD_SQL = (
    "select count(*) from pg_locks where locktype = 'advisory' and granted and objsubid = 1 "
    "and database = (select oid from pg_database where datname = current_database()) "
    "and ((classid::bigint << 32) | objid::bigint) = :key"
)
"""Whether a session holds the advisory lock ``key`` (a bigint key is split into ``classid``,
its high 32 bits, and ``objid``, its low 32 bits, with ``objsubid`` 1)."""


def advisory_lock_held(engine: Engine, name: str) -> bool:
    """Whether some session holds the leader lock of ``name`` (``leader_key``) on the PostgreSQL
    catalog of ``engine``: a daemon of a version before the fleet leases. ``CatalogError`` when
    the catalog cannot tell."""
    try:
        with engine.connect() as conn:
            return bool(conn.execute(text(_LOCK_HELD_SQL), {"key": leader_key(name)}).scalar())
    except SQLAlchemyError as exc:
        raise CatalogError(f"catalog: cannot read pg_locks: {exc}") from None


class LeaderLock:
    """Base of the two kinds; construct with :meth:`for_url`."""

    mode: Literal["shared", "exclusive"]

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False

    @staticmethod
    def for_url(sqlalchemy_url: str, name: str) -> LeaderLock:
        """The right lock for the catalog at ``sqlalchemy_url``: advisory (PostgreSQL) or file
        (SQLite). Raises ``CatalogError`` for an invalid URL or another database."""
        try:
            url = make_url(sqlalchemy_url)
        except SQLAlchemyError:
            raise CatalogError("invalid catalog URL (not shown: it may hold a password)") from None
        backend = url.get_backend_name()
        if backend in ("postgresql", "postgres"):
            return PgLeaderLock(url, name)
        if backend == "sqlite":
            return FileLeaderLock(_sqlite_lock_path(url))
        raise CatalogError(
            f"catalog {url.render_as_string(hide_password=True)}: no leader lock for {backend!r}",
            hint="use a sqlite:///path or postgresql://user@host/db catalog URL",
        )

    @property
    def held(self) -> bool:
        """Whether this lock held leadership at its last ``try_acquire``/``check``."""
        return self._held

    def try_acquire(self) -> bool:
        raise NotImplementedError

    def check(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def holder(self) -> str | None:
        raise NotImplementedError

    def require(self) -> None:
        """Acquire or raise ``LockedError`` naming the holder (for ``exclusive`` mode at start)."""
        if self.try_acquire():
            return
        raise LockedError(
            f"another contentflow-backupd daemon ({self.holder() or 'unknown'}) already runs on "
            f"this catalog; refusing to start a second one",
            hint="stop the other daemon, or give this one its own catalog (BACKUPD_CATALOG_URL); "
            "several daemons can share a PostgreSQL catalog (one leads, the others stand by)",
        )

    def __enter__(self) -> LeaderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- PostgreSQL ------------------------------------------------------------------------------
class PgLeaderLock(LeaderLock):
    """Leadership through a session-level advisory lock on a dedicated connection."""

    mode: Literal["shared", "exclusive"] = "shared"

    def __init__(self, url: URL, name: str) -> None:
        super().__init__()
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        self.key = leader_key(name)
        self.name = name
        self.url = url.render_as_string(hide_password=True)
        password = url.password
        self._password = password if isinstance(password, str) and password else None
        self._engine: Engine = create_engine(
            url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=_connect_args(url)
        )
        self._conn: Connection | None = None
        self._unreachable = False  # log "unreachable" once per outage

    def __repr__(self) -> str:
        return f"PgLeaderLock({self.url!r}, {self.name!r})"

    def try_acquire(self) -> bool:
        with self._mutex:
            if self._held:
                return self._check_locked()
            try:
                conn = self._connection()
                got = bool(conn.execute(text("select pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
            except SQLAlchemyError as exc:
                self._drop()
                self._log_unreachable(exc)
                return False
            self._unreachable = False
            self._held = got
            if got:
                log.info("leader_lock_acquired", catalog=self.url, key=self.key)
            return got

    def check(self) -> bool:
        with self._mutex:
            return self._check_locked()

    def _check_locked(self) -> bool:
        if not self._held or self._conn is None:
            return False
        try:
            self._conn.execute(text("select 1")).scalar()
        except SQLAlchemyError as exc:
            self._held = False
            self._drop()
            log.warning("leader_lock_lost", catalog=self.url, reason=self._reason(exc))
            return False
        return True

    def release(self) -> None:
        with self._mutex:
            if self._held and self._conn is not None:
                # A failure means the connection is gone, and the lock with it.
                with contextlib.suppress(SQLAlchemyError):
                    self._conn.execute(text("select pg_advisory_unlock(:k)"), {"k": self.key})
                log.info("leader_lock_released", catalog=self.url)
            self._held = False
            self._drop()
            self._engine.dispose()

    def holder(self) -> str | None:
        """``pid N on <client address> (<application_name>)`` of the backend holding the lock."""
        hi, lo = (self.key >> 32) & 0xFFFF_FFFF, self.key & 0xFFFF_FFFF
        query = text(
            "select l.pid, host(a.client_addr), a.application_name from pg_locks l"
            " left join pg_stat_activity a on a.pid = l.pid"
            " where l.locktype = 'advisory' and l.granted and l.objsubid = 1"
            " and l.classid::bigint = :hi and l.objid::bigint = :lo"
            " and l.database = (select oid from pg_database where datname = current_database())"
        )
        with self._mutex:
            try:
                row = self._connection().execute(query, {"hi": hi, "lo": lo}).first()
            except SQLAlchemyError:
                self._drop()
                return None
        if row is None:
            return None
        where = row[1] or "a local socket"
        return f"backend pid {row[0]} from {where}" + (f" ({row[2]})" if row[2] else "")

    # -- internals -------------------------------------------------------------------------
    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect()
            try:
                version = int(conn.execute(text("show server_version_num")).scalar() or 0)
                for setting, value, since in SESSION_SETTINGS:
                    if version >= since:
                        conn.execute(text("select set_config(:s, :v, false)"), {"s": setting, "v": value})
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.invalidate()
                conn.close()

    def _reason(self, exc: SQLAlchemyError) -> str:
        orig = getattr(exc, "orig", None) or exc
        reason = " ".join(str(orig).split())[:300] or type(orig).__name__
        return reason.replace(self._password, "***") if self._password else reason

    def _log_unreachable(self, exc: SQLAlchemyError) -> None:
        event = {"catalog": self.url, "reason": self._reason(exc)}
        if self._unreachable:
            log.debug("leader_lock_unreachable", **event)
        else:
            self._unreachable = True
            log.warning("leader_lock_unreachable", **event)


def _connect_args(url: URL) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": "contentflow-backupd leader",
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,
    }
    return {k: v for k, v in defaults.items() if k not in url.query}


# -- SQLite ----------------------------------------------------------------------------------
def _sqlite_lock_path(url: URL) -> Path | None:
    """``<database file>.daemon.lock`` (None for an in-memory database)."""
    database = url.database
    if not database or database == ":memory:":
        return None  # a private in-memory catalog: nobody else can share it
    if database.startswith("file:"):
        database = database.removeprefix("file:").split("?", 1)[0]
        if not database or database == ":memory:" or "mode=memory" in (url.database or ""):
            return None
    path = Path(database).expanduser()
    return path.with_name(path.name + ".daemon.lock")


class FileLeaderLock(LeaderLock):
    """Leadership through an exclusive ``flock`` on a file next to the SQLite catalog
    (``path`` None: an in-memory catalog, always acquired)."""

    mode: Literal["shared", "exclusive"] = "exclusive"

    def __init__(self, path: Path | None) -> None:
        super().__init__()
        self.path = path
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"FileLeaderLock({str(self.path)!r})"

    def try_acquire(self) -> bool:
        with self._mutex:
            if self._held:
                return self._check_locked()
            if self.path is None:
                self._held = True
                return True
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise CatalogError(
                    f"cannot open the daemon lock file {self.path}: {exc.strerror}",
                    hint="check that the catalog's directory exists and is writable",
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            self._held = True
            log.info("leader_lock_acquired", lock_file=str(self.path))
            return True

    def check(self) -> bool:
        with self._mutex:
            return self._check_locked()

    def _check_locked(self) -> bool:
        """Held, and the lock file was not removed or replaced under us."""
        if not self._held:
            return False
        if self._fd is None:
            return True  # in-memory catalog
        try:
            same = os.path.samestat(os.fstat(self._fd), os.stat(self.path or ""))
        except OSError:
            same = False
        if not same:
            log.warning("leader_lock_lost", lock_file=str(self.path), reason="lock file removed or replaced")
            self._close()
        return same

    def release(self) -> None:
        with self._mutex:
            if self._fd is not None:
                log.info("leader_lock_released", lock_file=str(self.path))
            self._close()

    def holder(self) -> str | None:
        """``pid N`` as written by the holder (None if nothing is recorded)."""
        if self.path is None:
            return None
        try:
            recorded = self.path.read_text().strip()
        except OSError:
            return None
        return f"pid {recorded}" if recorded else None

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        self._held = False
        if fd is not None:
            os.close(fd)
