"""The health report: objectives, evaluation tables, and what the catalog and WAL archive say."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog
from contentflow_backupd.errors import SourceError
from contentflow_backupd.model import (
    BackupRecord,
    Scope,
)
from contentflow_backupd.ops.health.evaluate import (
    DependencyState,
    DrillState,
    HealthInputs,
    HealthObjectives,
    KindState,
    RecoveryState,
    ServerWal,
    WalState,
    derive_objectives,
    evaluate_health,
    human_seconds,
)
from contentflow_backupd.ops.health.inputs import (
    check_dependencies,
    collect_health_inputs,
    read_wal_state,
    wal_pending,
)
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.storage.base import put_bytes
from contentflow_backupd.storage.local import LocalStorage

REPO_ID = "repo-test"
"""The repository id of the scope these tests read and write."""

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
H = 3600.0
SEG = 16 * 1024 * 1024
OBJ = HealthObjectives(full=26 * H, incremental=12 * H, wal=900.0)
UP = {n: DependencyState(True, "reachable") for n in ("database", "storage", "catalog")}


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def healthy_inputs(**changes: object) -> HealthInputs:
    base = HealthInputs(
        kinds={
            "full": KindState(ago(3 * H), "succeeded", ago(3 * H)),
            "incremental": KindState(ago(1 * H), "succeeded", ago(1 * H)),
        },
        wal=WalState(ago(60), pending=True),
        dependencies=UP,
        leader=True,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def check(report_inputs: HealthInputs, name: str, objectives: HealthObjectives = OBJ) -> dict[str, object]:
    report = evaluate_health(report_inputs, objectives, NOW)
    found = [c.to_json() for c in report.checks if c.name == name]
    assert len(found) == 1, [c.name for c in report.checks]
    return found[0]


# -- objectives --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("periods", "ages", "physical", "expected"),
    [
        # defaults: daily full -> 26 h, 6-hourly incremental -> 12 h, 15 min WAL -> 16 min
        ((86400, 6 * H, 900), (None, None, None), True, (26 * H, 12 * H, 960)),
        ((86400, 6 * H, 900), (None, None, None), False, (26 * H, 12 * H, None)),
        # a short incremental period keeps the 2 h slack; a long one doubles
        ((600, 120, 60), (None, None, None), True, (600 + 2 * H, 120 + 2 * H, 120)),
        ((7 * 86400, 86400, 900), (None, None, None), True, (7 * 86400 + 2 * H, 2 * 86400, 960)),
        # explicit maximum ages win
        ((86400, 6 * H, 900), (3 * H, 2 * H, 60), True, (3 * H, 2 * H, 60)),
        # off schedules are not checked, whatever the explicit age
        ((None, None, None), (3 * H, 2 * H, None), True, (None, None, None)),
        # the WAL job off: the explicit age still applies (archive_command archives anyway)
        ((86400, None, None), (None, None, 300), True, (26 * H, None, 300)),
        ((86400, None, None), (None, None, 300), False, (26 * H, None, None)),
    ],
)
def test_derive_objectives(
    periods: tuple[float | None, ...],
    ages: tuple[float | None, ...],
    physical: bool,
    expected: tuple[float | None, ...],
) -> None:
    got = derive_objectives(
        full_period=periods[0],
        incremental_period=periods[1],
        wal_period=periods[2],
        physical=physical,
        full_max_age=ages[0],
        incremental_max_age=ages[1],
        wal_max_age=ages[2],
    )
    assert (got.full, got.incremental, got.wal) == expected


# -- evaluation --------------------------------------------------------------------------------
def test_all_good_is_healthy_and_lists_every_check() -> None:
    report = evaluate_health(healthy_inputs(), OBJ, NOW)
    assert report.ok
    assert [c.name for c in report.checks] == [
        "full_backup_age",
        "full_last_run",
        "incremental_backup_age",
        "incremental_last_run",
        "wal_archive_age",
        "dependency_database",
        "dependency_storage",
        "dependency_catalog",
        "leader",
    ]
    doc = report.to_json()
    assert doc["ok"] is True and doc["status"] == "healthy" and doc["checked_at"] == "2026-11-24T12:00:00Z"
    json.dumps(doc)  # serialisable
    age = doc["checks"][0]
    assert age["value_seconds"] == 3 * H and age["objective_seconds"] == 26 * H
    assert age["at"] == "2026-11-24T09:00:00Z"
    assert "value_seconds" not in doc["checks"][1]


@pytest.mark.parametrize(
    ("kind", "state", "ok", "words"),
    [
        ("full", KindState(ago(26 * H)), True, "1d 2h ago (objective 1d 2h)"),  # at the objective
        ("full", KindState(ago(26 * H + 1)), False, "older than the objective 1d 2h"),
        ("full", KindState(None), False, "no successful full backup yet"),
        ("incremental", KindState(ago(11 * H)), True, "11h ago"),
        ("incremental", KindState(ago(13 * H)), False, "older than the objective 12h"),
        ("incremental", KindState(None), False, "no successful backup (full or incremental) yet"),
    ],
)
def test_backup_age(kind: str, state: KindState, ok: bool, words: str) -> None:
    kinds = dict(healthy_inputs().kinds or {})
    kinds[kind] = state
    got = check(healthy_inputs(kinds=kinds), f"{kind}_backup_age")
    assert got["ok"] is ok
    assert words in str(got["detail"])


@pytest.mark.parametrize(
    ("state", "ok", "words"),
    [
        (KindState(ago(H), "failed", ago(60), "cannot connect to the database"), False, "cannot connect"),
        (KindState(ago(H), "failed", ago(60), None), False, "no error recorded"),
        (KindState(ago(H), "succeeded", ago(60)), True, "succeeded at 2026-11-24T11:59:00Z"),
        (KindState(ago(H), None), True, "no finished full run yet"),
    ],
)
def test_last_run(state: KindState, ok: bool, words: str) -> None:
    kinds = dict(healthy_inputs().kinds or {})
    kinds["full"] = state
    report = evaluate_health(healthy_inputs(kinds=kinds), OBJ, NOW)
    got = check(healthy_inputs(kinds=kinds), "full_last_run")
    assert got["ok"] is ok and report.ok is ok
    assert words in str(got["detail"])


def test_a_kind_whose_schedule_is_off_is_not_checked() -> None:
    kinds = {"full": KindState(ago(3 * H), "succeeded"), "incremental": KindState(None, "failed")}
    report = evaluate_health(healthy_inputs(kinds=kinds), replace(OBJ, incremental=None), NOW)
    assert report.ok
    assert not [c for c in report.checks if c.name.startswith("incremental")]


def test_unreadable_catalog_fails_the_backup_checks() -> None:
    report = evaluate_health(healthy_inputs(kinds=None), OBJ, NOW)
    failed = {c.name for c in report.failed}
    assert failed == {"full_backup_age", "full_last_run", "incremental_backup_age", "incremental_last_run"}
    assert all("catalog could not be read" in c.detail for c in report.failed)


@pytest.mark.parametrize(
    ("wal", "ok", "words"),
    [
        (WalState(ago(900), pending=True), True, "15m ago (objective 15m)"),
        (WalState(ago(60), pending=None, archiver_failing=True), True, "last attempt failed"),
        (WalState(ago(901), pending=True), False, "WAL is waiting to be archived"),
        (WalState(ago(5 * H), pending=False), True, "no WAL is waiting to be archived (idle database)"),
        (WalState(ago(5 * H), pending=False, archiver_failing=True), False, "the archiver is failing"),
        (WalState(ago(5 * H), pending=None), False, "whether WAL is waiting is unknown"),
        (WalState(None, pending=True), False, "no WAL archived yet and WAL is waiting"),
        (WalState(None, pending=None, detail="server down"), False, "(server down)"),
        (None, False, "unknown"),
    ],
)
def test_wal_archive_age(wal: WalState | None, ok: bool, words: str) -> None:
    got = check(healthy_inputs(wal=wal), "wal_archive_age")
    assert got["ok"] is ok
    assert words in str(got["detail"])
    assert got["objective_seconds"] == 900.0


def test_no_wal_check_in_logical_mode() -> None:
    report = evaluate_health(healthy_inputs(wal=None), replace(OBJ, wal=None), NOW)
    assert report.ok
    assert "wal_archive_age" not in {c.name for c in report.checks}


def test_dependencies_and_leader() -> None:
    deps = {
        "catalog": DependencyState(True),
        "database": DependencyState(False, "cannot connect to the database at db:5432"),
        "storage": DependencyState(True, "reachable"),
    }
    report = evaluate_health(healthy_inputs(dependencies=deps, leader=False), OBJ, NOW)
    assert not report.ok
    assert [c.name for c in report.failed] == ["dependency_database"]
    assert report.failed[0].detail == "cannot connect to the database at db:5432"
    names = [c.name for c in report.checks]
    assert names.index("dependency_database") < names.index("dependency_storage") < names.index("leader")
    leader = check(healthy_inputs(leader=False), "leader")
    assert leader["ok"] is True and "standby" in str(leader["detail"])
    assert "leader" not in {c.name for c in evaluate_health(healthy_inputs(leader=None), OBJ, NOW).checks}


def test_text_table() -> None:
    kinds = {"full": KindState(None, "failed", ago(60), "boom"), "incremental": KindState(ago(H))}
    text = evaluate_health(healthy_inputs(kinds=kinds), OBJ, NOW).to_text()
    assert text.splitlines()[0].split() == ["CHECK", "STATE", "AGE", "OBJECTIVE", "DETAIL"]
    assert any(line.startswith("full_last_run") and "FAIL" in line for line in text.splitlines())
    assert text.rstrip().endswith("overall: UNHEALTHY at 2026-11-24T12:00:00Z")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45.9, "45s"), (60, "1m"), (3661, "1h 1m"), (93600, "1d 2h"), (float("inf"), "never")],
)
def test_human_seconds(seconds: float, text: str) -> None:
    assert human_seconds(seconds) == text


kind_states = st.builds(
    KindState,
    last_success_at=st.none() | st.integers(0, 40 * 86400).map(ago),
    last_run_status=st.sampled_from([None, "succeeded", "failed"]),
)


@given(
    full=kind_states, incremental=kind_states, deps=st.dictionaries(st.sampled_from(list(UP)), st.booleans())
)
def test_report_properties(full: KindState, incremental: KindState, deps: dict[str, bool]) -> None:
    inputs = HealthInputs(
        kinds={"full": full, "incremental": incremental},
        dependencies={k: DependencyState(v) for k, v in deps.items()},
    )
    report = evaluate_health(inputs, replace(OBJ, wal=None), NOW)
    assert report.ok == all(c.ok for c in report.checks)
    if "failed" in (full.last_run_status, incremental.last_run_status):
        assert not report.ok  # a failed last run is always a breach
    if None in (full.last_success_at, incremental.last_success_at) or not all(deps.values()):
        assert not report.ok
    fresh = all(
        s.last_success_at is not None and (NOW - s.last_success_at).total_seconds() <= limit
        for s, limit in ((full, OBJ.full), (incremental, OBJ.incremental))
    )
    if fresh and "failed" not in (full.last_run_status, incremental.last_run_status) and all(deps.values()):
        assert report.ok


# -- WAL pending (pure) ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("current_lsn", "archived", "pending"),
    [
        (3 * SEG, ["000000010000000000000002"], False),  # right after a switch: nothing new
        (3 * SEG + 40, ["000000010000000000000002"], False),  # only the next segment's page header
        (3 * SEG + 41, ["000000010000000000000002"], True),
        (2 * SEG + 100, ["000000010000000000000002"], False),  # still inside the archived range
        (5 * SEG, ["000000010000000000000002", "000000010000000000000003"], True),
        (3 * SEG + 1, ["000000020000000000000005"], True),  # archived on another timeline only
        (3 * SEG, ["00000001.history", "000000010000000000000002.partial"], True),
        (0x1_0000_0000 + SEG, ["000000010000000100000000"], False),  # the log/segment carry
    ],
)
def test_wal_pending(current_lsn: int, archived: list[str], pending: bool) -> None:
    assert wal_pending(ServerWal(current_lsn, 1, SEG), archived) is pending


def test_wal_pending_unknown_on_a_standby() -> None:
    assert wal_pending(ServerWal(None, None), ["000000010000000000000002"]) is None


# -- collection from a real catalog and a real local repository --------------------------------
@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SqlCatalog]:
    cat = open_catalog(f"sqlite:///{tmp_path}/catalog.sqlite")
    try:
        yield cat
    finally:
        cat.close()


def backup(
    bid: str, kind: str, finished: datetime, *, cluster: str = "main", status: str = "succeeded"
) -> BackupRecord:
    return BackupRecord(
        id=bid,
        cluster=cluster,
        kind=kind,  # type: ignore[arg-type]
        mode="logical",
        status=status,  # type: ignore[arg-type]
        generation="g1",
        repository_id=REPO_ID,
        started_at=finished - timedelta(minutes=5),
        finished_at=finished,
    )


def run(catalog: SqlCatalog, job: str, status: str, error: str | None = None) -> None:
    r = catalog.start_run(Scope(REPO_ID, "main"), job, "scheduled")
    if status != "running":
        catalog.finish_run(r.id, status, error=error)  # type: ignore[arg-type]


def test_collect_from_an_empty_catalog(catalog: SqlCatalog) -> None:
    inputs = collect_health_inputs(
        catalog, Scope(REPO_ID, "main"), dependencies={"catalog": True}, leader=False
    )
    assert inputs.kinds == {"full": KindState(), "incremental": KindState()}
    assert inputs.dependencies == {"catalog": DependencyState(True)}
    assert inputs.leader is False


def test_collect_backups_and_runs(catalog: SqlCatalog) -> None:
    t = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    catalog.upsert_backup(backup("20261120T015500Z-full-aaaaaa", "full", t))
    catalog.upsert_backup(backup("20261120T075500Z-incr-bbbbbb", "incremental", t + timedelta(hours=6)))
    catalog.upsert_backup(
        backup("20261121T015500Z-full-cccccc", "full", t + timedelta(days=1), status="failed")
    )
    catalog.upsert_backup(
        backup("20261122T015500Z-full-dddddd", "full", t + timedelta(days=2), cluster="other")
    )
    run(catalog, "full", "failed", "cannot connect")
    run(catalog, "full", "interrupted")  # neither counts
    run(catalog, "full", "skipped")
    run(catalog, "full", "running")
    run(catalog, "incremental", "failed", "disk full")
    run(catalog, "incremental", "succeeded")
    run(catalog, "wal", "failed", "not a backup job")
    inputs = collect_health_inputs(catalog, Scope(REPO_ID, "main"))
    assert inputs.kinds is not None
    full, incr = inputs.kinds["full"], inputs.kinds["incremental"]
    assert full.last_success_at == t
    assert (full.last_run_status, full.last_run_error) == ("failed", "cannot connect")
    assert full.last_run_at is not None
    # an incremental's freshness counts any kind: the newest backup of main is the incremental
    assert incr.last_success_at == t + timedelta(hours=6)
    assert (incr.last_run_status, incr.last_run_error) == ("succeeded", None)
    # a newer full backup also refreshes the incremental check
    catalog.upsert_backup(backup("20261123T015500Z-full-eeeeee", "full", t + timedelta(days=3)))
    kinds = collect_health_inputs(catalog, Scope(REPO_ID, "main")).kinds
    assert kinds is not None and kinds["incremental"].last_success_at == t + timedelta(days=3)
    run(catalog, "full", "succeeded")
    kinds = collect_health_inputs(catalog, Scope(REPO_ID, "main")).kinds
    assert kinds is not None and kinds["full"].last_run_status == "succeeded"


def test_collect_without_a_catalog() -> None:
    inputs = collect_health_inputs(None, None, dependencies={"catalog": DependencyState(False, "locked")})
    assert inputs.kinds is None
    assert inputs.dependencies["catalog"] == DependencyState(False, "locked")


def test_check_dependencies() -> None:
    def boom() -> None:
        raise SourceError("cannot connect to the database at db:5432", hint="check the URL")

    def broken() -> None:
        raise RuntimeError("surprise")

    states = check_dependencies({"database": boom, "storage": lambda: None, "catalog": broken})
    assert states == {
        "database": DependencyState(False, "cannot connect to the database at db:5432 (check the URL)"),
        "storage": DependencyState(True, "reachable"),
        "catalog": DependencyState(False, "RuntimeError: surprise"),
    }


@pytest.fixture
def archive(tmp_path: Path) -> WalArchive:
    storage = LocalStorage(tmp_path / "repo")
    repo = Repository.init(storage, KekSecret("keyfile", bytes(range(32)), "test"), chunker=ChunkerParams())
    return WalArchive(repo, "main")


def _store(archive: WalArchive, name: str, when: datetime) -> None:
    key = archive.key(name)
    put_bytes(archive.repo.storage, key, b"opaque")
    path = Path(archive.repo.storage.url.removeprefix("file://")) / key
    os.utime(path, (when.timestamp(), when.timestamp()))


def test_read_wal_state(archive: WalArchive) -> None:
    assert read_wal_state(archive, ServerWal(SEG, 1, SEG)) == WalState(None, True, False, None, segments=0)
    _store(archive, "000000010000000000000002", ago(600))
    _store(archive, "000000010000000000000003", ago(300))
    _store(archive, "00000001.history", ago(900))
    state = read_wal_state(archive, ServerWal(4 * SEG, 1, SEG, archiver_failing=True))
    assert state == WalState(ago(300), False, True, None, segments=2)  # the history file is no segment
    assert read_wal_state(archive, ServerWal(4 * SEG + 8192, 1, SEG)).pending is True
    standby = read_wal_state(archive, ServerWal(None, None, SEG))
    assert standby.pending is None and standby.detail is not None and "standby" in standby.detail
    unasked = read_wal_state(archive, None, detail="server not asked: down")
    assert unasked == WalState(ago(300), None, False, "server not asked: down", segments=2)


# -- verification, drills, recovery objectives ---------------------------------------------------
def _inputs(**kw: object) -> HealthInputs:
    return replace(healthy_inputs(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("corrupt", "ok"), [(None, True), (0, True), (2, False)])
def test_corrupt_objects_make_health_fail(corrupt: int | None, ok: bool) -> None:
    report = evaluate_health(_inputs(corrupt_objects=corrupt), OBJ, NOW)
    assert report.ok is ok
    names = [c.name for c in report.checks]
    assert ("verify_corrupt_objects" in names) is (corrupt is not None)


@pytest.mark.parametrize(
    ("drill", "ok", "text"),
    [
        (DrillState(), True, "no restore drill yet"),
        (DrillState("succeeded", NOW, None, 95.0), True, "succeeded (RTO 1m 35s)"),
        (DrillState("failed", NOW, "check row_counts failed"), False, "check row_counts failed"),
    ],
)
def test_last_drill(drill: DrillState, ok: bool, text: str) -> None:
    report = evaluate_health(_inputs(drill=drill), OBJ, NOW)
    check = next(c for c in report.checks if c.name == "restore_test_last_run")
    assert check.ok is ok and text in check.detail
    assert report.ok is ok


@pytest.mark.parametrize(
    ("recovery", "ok", "text"),
    [
        (RecoveryState(), True, "nothing restorable yet"),
        (RecoveryState(ago(86400), ago(60), 7200.0, None), True, "RTO not measured yet"),
        (RecoveryState(ago(86400), ago(60), 7200.0, 3600.0, 50.0), True, "objective 2h is met"),
        (RecoveryState(ago(86400), ago(60), 7200.0, 9000.0), False, "objective 2h is NOT met"),
    ],
)
def test_recovery_objectives(recovery: RecoveryState, ok: bool, text: str) -> None:
    report = evaluate_health(_inputs(recovery=recovery), OBJ, NOW)
    check = next(c for c in report.checks if c.name == "recovery_objectives")
    assert check.ok is ok and text in check.detail, check.detail
    if recovery.window_end is not None:
        assert "RPO now 1m" in check.detail
