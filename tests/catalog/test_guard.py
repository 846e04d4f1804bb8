"""The migration guard's tables (``migration_runs``, ``migration_batches``), on SQLite and on
PostgreSQL (see conftest)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.catalog.guard_records import BatchCheckpoint, MigrationRunRecord
from contentflow_backupd.model import Scope

REPO_ID = "repo-test"
"""The repository id of the scope these tests read and write."""

T0 = datetime(2026, 11, 24, 12, 0, 0, 125000, tzinfo=UTC)


def run(i: int, *, cluster: str = "main", status: str = "applied") -> MigrationRunRecord:
    return MigrationRunRecord(
        id=f"20261124T1200{i:02d}Z-migrate-{i:06x}",
        cluster=cluster,
        database="app",
        actor="deploy@web-1",
        command=["npx", "prisma", "migrate", "deploy"],
        dry_run=False,
        status=status,  # type: ignore[arg-type]
        started_at=T0 + timedelta(minutes=i),
        details={"migrations": [{"name": "20261101000000_init", "checksum": "ab" * 32}]},
        schema_before="CREATE TABLE t (id int);",
        repository_id=REPO_ID,
    )


def test_a_run_is_saved_updated_and_read_back(catalog: Catalog) -> None:
    record = run(1, status="running")
    catalog.save_migration_run(record)
    assert catalog.get_migration_run(record.id) == record
    done = dataclasses.replace(
        record,
        status="rolled_back",
        finished_at=T0 + timedelta(minutes=2),
        details={**record.details, "rollback": {"ran": ["down.sql"]}},
        schema_after="CREATE TABLE t (id int);",
        error="migration 2 failed",
    )
    catalog.save_migration_run(done)
    assert catalog.get_migration_run(record.id) == done
    assert catalog.get_migration_run("nope") is None


def test_runs_are_listed_oldest_first_per_cluster_with_status_and_limit(catalog: Catalog) -> None:
    for i in (3, 1, 2):
        catalog.save_migration_run(run(i, status="running" if i == 2 else "applied"))
    catalog.save_migration_run(run(4, cluster="other"))
    assert [r.id[-6:] for r in catalog.list_migration_runs(Scope(REPO_ID, "main"))] == [
        "000001",
        "000002",
        "000003",
    ]
    assert [r.id[-6:] for r in catalog.list_migration_runs(Scope(REPO_ID, "main"), limit=1)] == ["000003"]
    assert [r.id[-6:] for r in catalog.list_migration_runs(Scope(REPO_ID, "main"), status="running")] == [
        "000002"
    ]
    assert run(1).to_json()["started_at"].startswith("2026-11-24T12:01:00")
    assert "schema_before" not in run(1).to_json()


def test_a_batch_checkpoint_is_saved_and_replaced(catalog: Catalog) -> None:
    cp = BatchCheckpoint(
        id="main/app/public.post/id/" + "c" * 16,
        cluster="main",
        database="app",
        table_name="public.post",
        key_column="id",
        sql_sha256="d" * 64,
        status="running",
        started_at=T0,
        updated_at=T0,
        details={"last_key": 1000, "rows_done": 1000},
    )
    catalog.save_batch(cp)
    assert catalog.get_batch(cp.id) == cp
    later = dataclasses.replace(
        cp, status="finished", updated_at=T0 + timedelta(seconds=5), finished_at=T0 + timedelta(seconds=5),
        details={"last_key": 2000, "rows_done": 2000},
    )  # fmt: skip
    catalog.save_batch(later)
    assert catalog.get_batch(cp.id) == later
    assert catalog.get_batch("other") is None
