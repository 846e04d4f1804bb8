"""Object Lock retain-until dates (ops.retention.lock_rule) and how plan_expiry honours them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentflow_backupd.ops.retention.lock_rule import chunk_until, manifest_until, retain_until, wal_until
from contentflow_backupd.ops.retention.plan import (
    WAL_LOCKED,
    WAL_OLD,
    RetentionPolicy,
    StoredBackup,
    StoredGeneration,
    StoredWal,
    plan_expiry,
)

DAY = 86400.0
T = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
POLICY = RetentionPolicy(full_s=30 * DAY, incremental_s=7 * DAY, wal_s=DAY, lock_margin_s=DAY)
FULL = "20261124T110000Z-full-abc123"
INCR = "20261124T115000Z-incr-abc124"


def days(n: float) -> timedelta:
    return timedelta(days=n)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (f"main/backups/{FULL}.json", T + days(31)),
        (f"main/backups/{INCR}.json", T + days(8)),
        # chunks: the later of written + 7d and the generation's start + 30d, + 1d
        (f"main/chunks/{FULL}/ab/{'ab' * 32}", datetime(2026, 11, 24, 11, tzinfo=UTC) + days(31)),
        (f"main/chunks/not-a-backup-id/ab/{'ab' * 32}", T + days(8)),
        ("main/wal/00000001/000000010000000000000003", T + days(2)),
        ("main/wal/00000001/00000002.history", T + days(2)),
        ("audit/2026-11-24/000000000001-000000000009-0123456789ab.json", T + days(31)),
        ("repo.json", None),
        ("keys/default.json", None),
        ("main/something-else", None),
    ],
)
def test_retain_until_by_key(key: str, expected: datetime | None) -> None:
    assert retain_until(POLICY, key, T) == expected


def test_a_chunk_written_long_after_its_generation_started_is_locked_for_incremental_retention() -> None:
    written = T + days(40)  # its full backup left retention long ago: the incremental's own 7 d
    assert chunk_until(POLICY, FULL, written) == written + days(8)


def test_no_margin_means_no_lock() -> None:
    plain = replace(POLICY, lock_margin_s=None)
    assert retain_until(plain, f"main/backups/{FULL}.json", T) is None
    assert chunk_until(plain, FULL, T) is None and wal_until(plain, T) is None
    assert manifest_until(plain, FULL, T) is None
    with pytest.raises(ValueError, match="lock_margin_s"):
        RetentionPolicy(full_s=1, incremental_s=1, wal_s=1, lock_margin_s=-1)


@given(
    full_d=st.integers(1, 60),
    incr_d=st.integers(1, 60),
    run_h=st.integers(0, 48),
    after_full_d=st.integers(0, 90),
    margin_h=st.integers(0, 72),
)
def test_locks_never_outlast_the_earliest_deletion_plus_the_margin(
    full_d: int, incr_d: int, run_h: int, after_full_d: int, margin_h: int
) -> None:
    """A backup that starts at ``start`` finishes ``run_h`` later and is deleted no earlier than
    its finish + its retention; a chunk it wrote lives at least that long. The lock of every
    object it wrote ends by then + margin."""
    policy = RetentionPolicy(
        full_s=full_d * DAY, incremental_s=incr_d * DAY, wal_s=DAY, lock_margin_s=margin_h * 3600.0
    )
    margin = timedelta(hours=margin_h)
    full_start = T
    for kind, start in (("full", full_start), ("incr", full_start + days(after_full_d))):
        finished = start + timedelta(hours=run_h)
        period = days(full_d if kind == "full" else incr_d)
        generation_deleted = max(full_start + days(full_d), finished + period)
        bid = f"{start:%Y%m%dT%H%M%SZ}-{kind}-000001"
        manifest = manifest_until(policy, bid, finished)
        assert manifest is not None and manifest <= finished + period + margin
        for written in (start, finished):
            chunk = chunk_until(
                policy, FULL.replace("20261124T110000Z", f"{full_start:%Y%m%dT%H%M%SZ}"), written
            )
            assert chunk is not None and chunk <= generation_deleted + margin


def _backup(bid: str, finished: datetime) -> StoredBackup:
    return StoredBackup(
        id=bid,
        kind="full",
        manifest_key=f"main/backups/{bid}.json",
        manifest_bytes=10,
        mode="logical",
        generation=bid,
        finished_at=finished,
        manifest_modified=finished,
    )


def test_the_plan_keeps_what_is_still_locked_and_says_until_when() -> None:
    old = _backup("20261001T000000Z-full-000001", datetime(2026, 10, 1, 0, 10, tzinfo=UTC))
    new = _backup("20261120T000000Z-full-000002", datetime(2026, 11, 20, 0, 10, tzinfo=UTC))
    orphan = StoredGeneration("20261101T000000Z-full-000003", 3, 30, datetime(2026, 11, 1, tzinfo=UTC))
    wal = [
        StoredWal(
            "main/wal/00000001/000000010000000000000001", "000000010000000000000001", 16, T - days(1.5)
        ),
        StoredWal("main/wal/00000001/000000010000000000000002", "000000010000000000000002", 16, T - days(10)),
    ]
    policy = replace(POLICY, full_s=30 * DAY, lock_margin_s=5 * DAY)
    now = datetime(2026, 11, 3, tzinfo=UTC)  # old finished 33 d ago: past retention, not past the lock
    p = plan_expiry([old, new], [orphan], wal, policy, now)
    decision = {d.backup.id: d for d in p.backups}[old.id]
    assert decision.action == "keep"
    assert "object lock until 2026-11-05T00:10:00" in decision.reason
    assert [d.action for d in p.generations] == ["keep"]
    assert "object lock until" in p.generations[0].reason
    p = plan_expiry([old, new], [orphan], wal, policy, T)
    assert {d.backup.id: d.action for d in p.backups}[old.id] == "delete"
    assert [d.reason for d in p.wal] == [WAL_LOCKED, WAL_OLD]
    unlocked = plan_expiry([old, new], [orphan], wal, replace(policy, lock_margin_s=None), now)
    assert {d.backup.id: d.action for d in unlocked.backups}[old.id] == "delete"
