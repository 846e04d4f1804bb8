"""Pre-flight checks and activity queries against a real PostgreSQL: other sessions of the test
hold Prisma's advisory lock, keep a transaction open, or hold a lock a statement waits for."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contentflow_backupd.errors import SourceError, StorageUnavailable
from contentflow_backupd.migrate.preflight import (
    CheckResult,
    PreflightInputs,
    Probe,
    backup_lock_probe,
    passed,
    run_preflight,
)
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.source import activity
from contentflow_backupd.source.conninfo import ConnInfo
from tests.support.pg import PgCluster, free_port

pytestmark = pytest.mark.pg

PRISMA = 72707369


def eventually(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``condition`` until it returns something truthy (a liveness bound, not a timing
    assertion) and return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


class Sessions:
    """Other sessions of the test database, in the role of the application; statements that
    block run on threads. At the end every session is ended and every thread joined."""

    def __init__(self, pg: PgCluster, db: str) -> None:
        self.pg, self.db = pg, db
        self.conns: list[psycopg.Connection[Any]] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def open(self, dbname: str | None = None) -> psycopg.Connection[Any]:
        conn = self.pg.connect(dbname or self.db)
        self.conns.append(conn)
        return conn

    def in_background(self, sql: str, dbname: str | None = None) -> int:
        """Run ``sql`` on a new session in a thread (it may block); returns the session's pid."""
        conn = self.open(dbname)

        def run() -> None:
            try:
                conn.execute(sql)
            except psycopg.Error as exc:  # ended at teardown
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()
        return conn.info.backend_pid

    def close(self) -> None:
        pids = [c.info.backend_pid for c in self.conns if not c.closed]
        if pids:
            self.pg.execute("select pg_terminate_backend(p) from unnest(%s::int[]) p", params=(pids,))
        for thread in self.threads:
            thread.join(30)
        for conn in self.conns:
            conn.close()


@pytest.fixture
def sessions(pg: PgCluster, pg_db: str) -> Iterator[Sessions]:
    s = Sessions(pg, pg_db)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def info(pg: PgCluster, pg_db: str) -> ConnInfo:
    return ConnInfo.parse(pg.url(pg_db))


def ok(detail: str) -> Probe:
    return lambda: (True, detail)


def inputs(info: ConnInfo, tmp_path: Path, **changes: Any) -> PreflightInputs:
    values: dict[str, Any] = {
        "conninfo": info,
        "state_dir": tmp_path / "state",
        "min_free_bytes": 1,
        "max_transaction_age_seconds": 300.0,
        "storage": ok("repository file:///r answers"),
        "no_backup_running": ok("no backup is running"),
        "migrate_check": ok("2 pending, nothing risky"),
        "wal_archiving": None,
    }
    values.update(changes)
    return PreflightInputs(**values)


def by_name(checks: list[CheckResult]) -> dict[str, CheckResult]:
    return {c.name: c for c in checks}


def statuses(checks: list[CheckResult]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


ALL_PASSED = {
    "database": "passed",
    "storage": "passed",
    "free_space:state_dir": "passed",
    "free_space:wal_volume": "passed",
    "no_backup_running": "passed",
    "wal_archiving": "skipped",
    "no_prisma_migration": "passed",
    "no_old_transactions": "passed",
    "migrate_check": "passed",
}


# -- the whole pre-flight --------------------------------------------------------------------
def test_every_check_passes_on_a_quiet_database(info: ConnInfo, tmp_path: Path) -> None:
    checks = run_preflight(inputs(info, tmp_path))
    assert [c.name for c in checks] == list(ALL_PASSED)
    assert statuses(checks) == ALL_PASSED
    assert passed(checks)
    named = by_name(checks)
    assert named["database"].detail.startswith("PostgreSQL ")
    assert "pg_wal" in named["free_space:wal_volume"].detail
    assert named["wal_archiving"].detail == "logical mode: no WAL archive to check"
    assert named["migrate_check"].detail == "2 pending, nothing risky"


def test_prisma_lock_holder_and_waiter_fail_the_check(
    info: ConnInfo, tmp_path: Path, sessions: Sessions
) -> None:
    holder = sessions.open()
    holder.execute("select pg_advisory_lock(%s)", (PRISMA,))
    waiter = sessions.in_background(f"select pg_advisory_lock({PRISMA})")
    found = eventually(lambda: len(activity.prisma_lock_holders(info)) == 2, "the waiter queues")
    assert found
    held, waiting = activity.prisma_lock_holders(info)
    assert (held.pid, held.granted) == (holder.info.backend_pid, True)
    assert (waiting.pid, waiting.granted) == (waiter, False)

    checks = run_preflight(inputs(info, tmp_path))
    assert statuses(checks) == {**ALL_PASSED, "no_prisma_migration": "failed"}
    assert not passed(checks)
    detail = by_name(checks)["no_prisma_migration"].detail
    assert f"pid {holder.info.backend_pid} (" in detail and "holds it" in detail
    assert f"pid {waiter} (" in detail and "waits for it" in detail
    assert f"pg_terminate_backend({holder.info.backend_pid})" in detail


def test_other_advisory_locks_and_other_databases_do_not_count(
    pg: PgCluster, info: ConnInfo, sessions: Sessions
) -> None:
    sessions.open().execute("select pg_advisory_lock(%s)", (PRISMA + 1,))
    sessions.open().execute("select pg_advisory_lock(0, %s)", (PRISMA,))  # two int4 keys: objsubid 2
    sessions.open("postgres").execute("select pg_advisory_lock(%s)", (PRISMA,))
    assert activity.prisma_lock_holders(info) == []


@pytest.mark.parametrize("key", [-1, 1 << 40, -(1 << 63), (1 << 63) - 1])
def test_lock_holders_of_any_bigint_key(info: ConnInfo, sessions: Sessions, key: int) -> None:
    conn = sessions.open()
    conn.execute("select pg_advisory_lock(%s::bigint)", (key,))
    assert [h.pid for h in activity.prisma_lock_holders(info, key=key)] == [conn.info.backend_pid]


def test_an_old_transaction_fails_the_check_a_young_one_does_not(
    info: ConnInfo, tmp_path: Path, sessions: Sessions
) -> None:
    conn = sessions.open()
    conn.execute("begin")
    conn.execute("select 42 as answer")
    pid = conn.info.backend_pid
    eventually(lambda: activity.old_transactions(info, 0.2), "the transaction ages")
    young = run_preflight(inputs(info, tmp_path, max_transaction_age_seconds=3600.0))
    assert statuses(young) == ALL_PASSED

    checks = run_preflight(inputs(info, tmp_path, max_transaction_age_seconds=0.2))
    assert statuses(checks) == {**ALL_PASSED, "no_old_transactions": "failed"}
    detail = by_name(checks)["no_old_transactions"].detail
    assert f"pid {pid} (postgres, " in detail
    assert "idle in transaction" in detail and "select 42 as answer" in detail
    assert "BACKUPD_MIGRATE__MAX_TRANSACTION_AGE" in detail


def test_transactions_of_other_databases_do_not_count(
    info: ConnInfo, tmp_path: Path, sessions: Sessions
) -> None:
    elsewhere = sessions.open("postgres")
    elsewhere.execute("begin")
    elsewhere.execute("select 1")
    pg_info = info.with_database("postgres")
    eventually(lambda: activity.old_transactions(pg_info, 0.2), "the transaction ages")
    assert activity.old_transactions(info, 0.2) == []
    checks = run_preflight(inputs(info, tmp_path, max_transaction_age_seconds=0.2))
    assert by_name(checks)["no_old_transactions"].status == "passed"


def test_unreachable_database_fails_and_skips_what_needs_it(tmp_path: Path, pg: PgCluster) -> None:
    down = ConnInfo.parse(f"postgresql://postgres:{pg.password}@127.0.0.1:{free_port()}/nowhere")
    checks = run_preflight(inputs(down, tmp_path))
    assert statuses(checks) == {
        **ALL_PASSED,
        "database": "failed",
        "free_space:wal_volume": "skipped",
        "no_prisma_migration": "skipped",
        "no_old_transactions": "skipped",
        "migrate_check": "skipped",
    }
    detail = by_name(checks)["database"].detail
    assert "cannot connect to the database" in detail and "hint: check BACKUPD_DATABASE_URL" in detail
    assert pg.password not in repr(checks)


def test_too_little_free_space_fails_both_volumes(info: ConnInfo, tmp_path: Path) -> None:
    checks = run_preflight(inputs(info, tmp_path, min_free_bytes=1 << 62))
    assert statuses(checks) == {
        **ALL_PASSED,
        "free_space:state_dir": "failed",
        "free_space:wal_volume": "failed",
    }
    for name in ("free_space:state_dir", "free_space:wal_volume"):
        assert "BACKUPD_MIGRATE__MIN_FREE_BYTES" in by_name(checks)[name].detail


def test_wal_volume_hidden_from_an_unprivileged_role_is_skipped(
    pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    role, password = "app_" + uuid.uuid4().hex[:8], "pw-" + uuid.uuid4().hex[:8]
    pg.execute(f"create role {role} login password '{password}'")
    try:
        weak = ConnInfo.parse(pg.url(pg_db, user=role, password=password))
        volume = activity.wal_volume(weak)
        assert volume.free_bytes is None and volume.reason is not None
        assert "does not show data_directory" in volume.reason
        assert activity.wal_volume_free_bytes(weak) is None
        assert not activity.sees_all_sessions(weak)
        checks = run_preflight(inputs(weak, tmp_path))
        assert statuses(checks) == {**ALL_PASSED, "free_space:wal_volume": "skipped"}
        assert "pg_monitor" in by_name(checks)["no_old_transactions"].detail
        pg.execute(f"grant pg_monitor to {role}")
        assert activity.wal_volume_free_bytes(weak) is not None
        assert activity.sees_all_sessions(weak)
    finally:
        pg.execute(f"drop role {role}")


def test_failing_probes_name_what_is_wrong_and_what_to_do(info: ConnInfo, tmp_path: Path) -> None:
    def storage_down() -> tuple[bool, str]:
        raise StorageUnavailable("cannot reach s3://bucket: timed out", hint="check the endpoint")

    def crashes() -> tuple[bool, str]:
        raise RuntimeError("boom")

    checks = run_preflight(
        inputs(
            info,
            tmp_path,
            storage=storage_down,
            no_backup_running=crashes,
            wal_archiving=lambda: (False, "segment 000000010000000000000003 failed to archive"),
            migrate_check=lambda: (False, "1 risky statement (hint: pass --allow-risky)"),
        )
    )
    named = by_name(checks)
    assert statuses(checks) == {
        **ALL_PASSED,
        "storage": "failed",
        "no_backup_running": "failed",
        "wal_archiving": "failed",
        "migrate_check": "failed",
    }
    assert named["storage"].detail == "cannot reach s3://bucket: timed out (hint: check the endpoint)"
    assert named["no_backup_running"].detail.startswith("RuntimeError: boom (hint: wait for the running")
    assert "fix WAL archiving first" in named["wal_archiving"].detail
    assert named["migrate_check"].detail == "1 risky statement (hint: pass --allow-risky)"


def test_backup_lock_probe(tmp_path: Path) -> None:
    probe = backup_lock_probe(tmp_path / "locks", "main")
    assert probe() == (True, "no backup of cluster 'main' is running")
    with exclusive(tmp_path / "locks", "backup-main", what="a backup"):
        ok_, detail = probe()
    assert not ok_
    assert "already running" in detail and "hint: wait for the running backup" in detail
    assert probe()[0]


# -- progress snapshots ----------------------------------------------------------------------
def test_snapshot_sees_a_blocked_statement_and_its_blocker(info: ConnInfo, sessions: Sessions) -> None:
    blocker = sessions.open()
    blocker.execute("create table t (id int)")
    blocker.execute("begin")
    blocker.execute("lock table t in access exclusive mode")
    waiter = sessions.in_background("create index t_id on t (id)")

    snap = eventually(
        lambda: (s := activity.progress_snapshot(info)).lock_waits and s, "the CREATE INDEX waits"
    )
    (wait,) = snap.lock_waits
    assert (wait.pid, wait.locktype, wait.mode, wait.relation) == (waiter, "relation", "ShareLock", "t")
    assert wait.query == "create index t_id on t (id)"
    assert [(b.pid, b.state, b.query) for b in wait.blocked_by] == [
        (blocker.info.backend_pid, "idle in transaction", "lock table t in access exclusive mode")
    ]
    assert (blocker.info.backend_pid, "t", "AccessExclusiveLock") in {
        (h.pid, h.relation, h.mode) for h in snap.locks_held
    }
    running = {s.pid: s for s in snap.statements}
    assert running[waiter].wait_event_type == "Lock" and running[waiter].state == "active"
    assert running[blocker.info.backend_pid].state == "idle in transaction"

    only_waiter = activity.progress_snapshot(info, pids=[waiter])
    assert [s.pid for s in only_waiter.statements] == [waiter]
    assert [w.pid for w in only_waiter.lock_waits] == [waiter]
    assert only_waiter.locks_held == ()
    assert [w.pid for w in activity.progress_snapshot(info, pids=[blocker.info.backend_pid]).lock_waits] == [
        waiter
    ]
    unrelated = activity.progress_snapshot(info, pids=[1])
    assert (unrelated.statements, unrelated.lock_waits, unrelated.locks_held) == ((), (), ())


def test_snapshot_sees_create_index_concurrently_progress(info: ConnInfo, sessions: Sessions) -> None:
    writer = sessions.open()
    writer.execute("create table big (id int)")
    writer.execute("insert into big select generate_series(1, 1000)")
    writer.execute("begin")
    writer.execute("insert into big values (0)")
    builder = sessions.in_background("create index concurrently big_id on big (id)")

    def seen() -> Any:
        rows = [p for p in activity.progress_snapshot(info).progress if p.pid == builder]
        return rows if rows and (rows[0].phase or "").startswith("waiting for") else None

    (row,) = eventually(seen, "CREATE INDEX CONCURRENTLY waits for the writer")
    assert (row.kind, row.relation, row.command) == ("create_index", "big", "CREATE INDEX CONCURRENTLY")
    assert row.phase == "waiting for writers before build"


def test_snapshot_of_an_unreachable_server_raises_source_error(pg: PgCluster) -> None:
    down = ConnInfo.parse(f"postgresql://postgres:{pg.password}@127.0.0.1:{free_port()}/x")
    with pytest.raises(SourceError) as raised:
        activity.progress_snapshot(down)
    assert pg.password not in str(raised.value)
