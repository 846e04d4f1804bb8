"""The ``drills`` table (restore drills), on SQLite and on PostgreSQL (see conftest)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, inspect

from contentflow_backupd.catalog.base import Catalog, DrillRecord
from contentflow_backupd.errors import CatalogError
from contentflow_backupd.model import Scope

REPO_ID = "repo-test"
"""The repository id of the scope these tests read and write."""

T0 = datetime(2026, 11, 29, 4, 0, 0, 250000, tzinfo=UTC)
CHECKS = (
    {"name": "restore", "status": "passed", "detail": "restored"},
    {"name": "user_check:1", "status": "failed", "detail": "checks.sql line 1: select false: returned False"},
)


def drill(i: int, *, status: str = "succeeded", cluster: str = "main", minutes: int = 0) -> DrillRecord:
    start = T0 + timedelta(minutes=minutes)
    return DrillRecord(
        id=f"20261129T04{i:04d}Z-drill-{i:06x}",
        cluster=cluster,
        mode="physical",
        backup_id=f"b{i}",
        target="lsn 0/5000028 (random)",
        status=status,  # type: ignore[arg-type]
        started_at=start,
        finished_at=start + timedelta(seconds=42),
        rto_seconds=12.5 + i,
        restored_bytes=10**9 + i,
        throughput_bytes_per_s=8e7,
        checks=CHECKS if status == "failed" else CHECKS[:1],
        error="user_check:1: ..." if status == "failed" else None,
        run_id=100 + i,
        repository_id=REPO_ID,
    )


def test_a_drill_comes_back_as_recorded(catalog: Catalog) -> None:
    record = drill(1, status="failed")
    catalog.add_drill(record)
    assert catalog.list_drills(Scope(REPO_ID, "main")) == [record]
    assert catalog.list_drills(Scope(REPO_ID, "main"))[0].to_json()["checks"][1]["status"] == "failed"


def test_drills_are_listed_per_cluster_oldest_first_with_limit_and_status(catalog: Catalog) -> None:
    catalog.add_drill(drill(3, minutes=30))
    catalog.add_drill(drill(1, minutes=10, status="failed"))
    catalog.add_drill(drill(2, minutes=20))
    catalog.add_drill(drill(9, cluster="other"))
    assert [d.backup_id for d in catalog.list_drills(Scope(REPO_ID, "main"))] == ["b1", "b2", "b3"]
    assert [d.backup_id for d in catalog.list_drills(Scope(REPO_ID, "main"), limit=1)] == ["b3"]
    assert [d.backup_id for d in catalog.list_drills(Scope(REPO_ID, "main"), status="failed")] == ["b1"]
    assert [
        d.backup_id for d in catalog.list_drills(Scope(REPO_ID, "main"), status="succeeded", limit=1)
    ] == ["b3"]
    assert [d.backup_id for d in catalog.list_drills(Scope(REPO_ID, "other"))] == ["b9"]
    assert catalog.list_drills(Scope(REPO_ID, "none")) == []


def test_times_are_utc_and_a_repeated_id_is_refused(catalog: Catalog) -> None:
    berlin = timezone(timedelta(hours=1))
    record = drill(5)
    local = DrillRecord(**{**record.__dict__, "started_at": record.started_at.astimezone(berlin)})
    catalog.add_drill(local)
    got = catalog.list_drills(Scope(REPO_ID, "main"))[0]
    assert got.started_at == T0 and got.started_at.tzinfo == UTC
    with pytest.raises(CatalogError, match="already holds a drill"):
        catalog.add_drill(record)


def test_the_table_and_its_index_exist(catalog_url: str, catalog: Catalog) -> None:
    engine = create_engine(catalog_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        inspector = inspect(engine)
        assert "drills" in inspector.get_table_names()
        assert "ix_drills_cluster_started_at" in {i["name"] for i in inspector.get_indexes("drills")}
    finally:
        engine.dispose()
