"""The deletions record of retention, on SQLite and on PostgreSQL (see conftest)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import create_engine, inspect

from contentflow_backupd.catalog.base import Catalog, DeletionRecord
from contentflow_backupd.catalog.sql import open_catalog
from contentflow_backupd.model import Scope

REPO_ID = "repo-test"
"""The repository id of the scope these tests read and write."""

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def rec(name: str, what: str = "backup", cluster: str = "main", at: datetime = T0) -> DeletionRecord:
    return DeletionRecord(at, cluster, what, name, 1234, f"reason of {name}", 7, repository_id=REPO_ID)  # type: ignore[arg-type]


def test_added_records_come_back_in_order_with_ids(catalog: Catalog) -> None:
    catalog.add_deletions([rec("b1"), rec("g1", "generation"), rec("000000010000000000000001", "wal")])
    catalog.add_deletions([rec("b2")])
    got = catalog.list_deletions(Scope(REPO_ID, "main"))
    assert [(r.what, r.name) for r in got] == [
        ("backup", "b1"),
        ("generation", "g1"),
        ("wal", "000000010000000000000001"),
        ("backup", "b2"),
    ]
    ids = [r.id for r in got]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids) and len(set(ids)) == 4
    assert got[0] == DeletionRecord(
        T0, "main", "backup", "b1", 1234, "reason of b1", 7, id=ids[0], repository_id=REPO_ID
    )


def test_listing_is_per_cluster_and_limit_keeps_the_newest(catalog: Catalog) -> None:
    catalog.add_deletions([rec(f"b{i}") for i in range(5)] + [rec("x", cluster="other")])
    assert [r.name for r in catalog.list_deletions(Scope(REPO_ID, "main"), limit=2)] == ["b3", "b4"]
    assert [r.name for r in catalog.list_deletions(Scope(REPO_ID, "other"))] == ["x"]
    assert catalog.list_deletions(Scope(REPO_ID, "none")) == []
    catalog.add_deletions([])  # nothing to add is fine


def test_times_come_back_utc_and_run_id_may_be_none(catalog: Catalog) -> None:
    plus5 = timezone(timedelta(hours=5))
    catalog.add_deletions(
        [DeletionRecord(T0.astimezone(plus5), "main", "wal", "w", 0, "r", None, repository_id=REPO_ID)]
    )
    (got,) = catalog.list_deletions(Scope(REPO_ID, "main"))
    assert got.at == T0 and got.at.tzinfo == UTC and got.run_id is None
    assert got.to_json()["at"] == "2026-03-01T12:00:00.123456Z"


def test_the_migration_creates_the_table(catalog_url: str) -> None:
    with open_catalog(catalog_url) as first:
        first.add_deletions([rec("kept")])
    with open_catalog(catalog_url) as second:
        assert [r.name for r in second.list_deletions(Scope(REPO_ID, "main"))] == ["kept"]
    engine = create_engine(catalog_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            assert "deletions" in inspect(conn).get_table_names()
    finally:
        engine.dispose()
