"""``run_drill`` without a PostgreSQL server: the in-memory PostgreSQL of tests/support/fake_pg.py,
and everything else real (MemoryStorage, a Repository, SqlCatalog on a SQLite file, files in
tmp_path). The end-to-end drills are in tests/e2e/test_drill.py."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog
from contentflow_backupd.errors import LockedError
from contentflow_backupd.model import Scope
from contentflow_backupd.ops.backup.run import BackupOptions, run_backup
from contentflow_backupd.ops.drill.run import JOB, DrillOptions, DrillResult, run_drill
from contentflow_backupd.ops.drill.workspace import DRILLS_DIR
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.storage.memory import MemoryStorage
from contentflow_backupd.wal import parse_lsn
from tests.support.fake_pg import Content, FakeDatabase, FakeLogicalSource, FakePhysicalSource, FakePostgres

PASS = KekSecret("passphrase", b"drill unit tests", "test")
CLUSTER = "main"


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStorage(), PASS, chunker=ChunkerParams(avg_size=64 * 1024))


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SqlCatalog]:
    opened = open_catalog(f"sqlite:///{tmp_path}/catalog/catalog.sqlite")
    yield opened
    opened.close()


@pytest.fixture
def pg() -> FakePostgres:
    return FakePostgres()


def logical_backup(repo: Repository, catalog: SqlCatalog, source: FakeLogicalSource | None = None) -> str:
    opts = BackupOptions(cluster=CLUSTER, kind="full", mode="logical")
    return run_backup(repo, catalog, opts, logical=source or FakeLogicalSource(Content())).id


def physical_backup(repo: Repository, catalog: SqlCatalog, source: FakePhysicalSource) -> str:
    opts = BackupOptions(cluster=CLUSTER, kind="full", mode="physical", archive_timeout=5)
    return run_backup(repo, catalog, opts, physical=source, archive=WalArchive(repo, CLUSTER)).id


def options(tmp_path: Path, mode: str = "logical", **over: object) -> DrillOptions:
    values: dict[str, object] = {
        "cluster": CLUSTER,
        "state_dir": tmp_path / "state",
        "mode": mode,
        "tool": ["contentflow-backupd"],
        "seed": 7,
    }
    values.update(over)
    return DrillOptions(**values)  # type: ignore[arg-type]


def statuses(result: DrillResult) -> dict[str, str]:
    return {c.name: c.status for c in result.checks}


def assert_cleaned_up(pg: FakePostgres, tmp_path: Path) -> None:
    assert pg.running == set(), "a scratch server was left running"
    drills = tmp_path / "state" / DRILLS_DIR
    assert not drills.exists() or list(drills.iterdir()) == [], "a drill directory was left behind"


# -- logical drills ----------------------------------------------------------------------------
def test_logical_drill_restores_checks_records_and_cleans_up(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    backup_id = logical_backup(repo, catalog)
    result = run_drill(repo, catalog, options(tmp_path), pg=pg)
    assert result.succeeded, result.error
    assert result.backup_id == backup_id
    assert statuses(result) == {
        "restore": "passed",
        "recovery": "passed",
        "connect": "passed",
        "schema": "passed",
        "read_tables": "passed",
        "row_counts": "passed",
        "amcheck": "passed",
        "user_checks": "skipped",
    }
    assert result.rto_seconds is not None and result.restored_bytes
    # an empty scratch server was made (initdb), restored into, then stopped
    assert [e.split()[0] for e in pg.events if e.split()[0] in ("initdb", "start", "restored", "stop")] == [
        "initdb",
        "start",
        "restored",
        "stop",
    ]
    assert_cleaned_up(pg, tmp_path)
    scope = Scope(repo.id, CLUSTER)
    drills = catalog.list_drills(scope)
    assert [(d.id, d.status, d.backup_id) for d in drills] == [(result.id, "succeeded", backup_id)]
    runs = [r for r in catalog.list_runs(scope) if r.job == JOB]
    assert [r.status for r in runs] == ["succeeded"]


def test_rows_that_differ_from_the_dump_fail_the_drill(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    """The dump's recorded facts say 3 users; the restored data holds 2 (and another schema)."""

    class Lying(FakeLogicalSource):
        def dump_facts(self) -> dict[str, object]:
            recorded = Content(schema="schema-v2", tables={"public.users": 3, "public.posts": 7})
            return {**recorded.fingerprint().to_details(), "row_counts": dict(recorded.tables)}

    logical_backup(repo, catalog, Lying(Content(tables={"public.users": 2, "public.posts": 7})))
    result = run_drill(repo, catalog, options(tmp_path), pg=pg)
    assert not result.succeeded
    assert statuses(result)["schema"] == "failed"
    assert statuses(result)["row_counts"] == "failed"
    assert "public.users: 3 recorded, 2 restored" in (result.error or "")
    assert_cleaned_up(pg, tmp_path)
    assert [d.status for d in catalog.list_drills(Scope(repo.id, CLUSTER))] == ["failed"]


def test_user_checks_run_against_the_restored_database(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    logical_backup(repo, catalog)
    checks = tmp_path / "checks.sql"
    checks.write_text("select count(*) = 3 from public.users;\nselect count(*) = 1 from public.posts;\n")
    result = run_drill(repo, catalog, options(tmp_path, checks_file=checks), pg=pg)
    assert statuses(result)["user_check:1"] == "passed"
    assert statuses(result)["user_check:2"] == "failed"
    assert not result.succeeded


def test_drill_server_database_is_dropped_and_a_failed_drop_is_retried_by_the_next_drill(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    logical_backup(repo, catalog)
    server = FakeDatabase("drillhost", "postgres")
    pg.drop_fails = "permission denied to drop database"
    first = run_drill(repo, catalog, options(tmp_path, database=server), pg=pg)
    assert first.succeeded, first.error
    scratch = [k for k in pg.served if k.startswith("drillhost/backupd_drill_")]
    assert len(scratch) == 1, "the restored scratch database is still there"
    kept = list((tmp_path / "state" / DRILLS_DIR).iterdir())
    assert [p.name for p in kept] == [first.id], "its marker stays, naming the database"

    pg.drop_fails = None
    second = run_drill(repo, catalog, options(tmp_path, database=server), pg=pg)
    assert second.succeeded, second.error
    assert [k for k in pg.served if k.startswith("drillhost/")] == []
    assert f"drop {scratch[0]}" in pg.events
    assert_cleaned_up(pg, tmp_path)


def test_a_failed_pg_restore_fails_the_restore_step(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    logical_backup(repo, catalog)
    pg.restore_fails = "pg_restore: error: could not execute query"
    result = run_drill(repo, catalog, options(tmp_path), pg=pg)
    assert statuses(result) == {"restore": "failed"}
    assert "could not execute query" in (result.error or "")
    assert_cleaned_up(pg, tmp_path)


# -- choosing the backup -------------------------------------------------------------------------
def test_latest_falls_back_past_an_unreadable_manifest_and_skips_other_modes(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    good = logical_backup(repo, catalog)
    physical_backup(repo, catalog, FakePhysicalSource(Content(), WalArchive(repo, CLUSTER)))
    bad = logical_backup(repo, catalog)
    repo.storage.put(layout.manifest_key(CLUSTER, bad), _stream(b"not a manifest"))
    result = run_drill(repo, catalog, options(tmp_path), pg=pg)
    assert result.backup_id == good
    assert result.succeeded, result.error


def test_a_damaged_chunk_fails_the_restore_and_the_drill_is_recorded_failed(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    backup_id = logical_backup(repo, catalog)
    manifest = repo.read_manifest(CLUSTER, backup_id)
    ref = manifest.streams[0].chunks[0]
    key = layout.chunk_key(CLUSTER, manifest.generation, ref.id)
    raw = bytearray(repo.storage.get(key))
    raw[-1] ^= 0xFF
    repo.storage.put(key, _stream(bytes(raw)))
    result = run_drill(repo, catalog, options(tmp_path), pg=pg)
    assert statuses(result) == {"restore": "failed"}
    assert key in (result.error or "")
    assert_cleaned_up(pg, tmp_path)
    assert [d.status for d in catalog.list_drills(Scope(repo.id, CLUSTER))] == ["failed"]


def test_no_backup_to_drill_is_a_failed_restore_step(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    result = run_drill(repo, catalog, options(tmp_path, mode="physical"), pg=pg)
    assert statuses(result) == {"restore": "failed"}
    assert "there are no physical backups" in (result.error or "")


# -- physical drills -----------------------------------------------------------------------------
def test_physical_drill_recovers_to_a_random_point_and_verifies(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    backup_id = physical_backup(repo, catalog, FakePhysicalSource(Content(), WalArchive(repo, CLUSTER)))
    result = run_drill(repo, catalog, options(tmp_path, mode="physical"), pg=pg)
    assert result.succeeded, result.error
    assert result.backup_id == backup_id
    assert result.target.endswith("(random)")
    s = statuses(result)
    assert (s["restore"], s["pg_verifybackup"], s["recovery"], s["schema"]) == ("passed",) * 4
    assert s["row_counts"] == "passed"  # estimates only: reported, not compared
    manifest = repo.read_manifest(CLUSTER, backup_id)
    lsn = result.target.split()[1]
    assert parse_lsn(manifest.details["stop_lsn"]) <= parse_lsn(lsn)
    assert_cleaned_up(pg, tmp_path)


def test_a_server_still_in_recovery_fails_the_recovery_check(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    physical_backup(repo, catalog, FakePhysicalSource(Content(), WalArchive(repo, CLUSTER)))
    pg.stays_in_recovery = True
    result = run_drill(repo, catalog, options(tmp_path, mode="physical", target_time=None), pg=pg)
    assert statuses(result)["recovery"] == "failed"
    assert "still in recovery" in (result.error or "")
    assert_cleaned_up(pg, tmp_path)


def test_pg_verifybackup_mismatch_fails_and_a_missing_tool_is_not_run(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    physical_backup(repo, catalog, FakePhysicalSource(Content(), WalArchive(repo, CLUSTER)))
    pg.verify_verdict = ("failed", "the restored files do not match the backup's manifest")
    failed = run_drill(repo, catalog, options(tmp_path, mode="physical"), pg=pg)
    assert statuses(failed)["pg_verifybackup"] == "failed" and not failed.succeeded
    pg.verify_verdict = ("not_run", "pg_verifybackup could not run: not found")
    not_run = run_drill(repo, catalog, options(tmp_path, mode="physical"), pg=pg)
    assert statuses(not_run)["pg_verifybackup"] == "not_run"
    assert not_run.succeeded, "a check that could not run does not fail the drill"


def test_a_server_that_does_not_start_is_stopped_and_removed(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    physical_backup(repo, catalog, FakePhysicalSource(Content(), WalArchive(repo, CLUSTER)))
    pg.start_fails = "FATAL: could not map anonymous shared memory"
    result = run_drill(repo, catalog, options(tmp_path, mode="physical"), pg=pg)
    assert statuses(result)["recovery"] == "failed"
    assert "shared memory" in (result.error or "")
    started = [e.split()[1] for e in pg.events if e.startswith("start ")]
    assert [f"stop {name}" in pg.events for name in started] == [True]
    assert_cleaned_up(pg, tmp_path)


def test_missing_server_binaries_fail_the_restore_step(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    physical_backup(repo, catalog, FakePhysicalSource(Content(), WalArchive(repo, CLUSTER)))
    pg.no_server_binaries = True
    result = run_drill(repo, catalog, options(tmp_path, mode="physical"), pg=pg)
    assert statuses(result) == {"restore": "failed"}
    assert "server (postgres, pg_ctl) was not found" in (result.error or "")
    assert_cleaned_up(pg, tmp_path)


def test_a_drill_stopped_at_shutdown_is_not_recorded(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    physical_backup(repo, catalog, FakePhysicalSource(Content(), WalArchive(repo, CLUSTER)))
    cancel = threading.Event()
    cancel.set()
    result = run_drill(repo, catalog, options(tmp_path, mode="physical"), pg=pg, cancel=cancel)
    assert not result.succeeded
    scope = Scope(repo.id, CLUSTER)
    assert catalog.list_drills(scope) == []
    assert [r.status for r in catalog.list_runs(scope) if r.job == JOB] == ["interrupted"]
    assert_cleaned_up(pg, tmp_path)


def test_a_drill_of_a_cluster_already_drilling_here_is_skipped(
    repo: Repository, catalog: SqlCatalog, pg: FakePostgres, tmp_path: Path
) -> None:
    logical_backup(repo, catalog)
    locks = tmp_path / "locks"
    locks.mkdir()
    with exclusive(locks, f"drill-{CLUSTER}", what="a drill"), pytest.raises(LockedError):
        run_drill(repo, catalog, options(tmp_path, lock_dir=locks), pg=pg)
    scope = Scope(repo.id, CLUSTER)
    assert [r.status for r in catalog.list_runs(scope) if r.job == JOB] == ["skipped"]
    assert pg.events == []


def _stream(data: bytes) -> BinaryIO:
    return io.BytesIO(data)
