"""Recovery objectives as tables: the recovery window (physical and logical), the recovery point
age, the RTO estimate, plus hypothesis properties."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentflow_backupd.catalog.base import DrillRecord
from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog
from contentflow_backupd.model import BackupRecord, Scope, utcnow
from contentflow_backupd.ops.health.objectives import (
    BackupPoint,
    DrillFigures,
    RecoveryWindow,
    collect_objectives,
    evaluate_objectives,
    max_database_bytes,
    recovery_point_age,
    recovery_window,
    rto_estimate,
    rto_objective_met,
)
from contentflow_backupd.ops.restore.timeline import parse_history
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.storage.memory import MemoryStorage
from contentflow_backupd.wal import DEFAULT_SEGMENT_SIZE, Segment, format_lsn

T0 = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
SIZE = DEFAULT_SEGMENT_SIZE


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def seg(n: int, tli: int = 1) -> str:
    return Segment(tli, n).name(SIZE)


def backup(bid: str, finished: float, first: int, last: int, tli: int = 1) -> BackupPoint:
    return BackupPoint(
        id=bid,
        finished_at=at(finished),
        timeline=tli,
        stop_lsn=last * SIZE + 100,
        wal_first=seg(first, tli),
        wal_last=seg(last, tli),
    )


def archive(*segments: tuple[int, float], tli: int = 1) -> dict[str, datetime | None]:
    """Segment numbers with their stored time in minutes."""
    return {seg(n, tli): at(m) for n, m in segments}


# -- physical ----------------------------------------------------------------------------------
def test_one_backup_reaches_the_newest_segment() -> None:
    wal = archive((1, 1), (2, 2), (3, 10), (4, 20), (5, 30))
    w = recovery_window([backup("b1", 2.5, 1, 2)], "physical", wal=wal)
    assert (w.oldest, w.newest) == (at(2.5), at(30))
    assert (w.oldest_backup_id, w.newest_backup_id, w.newest_wal, w.backups) == ("b1", "b1", seg(5), 1)
    assert w.notes == ()


def test_the_window_starts_at_the_oldest_backup_whose_chain_reaches_the_end() -> None:
    wal = archive((1, 1), (2, 2), (3, 3), (5, 50), (6, 60), (7, 70))  # segment 4 is missing
    backups = [backup("old", 2.5, 1, 2), backup("new", 55, 5, 6), backup("newer", 65, 6, 6)]
    w = recovery_window(backups, "physical", wal=wal)
    assert (w.oldest, w.newest, w.oldest_backup_id, w.newest_backup_id) == (at(55), at(70), "new", "newer")
    assert w.backups == 2 and w.newest_wal == seg(7)
    assert len(w.notes) == 1 and "old" in w.notes[0] and seg(3) in w.notes[0]


def test_a_backup_whose_consistency_wal_is_missing_is_left_out() -> None:
    wal = archive((1, 1), (2, 2), (3, 3), (5, 50))
    backups = [backup("good", 2.5, 1, 2), backup("broken", 45, 4, 5)]
    w = recovery_window(backups, "physical", wal=wal)
    assert (w.oldest_backup_id, w.newest, w.newest_wal) == ("good", at(3), seg(3))
    assert any("broken" in n and seg(4) in n and "consistent" in n for n in w.notes)


def test_an_excluded_backup_is_named_and_the_window_shrinks() -> None:
    wal = archive((1, 1), (2, 2), (3, 3), (4, 40))
    backups = [backup("a", 2.5, 1, 2), backup("b", 3.5, 3, 3)]
    w = recovery_window(backups, "physical", wal=wal, excluded={"a": "open corrupt object k"})
    assert (w.oldest_backup_id, w.oldest, w.newest) == ("b", at(3.5), at(40))
    assert w.notes == ("backup a: open corrupt object k",)
    none = recovery_window(backups, "physical", wal=wal, excluded={"a": "x", "b": "y"})
    assert none.empty and none.oldest is None and len(none.notes) == 2


def test_no_backups_or_no_wal_is_an_empty_window() -> None:
    assert recovery_window([], "physical", wal=archive((1, 1))).empty
    w = recovery_window([backup("b", 1, 1, 1)], "physical", wal={})
    assert w.empty and "consistent" in w.notes[0]


def test_no_wal_after_the_newest_backup_ends_the_window_at_its_finish() -> None:
    wal = archive((1, 1), (2, 2))
    w = recovery_window([backup("b", 2.5, 1, 2)], "physical", wal=wal)
    assert (w.oldest, w.newest) == (at(2.5), at(2.5))


def test_unknown_stored_times_fall_back_to_the_backup_finish() -> None:
    wal: dict[str, datetime | None] = {seg(1): None, seg(2): None}
    w = recovery_window([backup("b", 5, 1, 1)], "physical", wal=wal)
    assert (w.oldest, w.newest) == (at(5), at(5))


def test_other_archive_files_do_not_count() -> None:
    wal = archive((1, 1), (2, 2))
    wal[seg(3) + ".partial"] = at(99)
    wal[f"{seg(1)}.00000028.backup"] = at(98)
    w = recovery_window([backup("b", 1.5, 1, 1)], "physical", wal=wal)
    assert w.newest == at(2) and w.newest_wal == seg(2)


def test_the_chain_follows_the_newest_timeline_history() -> None:
    switch = 3 * SIZE + 0x2000  # timeline 2 begins inside segment 3
    history = parse_history(f"1\t{format_lsn(switch)}\tno recovery target specified\n", 2)
    wal = {**archive((1, 1), (2, 2), (3, 3)), **archive((3, 30), (4, 40), tli=2)}
    before = backup("before", 1.5, 1, 1)
    after = BackupPoint("after-on-old", at(5), 1, 4 * SIZE, seg(4), seg(4))  # tl 1 beyond the switch
    on_two = backup("on-2", 35, 3, 3, tli=2)
    w = recovery_window([before, after, on_two], "physical", wal=wal, histories={2: history})
    assert (w.oldest_backup_id, w.newest_backup_id, w.newest_wal) == ("before", "on-2", seg(4, 2))
    assert w.newest == at(40)
    assert any("after-on-old" in n and "timeline 1" in n for n in w.notes)


def test_from_record_reads_the_catalog_details() -> None:
    r = BackupRecord(
        id="20261124T000000Z-full-aaaaaa",
        cluster="main",
        kind="full",
        mode="physical",
        status="succeeded",
        generation="g",
        started_at=at(0),
        finished_at=at(1),
        details={
            "timeline": 1,
            "stop_lsn": "0/2000100",
            "wal_first": seg(1),
            "wal_last": seg(2),
            "wal_segment_size": SIZE,
        },
    )
    p = BackupPoint.from_record(r)
    assert (p.timeline, p.stop_lsn, p.wal_first, p.wal_last, p.finished_at) == (
        1,
        0x2000100,
        seg(1),
        seg(2),
        at(1),
    )


# -- logical -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("finished", "excluded", "oldest", "newest", "count"),
    [
        ([], {}, None, None, 0),
        ([10], {}, 10, 10, 1),
        ([30, 10, 20], {}, 10, 30, 3),
        ([10, 20, 30], {"b30": "corrupt"}, 10, 20, 2),
        ([10, 20, 30], {"b10": "corrupt"}, 20, 30, 2),
        ([10], {"b10": "corrupt"}, None, None, 0),
    ],
)
def test_logical_window_table(
    finished: list[int], excluded: dict[str, str], oldest: int | None, newest: int | None, count: int
) -> None:
    points = [BackupPoint(f"b{m}", at(m)) for m in finished]
    w = recovery_window(points, "logical", excluded=excluded)
    assert w.oldest == (None if oldest is None else at(oldest))
    assert w.newest == (None if newest is None else at(newest))
    assert w.backups == count
    assert len(w.notes) == len(excluded)


# -- RPO / RTO ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("newest", "now", "age"),
    [(None, 10, None), (10, 10, 0.0), (10, 25, 900.0), (10, 9, 0.0)],
)
def test_recovery_point_age_table(newest: int | None, now: int, age: float | None) -> None:
    window = RecoveryWindow(
        "physical", None if newest is None else at(0), None if newest is None else at(newest)
    )
    assert recovery_point_age(window, at(now)) == age


@pytest.mark.parametrize(
    ("size", "throughput", "estimate", "met"),
    [
        (None, 100.0, None, None),
        (1000, None, None, None),
        (1000, 0.0, None, None),
        (1000, -5.0, None, None),
        (0, 100.0, 0.0, True),
        (720_000, 100.0, 7200.0, True),
        (720_001, 100.0, 7200.01, False),
        (10 * 2**30, 2**30 / 60, 600.0, True),
    ],
)
def test_rto_table(
    size: int | None, throughput: float | None, estimate: float | None, met: bool | None
) -> None:
    assert rto_estimate(size, throughput) == (None if estimate is None else pytest.approx(estimate))
    assert rto_objective_met(size, throughput, 7200) is met


@pytest.mark.parametrize(
    ("throughput", "objective", "largest"),
    [(100.0, 7200, 720_000), (0.0, 7200, 0), (100.0, 0, 0), (2**30 / 60, 7200, 120 * 2**30)],
)
def test_max_database_bytes_table(throughput: float, objective: float, largest: int) -> None:
    assert max_database_bytes(throughput, objective) == largest


@given(
    st.floats(min_value=1.0, max_value=1e12, allow_nan=False),
    st.floats(min_value=1.0, max_value=1e6, allow_nan=False),
)
def test_the_largest_size_meets_the_objective_and_one_more_second_of_data_does_not(
    throughput: float, objective: float
) -> None:
    largest = max_database_bytes(throughput, objective)
    assert rto_objective_met(largest, throughput, objective) is True
    assert rto_objective_met(largest + int(throughput) + 1, throughput, objective) is False


def test_evaluate_objectives_reports_both_objectives() -> None:
    window = RecoveryWindow("physical", at(0), at(50), "a", "b", seg(9), 2)
    drill = DrillFigures(finished_at=at(40), rto_seconds=100.0, restored_bytes=10_000)
    report = evaluate_objectives(window, at(60), database_bytes=50_000, drill=drill, rpo_objective_s=900)
    assert report["recovery_point_age_seconds"] == 600.0 and report["rpo_met"] is True
    assert report["restore_throughput_bytes_per_second"] == 100.0
    assert report["rto_estimate_seconds"] == 500.0 and report["rto_met"] is True
    assert report["max_database_bytes_for_rto"] == 720_000
    assert report["window"]["newest"] == "2026-11-24T00:50:00Z"
    late = evaluate_objectives(window, at(66), database_bytes=None, drill=None, rpo_objective_s=900)
    assert late["rpo_met"] is False and late["rto_met"] is None and late["last_drill"] is None


# -- collection from a real catalog (SQLite) and repository (in memory) ------------------------
def _record(
    bid: str,
    mode: str,
    finished: datetime,
    details: dict[str, object] | None = None,
    repository_id: str | None = None,
) -> BackupRecord:
    return BackupRecord(
        id=bid,
        cluster="main",
        kind="full",
        mode=mode,  # type: ignore[arg-type]
        status="succeeded",
        generation=bid,
        started_at=finished - timedelta(minutes=1),
        finished_at=finished,
        details=details or {},
        repository_id=repository_id,
    )


def _wal_details(first: int, last: int) -> dict[str, object]:
    return {
        "timeline": 1,
        "stop_lsn": format_lsn(last * SIZE + 100),
        "wal_first": seg(first),
        "wal_last": seg(last),
        "wal_segment_size": SIZE,
    }


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Repository, SqlCatalog]]:
    repo = Repository.init(
        MemoryStorage(), KekSecret("passphrase", b"objectives test", "test"), chunker=ChunkerParams()
    )
    catalog = open_catalog(f"sqlite:///{tmp_path}/catalog.db")
    try:
        yield repo, catalog
    finally:
        catalog.close()


def test_collect_objectives_physical(stores: tuple[Repository, SqlCatalog]) -> None:
    repo, catalog = stores
    archive = WalArchive(repo, "main")
    before = utcnow()
    for n in (1, 2, 3, 4):
        repo.put_object(archive.key(seg(n)), b"stand-in for a WAL segment")
    after = utcnow()
    catalog.upsert_backup(
        _record("20261124T000000Z-full-aaaaaa", "physical", before, _wal_details(1, 1), repository_id=repo.id)
    )
    catalog.upsert_backup(
        _record("20261124T000100Z-full-bbbbbb", "physical", before, _wal_details(3, 3), repository_id=repo.id)
    )
    catalog.upsert_backup(
        _record("20261124T000200Z-full-cccccc", "logical", after, repository_id=repo.id)
    )  # other mode
    catalog.record_corrupt(
        Scope(repo.id, "main"),
        "main/chunks/x/00/y",
        ["20261124T000000Z-full-aaaaaa"],
        "failed authentication",
    )
    catalog.add_drill(
        DrillRecord(
            id="d1", cluster="main", mode="physical", backup_id="20261124T000100Z-full-bbbbbb",
            target="the backup", status="succeeded", started_at=before, finished_at=after,
            rto_seconds=60.0, restored_bytes=6_000_000_000, throughput_bytes_per_s=100_000_000.0,
            repository_id=repo.id,
        )
    )  # fmt: skip
    now = after + timedelta(seconds=90)
    out = collect_objectives(repo, catalog, "main", "physical", 10**12, now=now)
    window = out["window"]
    assert window["oldest_backup_id"] == "20261124T000100Z-full-bbbbbb" and window["newest_wal"] == seg(4)
    newest = datetime.fromisoformat(window["newest"].replace("Z", "+00:00"))
    assert before <= newest <= after
    assert any("aaaaaa" in n and "open corrupt object main/chunks/x/00/y" in n for n in window["notes"])
    assert 90 <= out["recovery_point_age_seconds"] <= 90 + (after - before).total_seconds()
    assert out["rpo_met"] is True
    assert out["restore_throughput_bytes_per_second"] == 100_000_000.0
    assert out["rto_estimate_seconds"] == 10_000.0 and out["rto_met"] is False
    assert out["last_drill"]["rto_seconds"] == 60.0


def test_collect_objectives_logical_without_a_drill(stores: tuple[Repository, SqlCatalog]) -> None:
    repo, catalog = stores
    catalog.upsert_backup(_record("20261124T000000Z-full-aaaaaa", "logical", at(10), repository_id=repo.id))
    catalog.upsert_backup(_record("20261124T010000Z-full-bbbbbb", "logical", at(70), repository_id=repo.id))
    out = collect_objectives(repo, catalog, "main", "logical", None, now=at(100), rpo_objective_s=900)
    assert (out["window"]["oldest"], out["window"]["newest"]) == (
        "2026-11-24T00:10:00Z",
        "2026-11-24T01:10:00Z",
    )
    assert out["recovery_point_age_seconds"] == 1800.0 and out["rpo_met"] is False
    assert out["last_drill"] is None and out["rto_met"] is None and out["rto_estimate_seconds"] is None
