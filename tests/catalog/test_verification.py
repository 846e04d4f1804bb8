"""Continuous-verification state and corrupt-object records, on SQLite and on PostgreSQL (see
conftest)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, inspect

from contentflow_backupd.catalog.base import Catalog, CorruptObject, VerifyState
from contentflow_backupd.catalog.sql import open_catalog
from contentflow_backupd.errors import CatalogError
from contentflow_backupd.model import Scope

REPO_ID = "repo-test"
"""The repository id of the scope these tests read and write."""

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
KEY = "main/chunks/20260301T120000Z-full-abcdef/ab/" + "ab" * 32


def test_a_cluster_without_state_gets_an_empty_one(catalog: Catalog) -> None:
    assert catalog.get_verify_state(Scope(REPO_ID, "main")) == VerifyState("main")
    assert catalog.get_verify_state(Scope(REPO_ID, "main")).to_json()["last_deep_success_at"] is None


def test_state_is_saved_replaced_and_kept_per_cluster(catalog: Catalog) -> None:
    plus5 = timezone(timedelta(hours=5))
    first = VerifyState("main", T0.astimezone(plus5), "main/backups/x.json", T0, 12)
    catalog.set_verify_state(Scope(REPO_ID, first.cluster), first)
    catalog.set_verify_state(Scope(REPO_ID, "other"), VerifyState("other", None, None, None, 3))
    got = catalog.get_verify_state(Scope(REPO_ID, "main"))
    assert got == VerifyState("main", T0, "main/backups/x.json", T0, 12)
    assert got.last_deep_success_at is not None and got.last_deep_success_at.tzinfo == UTC
    later = VerifyState("main", T0 + timedelta(days=1), None, T0 + timedelta(days=1), 13)
    catalog.set_verify_state(Scope(REPO_ID, later.cluster), later)
    assert catalog.get_verify_state(Scope(REPO_ID, "main")) == later
    assert catalog.get_verify_state(Scope(REPO_ID, "other")).sweep_objects_total == 3


def test_record_list_and_resolve_a_corrupt_object(catalog: Catalog) -> None:
    got = catalog.record_corrupt(Scope(REPO_ID, "main"), KEY, ["b2", "b1", "b2"], "missing", detected_at=T0)
    assert got == CorruptObject("main", KEY, ("b1", "b2"), "missing", T0, id=got.id)
    assert got.open and isinstance(got.id, int)
    assert catalog.list_corrupt(Scope(REPO_ID, "main")) == [got]
    assert catalog.list_corrupt(Scope(REPO_ID, "other")) == []

    assert catalog.resolve_corrupt(
        Scope(REPO_ID, "main"), KEY, "repaired", resolved_at=T0 + timedelta(hours=1)
    )
    assert catalog.list_corrupt(Scope(REPO_ID, "main")) == []
    (closed,) = catalog.list_corrupt(Scope(REPO_ID, "main"), open_only=False)
    assert closed.resolved_at == T0 + timedelta(hours=1) and closed.resolution == "repaired"
    assert not closed.open
    assert closed.to_json()["resolved_at"] == "2026-03-01T13:00:00.123456Z"
    # Nothing open any more: a second resolve changes nothing.
    assert not catalog.resolve_corrupt(Scope(REPO_ID, "main"), KEY, "again")
    assert catalog.list_corrupt(Scope(REPO_ID, "main"), open_only=False) == [closed]


def test_recording_an_open_key_again_updates_it_and_keeps_detected_at(catalog: Catalog) -> None:
    first = catalog.record_corrupt(Scope(REPO_ID, "main"), KEY, ["b1"], "missing", detected_at=T0)
    again = catalog.record_corrupt(
        Scope(REPO_ID, "main"), KEY, ["b1", "b3"], "size 1, expected 2", detected_at=T0 + timedelta(1)
    )
    assert again.id == first.id and again.detected_at == T0
    assert again.backup_ids == ("b1", "b3") and again.problem == "size 1, expected 2"
    assert catalog.list_corrupt(Scope(REPO_ID, "main")) == [again]


def test_a_resolved_key_that_goes_bad_again_gets_a_new_record(catalog: Catalog) -> None:
    first = catalog.record_corrupt(Scope(REPO_ID, "main"), KEY, ["b1"], "missing", detected_at=T0)
    catalog.resolve_corrupt(Scope(REPO_ID, "main"), KEY, "repaired")
    second = catalog.record_corrupt(Scope(REPO_ID, "main"), KEY, [], "authentication failed")
    assert second.id != first.id and second.open and second.backup_ids == ()
    assert second.detected_at > T0  # default: now
    assert [r.id for r in catalog.list_corrupt(Scope(REPO_ID, "main"), open_only=False)] == [
        first.id,
        second.id,
    ]
    assert catalog.list_corrupt(Scope(REPO_ID, "main")) == [second]


def test_records_are_per_cluster(catalog: Catalog) -> None:
    catalog.record_corrupt(Scope(REPO_ID, "main"), KEY, ["b1"], "missing")
    catalog.record_corrupt(Scope(REPO_ID, "other"), KEY, ["b9"], "missing")
    assert catalog.resolve_corrupt(Scope(REPO_ID, "other"), KEY, "gone")
    assert [r.backup_ids for r in catalog.list_corrupt(Scope(REPO_ID, "main"))] == [("b1",)]


def test_state_and_records_survive_reopening_and_the_tables_exist(catalog_url: str) -> None:
    with open_catalog(catalog_url) as first:
        first.set_verify_state(Scope(REPO_ID, "main"), VerifyState("main", T0, "k", T0, 5))
        first.record_corrupt(Scope(REPO_ID, "main"), KEY, ["b1"], "missing", detected_at=T0)
    with open_catalog(catalog_url) as second:
        assert second.get_verify_state(Scope(REPO_ID, "main")).sweep_cursor == "k"
        assert [r.key for r in second.list_corrupt(Scope(REPO_ID, "main"))] == [KEY]
    engine = create_engine(catalog_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            names = inspect(conn).get_table_names()
    finally:
        engine.dispose()
    assert {"verify_state", "corrupt_objects"} <= set(names)


def test_two_open_records_of_one_key_are_refused_by_the_database(catalog_url: str) -> None:
    """The partial unique index guards against a racing writer that skipped the lookup."""
    from contentflow_backupd.catalog.models import CorruptObjectRow

    with open_catalog(catalog_url) as cat:
        cat.record_corrupt(Scope(REPO_ID, "main"), KEY, ["b1"], "missing", detected_at=T0)
        with pytest.raises(CatalogError), cat._session("insert twice", write=True) as session:
            session.add(
                CorruptObjectRow(cluster="main", key=KEY, backup_ids="[]", problem="x", detected_at=T0)
            )
            session.flush()
        assert len(cat.list_corrupt(Scope(REPO_ID, "main"))) == 1
