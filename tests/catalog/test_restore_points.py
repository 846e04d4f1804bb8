"""Restore points in the catalog, on SQLite and on PostgreSQL (see conftest)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.catalog.models import VERSION_TABLE, Base
from contentflow_backupd.catalog.sql import open_catalog
from contentflow_backupd.errors import CatalogError
from contentflow_backupd.model import (
    RestorePoint,
    Scope,
)

REPO_ID = "repo-test"
"""The repository id of the scope these tests read and write."""

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_add_then_get_round_trips_every_field(catalog: Catalog) -> None:
    catalog.add_restore_point(Scope(REPO_ID, "main"), "before-migration-42", "1/2A0000F8", 3, T0)
    assert catalog.get_restore_point(Scope(REPO_ID, "main"), "before-migration-42") == RestorePoint(
        cluster="main", name="before-migration-42", lsn="1/2A0000F8", timeline=3, created_at=T0
    )


def test_get_unknown_or_of_another_cluster_is_none(catalog: Catalog) -> None:
    catalog.add_restore_point(Scope(REPO_ID, "main"), "rp", "0/3000100", 1, T0)
    assert catalog.get_restore_point(Scope(REPO_ID, "main"), "nope") is None
    assert catalog.get_restore_point(Scope(REPO_ID, "other"), "rp") is None


def test_list_is_per_cluster_oldest_first_then_by_name(catalog: Catalog) -> None:
    catalog.add_restore_point(Scope(REPO_ID, "main"), "c", "0/5000000", 1, T0 + timedelta(minutes=2))
    catalog.add_restore_point(Scope(REPO_ID, "main"), "b", "0/4000000", 1, T0)
    catalog.add_restore_point(Scope(REPO_ID, "main"), "a", "0/4000000", 1, T0)
    catalog.add_restore_point(Scope(REPO_ID, "other"), "a", "0/1000000", 1, T0 - timedelta(days=1))
    assert [p.name for p in catalog.list_restore_points(Scope(REPO_ID, "main"))] == ["a", "b", "c"]
    assert [p.cluster for p in catalog.list_restore_points(Scope(REPO_ID, "other"))] == ["other"]
    assert catalog.list_restore_points(Scope(REPO_ID, "none")) == []


def test_a_name_is_unique_per_cluster(catalog: Catalog) -> None:
    catalog.add_restore_point(Scope(REPO_ID, "main"), "rp", "0/3000100", 1, T0)
    with pytest.raises(CatalogError, match="already has a restore point named 'rp'"):
        catalog.add_restore_point(Scope(REPO_ID, "main"), "rp", "0/9000000", 2, T0 + timedelta(hours=1))
    point = catalog.get_restore_point(Scope(REPO_ID, "main"), "rp")
    assert point is not None and (point.lsn, point.timeline) == ("0/3000100", 1)
    catalog.add_restore_point(Scope(REPO_ID, "other"), "rp", "0/9000000", 2, T0)  # another cluster may use it


def test_times_go_in_any_zone_and_come_out_utc(catalog: Catalog) -> None:
    plus5 = timezone(timedelta(hours=5))
    catalog.add_restore_point(Scope(REPO_ID, "main"), "zoned", "0/1", 1, T0.astimezone(plus5))
    catalog.add_restore_point(Scope(REPO_ID, "main"), "naive", "0/2", 1, T0.replace(tzinfo=None))
    for name in ("zoned", "naive"):
        point = catalog.get_restore_point(Scope(REPO_ID, "main"), name)
        assert point is not None
        assert point.created_at == T0 and point.created_at.tzinfo == UTC


def test_to_json() -> None:
    point = RestorePoint(cluster="main", name="rp", lsn="0/3000100", timeline=2, created_at=T0)
    assert point.to_json() == {
        "name": "rp",
        "cluster": "main",
        "lsn": "0/3000100",
        "timeline": 2,
        "created_at": "2026-03-01T12:00:00.123456Z",
    }


def test_migration_creates_the_table_and_matches_the_models(catalog_url: str) -> None:
    with open_catalog(catalog_url) as first:
        first.add_restore_point(Scope(REPO_ID, "main"), "kept", "0/1", 1, T0)
    with open_catalog(catalog_url) as second:  # migrating again changes nothing
        assert [p.name for p in second.list_restore_points(Scope(REPO_ID, "main"))] == ["kept"]
    engine = create_engine(catalog_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            assert "restore_points" in inspect(conn).get_table_names()
            versions = [row[0] for row in conn.execute(text(f"select version_num from {VERSION_TABLE}"))]
            assert len(versions) == 1 and versions[0] >= "0002"
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
