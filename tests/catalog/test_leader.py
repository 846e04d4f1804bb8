"""LeaderLock on a real PostgreSQL catalog (advisory lock) and on SQLite files (flock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from structlog.testing import capture_logs

from contentflow_backupd.catalog.leader import (
    PRISMA_MIGRATE_KEY,
    FileLeaderLock,
    LeaderLock,
    PgLeaderLock,
    advisory_lock_held,
    leader_key,
)
from contentflow_backupd.catalog.sql import MIGRATION_LOCK_KEY
from contentflow_backupd.errors import CatalogError, LockedError
from tests.support.pg import PgCluster, free_port

HOLDER = """
import sys, time
from contentflow_backupd.catalog.leader import LeaderLock
from contentflow_backupd.observability.logging import configure_logging
configure_logging("json")  # log lines to stderr: stdout is for the answer
lock = LeaderLock.for_url(sys.argv[1], sys.argv[2])
print("acquired" if lock.try_acquire() else "refused", flush=True)
time.sleep(600)
"""


def eventually(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.1)


@pytest.fixture
def holder_process() -> Iterator[Callable[[str, str], subprocess.Popen[str]]]:
    """Starts a process that takes the lock and waits; returns it once it said how it went."""
    started: list[subprocess.Popen[str]] = []

    def start(url: str, name: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, url, name],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


# -- keys -------------------------------------------------------------------------------------
def test_keys_are_stable_signed_64_bit_and_not_prisma() -> None:
    assert leader_key("main") == leader_key("main")
    keys = {leader_key(n) for n in ("main", "daemon", "other", "")}
    assert len(keys) == 4
    for key in keys:
        assert -(2**63) <= key < 2**63
        assert key not in (PRISMA_MIGRATE_KEY, MIGRATION_LOCK_KEY)


def test_key_is_pinned() -> None:
    """Changing the derivation would let an old and a new daemon both lead: pin it."""
    import hashlib

    digest = hashlib.blake2b(b"contentflow-backupd:main", digest_size=8).digest()
    assert leader_key("main") == int.from_bytes(digest, "big", signed=True)


def test_unsupported_catalog_url() -> None:
    with pytest.raises(CatalogError, match="no leader lock"):
        LeaderLock.for_url("mysql://u:pw@localhost/db", "main")
    with pytest.raises(CatalogError, match="invalid catalog URL"):
        LeaderLock.for_url("not a url", "main")


# -- PostgreSQL -------------------------------------------------------------------------------
@pytest.fixture
def catalog_db(pg: PgCluster) -> Iterator[str]:
    name = pg.create_database()
    yield name
    pg.drop_database(name)


@pytest.fixture
def pg_locks(pg: PgCluster, catalog_db: str) -> Iterator[Callable[..., LeaderLock]]:
    made: list[LeaderLock] = []

    def make(name: str = "main", db: str | None = None) -> LeaderLock:
        url = pg.url(db or catalog_db).replace("postgresql://", "postgresql+psycopg://", 1)
        lock = LeaderLock.for_url(url, name)
        made.append(lock)
        return lock

    yield make
    for lock in made:
        lock.release()


def leader_backends(pg: PgCluster, db: str) -> list[tuple[int, str]]:
    return [
        (int(r[0]), str(r[1]))
        for r in pg.execute(
            "select pid, state from pg_stat_activity"
            " where application_name = 'contentflow-backupd leader' and datname = %s",
            params=(db,),
        )
    ]


def holder_pid(pg: PgCluster, db: str, key: int) -> int | None:
    rows = pg.execute(
        "select l.pid from pg_locks l join pg_database d on d.oid = l.database"
        " where l.locktype = 'advisory' and l.granted and d.datname = %s"
        " and l.classid::bigint = %s and l.objid::bigint = %s",
        params=(db, (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
    )
    return int(rows[0][0]) if rows else None


@pytest.mark.pg
def test_only_one_of_two_acquires(
    pg: PgCluster, catalog_db: str, pg_locks: Callable[..., LeaderLock]
) -> None:
    a, b = pg_locks(), pg_locks()
    assert a.mode == b.mode == "shared"
    assert a.try_acquire()
    assert a.try_acquire()  # idempotent while held
    assert not b.try_acquire()
    assert (a.held, b.held) == (True, False)
    assert a.check()
    assert not b.check()
    assert isinstance(a, PgLeaderLock)
    pid = holder_pid(pg, catalog_db, a.key)
    assert pid is not None
    assert b.holder() == f"backend pid {pid} from 127.0.0.1 (contentflow-backupd leader)"
    # the holder's session is idle, never idle in a transaction
    states = dict(leader_backends(pg, catalog_db))
    assert states[pid] == "idle"
    # the session settings that keep it alive, and let the server drop a partitioned leader
    assert a._conn is not None
    assert a._conn.execute(text("show tcp_keepalives_idle")).scalar() == "10"
    assert a._conn.execute(text("show idle_in_transaction_session_timeout")).scalar() == "0"

    a.release()
    assert not a.held
    assert b.try_acquire()
    assert not a.try_acquire()
    assert b.holder() is not None


@pytest.mark.pg
def test_names_and_databases_are_separate(pg: PgCluster, pg_locks: Callable[..., LeaderLock]) -> None:
    other_db = pg.create_database()
    try:
        assert pg_locks("main").try_acquire()
        assert pg_locks("other").try_acquire()
        assert pg_locks("main", db=other_db).try_acquire()
        assert not pg_locks("main").try_acquire()
    finally:
        pg.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", params=(other_db,)
        )
        pg.drop_database(other_db)


@pytest.mark.pg
def test_terminated_backend_loses_the_lock(
    pg: PgCluster, catalog_db: str, pg_locks: Callable[..., LeaderLock]
) -> None:
    a, b = pg_locks(), pg_locks()
    assert a.try_acquire()
    assert not b.try_acquire()
    pid = holder_pid(pg, catalog_db, leader_key("main"))
    assert pg.execute("select pg_terminate_backend(%s, 10000)", params=(pid,)) == [(True,)]

    with capture_logs() as logs:
        assert not a.check()
    assert not a.held
    assert [e["event"] for e in logs] == ["leader_lock_lost"]
    eventually(b.try_acquire, "the standby takes over")
    assert b.check()
    # a reconnects on its next attempt, and finds b leading
    assert not a.try_acquire()
    assert holder_pid(pg, catalog_db, leader_key("main")) != pid


@pytest.mark.pg
def test_killed_holder_process_lets_the_other_take_over(
    pg: PgCluster,
    catalog_db: str,
    pg_locks: Callable[..., LeaderLock],
    holder_process: Callable[[str, str], subprocess.Popen[str]],
) -> None:
    proc = holder_process(pg.url(catalog_db), "main")
    assert first_line(proc) == "acquired"
    standby = pg_locks()
    assert not standby.try_acquire()
    assert not standby.check()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    eventually(standby.try_acquire, "the standby takes over from a killed leader")
    assert standby.check()


@pytest.mark.pg
def test_unreachable_catalog_is_no_leadership_and_logged_once(pg: PgCluster) -> None:
    url = f"postgresql+psycopg://postgres:{pg.password}@127.0.0.1:{free_port()}/postgres"
    lock = LeaderLock.for_url(url, "main")
    with capture_logs() as logs:
        assert not lock.try_acquire()
        assert not lock.try_acquire()
        assert not lock.check()
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("leader_lock_unreachable", "warning"),
        ("leader_lock_unreachable", "debug"),
    ]
    assert pg.password not in repr(logs) + repr(lock)
    assert lock.holder() is None
    lock.release()


@pytest.mark.pg
def test_plain_postgresql_url_and_context_manager(pg: PgCluster, catalog_db: str) -> None:
    with LeaderLock.for_url(pg.url(catalog_db), "main") as lock:
        assert lock.try_acquire()
        assert holder_pid(pg, catalog_db, leader_key("main")) is not None
    assert not lock.held
    assert holder_pid(pg, catalog_db, leader_key("main")) is None


# -- SQLite -----------------------------------------------------------------------------------
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/state/catalog.sqlite"


def test_sqlite_lock_file_next_to_the_database(tmp_path: Path) -> None:
    lock = LeaderLock.for_url(sqlite_url(tmp_path), "main")
    assert isinstance(lock, FileLeaderLock)
    assert lock.mode == "exclusive"
    assert lock.path == tmp_path / "state" / "catalog.sqlite.daemon.lock"
    assert lock.try_acquire()
    assert lock.path.read_text() == f"{os.getpid()}\n"
    lock.release()


def test_sqlite_second_holder_in_another_process_is_refused(
    tmp_path: Path, holder_process: Callable[[str, str], subprocess.Popen[str]]
) -> None:
    url = sqlite_url(tmp_path)
    proc = holder_process(url, "main")
    assert first_line(proc) == "acquired"
    lock = LeaderLock.for_url(url, "main")
    assert not lock.try_acquire()
    with pytest.raises(LockedError) as info:
        lock.require()
    assert f"pid {proc.pid}" in str(info.value)
    assert "refusing to start" in str(info.value)
    assert info.value.hint

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lock.require()  # the kernel dropped the dead process's lock
    assert lock.held
    lock.release()


def test_sqlite_two_locks_in_one_process(tmp_path: Path) -> None:
    a = LeaderLock.for_url(sqlite_url(tmp_path), "main")
    b = LeaderLock.for_url(sqlite_url(tmp_path), "another name: still one daemon per file")
    assert a.try_acquire()
    assert a.try_acquire()
    assert not b.try_acquire()
    a.release()
    assert b.try_acquire()
    assert not a.try_acquire()
    b.release()


def test_sqlite_check_notices_a_removed_lock_file(tmp_path: Path) -> None:
    lock = LeaderLock.for_url(sqlite_url(tmp_path), "main")
    assert lock.try_acquire()
    assert lock.check()
    assert isinstance(lock, FileLeaderLock) and lock.path is not None
    lock.path.unlink()
    with capture_logs() as logs:
        assert not lock.check()
    assert [e["event"] for e in logs] == ["leader_lock_lost"]
    assert not lock.held
    assert lock.try_acquire()  # a new file, a new lock
    lock.release()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true"])
def test_sqlite_in_memory_catalog_always_leads(url: str) -> None:
    lock = LeaderLock.for_url(url, "main")
    assert lock.try_acquire()
    assert lock.check()
    lock.release()
    assert not lock.check()


def test_sqlite_unwritable_directory_is_a_catalog_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    lock = LeaderLock.for_url(f"sqlite:///{blocker}/catalog.sqlite", "main")
    with pytest.raises(CatalogError, match="daemon lock file"):
        lock.try_acquire()


@pytest.mark.pg
def test_an_older_daemons_lock_is_seen_in_its_catalog_only(
    pg: PgCluster, catalog_db: str, pg_locks: Callable[..., LeaderLock]
) -> None:
    """``advisory_lock_held``: what a fleet daemon asks before it runs a cluster an older daemon
    (a session advisory lock, before the leases) may still hold; other catalogs' locks do not
    count."""
    from sqlalchemy import create_engine

    url = pg.url(catalog_db).replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    other_db = pg.create_database()
    try:
        assert not advisory_lock_held(engine, "repo-1/main")
        held = pg_locks("repo-1/main", db=other_db)
        assert held.try_acquire()
        assert not advisory_lock_held(engine, "repo-1/main")  # another catalog's
        mine = pg_locks("repo-1/main")
        assert mine.try_acquire()
        assert advisory_lock_held(engine, "repo-1/main")
        assert not advisory_lock_held(engine, "repo-1/other")
        mine.release()
        assert not advisory_lock_held(engine, "repo-1/main")
        held.release()
    finally:
        engine.dispose()
        pg.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", params=(other_db,)
        )
        pg.drop_database(other_db)
