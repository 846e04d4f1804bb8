"""The pure parts of the migration pre-flight: verdicts on what was read, the advisory lock key
as pg_locks shows it, query shortening, and the progress log line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentflow_backupd.migrate.preflight import (
    old_transactions_verdict,
    prisma_lock_verdict,
    space_verdict,
    state_dir_space,
    wal_volume_space,
)
from contentflow_backupd.migrate.progress import progress_fields
from contentflow_backupd.source.activity import (
    QUERY_CHARS,
    Blocker,
    LockHolder,
    LockWait,
    OpenTransaction,
    ProgressRow,
    ProgressSnapshot,
    RunningStatement,
    WalVolume,
    advisory_lock_ids,
    is_local_address,
    short_query,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
GIB = 1024**3


# -- advisory lock key -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "ids"),
    [
        (72707369, (0, 72707369)),
        (0, (0, 0)),
        (1 << 32, (1, 0)),
        ((1 << 32) + 5, (1, 5)),
        (-1, (0xFFFFFFFF, 0xFFFFFFFF)),
        (-(1 << 63), (0x80000000, 0)),
    ],
)
def test_advisory_lock_ids(key: int, ids: tuple[int, int]) -> None:
    assert advisory_lock_ids(key) == ids


@given(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1))
def test_advisory_lock_ids_round_trip(key: int) -> None:
    hi, lo = advisory_lock_ids(key)
    assert 0 <= hi < 1 << 32 and 0 <= lo < 1 << 32
    assert int.from_bytes(((hi << 32) | lo).to_bytes(8, "big"), "big", signed=True) == key


# -- queries ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "shown"),
    [
        (None, None),
        ("select  1\n  from t", "select 1 from t"),
        ("ALTER ROLE app PASSWORD 'hunter2'", "<hidden: the statement mentions a password>"),
        ("x" * QUERY_CHARS, "x" * QUERY_CHARS),
        ("x" * (QUERY_CHARS + 1), "x" * (QUERY_CHARS - 3) + "..."),
    ],
)
def test_short_query(query: str | None, shown: str | None) -> None:
    assert short_query(query) == shown


@pytest.mark.parametrize(
    ("addr", "local"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1/32", True),
        ("::1/128", True),
        ("192.0.2.7", False),
        ("nonsense", False),
    ],
)
def test_is_local_address(addr: str, local: bool) -> None:
    assert is_local_address(addr) is local


# -- verdicts --------------------------------------------------------------------------------
def test_space_verdict() -> None:
    ok = space_verdict("free_space:state_dir", "the state directory /s", 2 * GIB, GIB)
    assert (ok.status, ok.detail) == ("passed", "2.0 GiB free on the state directory /s")
    assert space_verdict("x", "here", GIB, GIB).status == "passed"
    low = space_verdict("free_space:state_dir", "the state directory /s", GIB - 1, GIB)
    assert low.status == "failed"
    assert "only 1024.0 MiB free on the state directory /s" in low.detail
    assert "BACKUPD_MIGRATE__MIN_FREE_BYTES (1.0 GiB)" in low.detail
    assert "free space there first" in low.detail


def test_state_dir_that_does_not_exist_yet_is_measured_on_its_parent(tmp_path: Path) -> None:
    check = state_dir_space(tmp_path / "not" / "yet", 1)
    assert check.status == "passed"
    assert str(tmp_path / "not" / "yet") in check.detail
    assert state_dir_space(tmp_path / "not" / "yet", 1 << 62).status == "failed"


def test_wal_volume_not_visible_is_skipped_with_the_reason() -> None:
    check = wal_volume_space(WalVolume(None, None, "the server listens on 10.0.0.5"), GIB)
    assert (check.name, check.status) == ("free_space:wal_volume", "skipped")
    assert check.detail == "not visible from here: the server listens on 10.0.0.5"
    seen = wal_volume_space(WalVolume(Path("/pg/pg_wal"), GIB // 2, None), GIB)
    assert seen.status == "failed" and "the server's WAL volume (/pg/pg_wal)" in seen.detail


def test_prisma_lock_verdict() -> None:
    assert prisma_lock_verdict([]).status == "passed"
    holders = [
        LockHolder(101, "prisma", "idle", True, T0),
        LockHolder(102, "", "active", False, None),
    ]
    check = prisma_lock_verdict(holders)
    assert check.status == "failed"
    assert "pid 101 (prisma, idle) holds it since 2025-03-01T12:00:00+00:00" in check.detail
    assert "pid 102 (no application_name, active) waits for it" in check.detail
    assert "Wait for it to finish" in check.detail
    assert "pg_terminate_backend(101)" in check.detail


def test_old_transactions_verdict() -> None:
    assert old_transactions_verdict([], 300).detail == "no transaction of the database is older than 5m"
    partial = old_transactions_verdict([], 300, sees_all=False)
    assert partial.status == "passed" and "pg_monitor" in partial.detail
    txs = [OpenTransaction(7, "app", "psql", "idle in transaction", 3725.0, "select * from t")]
    check = old_transactions_verdict(txs, 300)
    assert check.status == "failed"
    assert "1 transaction(s) open longer than 5m" in check.detail
    assert "pid 7 (app, psql, idle in transaction, open 1h 2m): select * from t" in check.detail
    assert "pg_terminate_backend" in check.detail
    many = [OpenTransaction(n, None, "", None, 600.0, None) for n in range(8)]
    assert "and 3 more" in old_transactions_verdict(many, 300).detail


# -- the progress line -----------------------------------------------------------------------
def test_progress_fields() -> None:
    blocker = Blocker(5, "psql", "idle in transaction", "lock table t")
    snap = ProgressSnapshot(
        taken_at=T0,
        statements=(
            RunningStatement(6, "u", "prisma", "active", 12.345, "Lock", "relation", "alter table t"),
        ),
        lock_waits=(
            LockWait(6, "prisma", "alter table t", "relation", "AccessExclusiveLock", "t", 12.04, (blocker,)),
        ),
        locks_held=(),
        progress=(
            ProgressRow("create_index", 6, "t", "CREATE INDEX", "building index", 10, 40, 0, 0),
            ProgressRow("cluster", 8, "u", "VACUUM FULL", "seq scanning heap", 1, 2, 300, None),
        ),
    )
    fields = progress_fields(snap)
    assert fields["statements"] == [
        {"pid": 6, "state": "active", "seconds": 12.3, "wait": "Lock:relation", "query": "alter table t"}
    ]
    assert fields["lock_waits"] == [
        {
            "pid": 6,
            "lock": "AccessExclusiveLock relation t",
            "seconds": 12.0,
            "query": "alter table t",
            "blocked_by": [{"pid": 5, "state": "idle in transaction", "query": "lock table t"}],
        }
    ]
    assert fields["progress"] == [
        {"kind": "create_index", "pid": 6, "relation": "t", "phase": "building index", "blocks": "10/40"},
        {
            "kind": "cluster",
            "pid": 8,
            "relation": "u",
            "phase": "seq scanning heap",
            "command": "VACUUM FULL",
            "blocks": "1/2",
            "tuples": "300",
        },
    ]
