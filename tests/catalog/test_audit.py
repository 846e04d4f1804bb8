"""The ``audit_events`` table (the audit trail), on SQLite and on PostgreSQL (see conftest)."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text

from contentflow_backupd.catalog.audit_records import AuditEvent, chained, find_break
from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog

T0 = datetime(2026, 11, 24, 5, 0, 0, 250000, tzinfo=UTC)


def append(catalog: Catalog, i: int, *, action: str = "backup", at: datetime | None = None) -> AuditEvent:
    return catalog.append_audit_event(
        action=action,
        outcome="succeeded",
        actor="backupd@db1",
        objects=[f"b{i}"],
        details={"i": i, "nested": {"list": [1, 2.5, "é"]}},
        at=at or T0 + timedelta(minutes=i),
    )


def test_appended_records_come_back_chained_and_in_order(catalog: Catalog) -> None:
    made = [append(catalog, i, action="verify" if i == 2 else "backup") for i in range(1, 4)]
    listed = catalog.list_audit_events()
    assert listed == made
    assert [e.seq for e in listed] == [1, 2, 3]
    assert find_break(listed) is None
    assert listed[0].at == T0 + timedelta(minutes=1) and listed[0].at.tzinfo is not None
    assert listed[0].details == {"i": 1, "nested": {"list": [1, 2.5, "é"]}}
    assert [e.seq for e in catalog.list_audit_events(since=T0 + timedelta(minutes=2))] == [2, 3]
    assert [e.seq for e in catalog.list_audit_events(after_seq=1, limit=1)] == [2]
    assert [e.seq for e in catalog.list_audit_events(action="backup", newest_first=True, limit=1)] == [3]


def test_concurrent_writers_never_fork_the_chain(catalog_url: str, catalog: Catalog) -> None:
    per_writer, writers = 15, 3
    errors: list[BaseException] = []

    def write(w: int) -> None:
        own = open_catalog(catalog_url)
        try:
            for i in range(per_writer):
                append(own, w * 100 + i, at=datetime.now(UTC))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = catalog.list_audit_events()
    assert [e.seq for e in events] == list(range(1, per_writer * writers + 1))
    assert find_break(events) is None


def test_an_edited_row_is_found(catalog: SqlCatalog) -> None:
    for i in range(1, 5):
        append(catalog, i)
    with catalog.engine.begin() as conn:
        conn.execute(text("update audit_events set outcome = 'failed' where seq = 3"))
    broken = find_break(catalog.list_audit_events())
    assert broken is not None and broken.seq == 3


def test_a_deleted_row_is_found(catalog: SqlCatalog) -> None:
    for i in range(1, 5):
        append(catalog, i)
    with catalog.engine.begin() as conn:
        conn.execute(text("delete from audit_events where seq = 2"))
    broken = find_break(catalog.list_audit_events())
    assert broken is not None and broken.seq == 3


def test_merge_restores_a_lost_history_and_rechains_local_records(catalog: Catalog) -> None:
    history: list[AuditEvent] = []
    for _ in range(4):
        history.append(
            chained(
                history[-1] if history else None, at=T0, actor="a@h", action="backup", outcome="succeeded"
            )
        )
    # a new catalog recorded one event before it learned the repository's history
    local = append(catalog, 99, action="config_changed")
    assert catalog.merge_audit_events(history) == (4, 1)
    events = catalog.list_audit_events()
    assert events[:4] == history
    assert (events[4].seq, events[4].action, events[4].prev_hash) == (5, "config_changed", history[-1].hash)
    assert events[4].details == local.details
    assert find_break(events) is None
    # merging the same history again changes nothing
    assert catalog.merge_audit_events(history) == (0, 0)
    assert catalog.list_audit_events() == events


def test_merge_puts_back_the_repository_copy_of_an_edited_row(catalog: SqlCatalog) -> None:
    made = [append(catalog, i) for i in range(1, 4)]
    with catalog.engine.begin() as conn:
        conn.execute(text("update audit_events set actor = 'mallory@x' where seq = 2"))
    assert find_break(catalog.list_audit_events()) is not None
    assert catalog.merge_audit_events(made) == (0, 0)
    assert catalog.list_audit_events() == made


def test_the_flushed_mark_only_rises(catalog: Catalog) -> None:
    assert catalog.get_audit_flushed_seq("repo1") is None
    catalog.set_audit_flushed_seq("repo1", 5)
    catalog.set_audit_flushed_seq("repo1", 3)
    assert catalog.get_audit_flushed_seq("repo1") == 5
    assert catalog.get_audit_flushed_seq("repo2") is None


def test_the_table_exists_with_its_columns(catalog_url: str, catalog: Catalog) -> None:
    engine = create_engine(catalog_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            row = conn.execute(text("select * from audit_events")).keys()
    finally:
        engine.dispose()
    expected = {"seq", "at", "actor", "action", "outcome", "objects", "details", "prev_hash", "hash"}
    assert set(row) == expected
    assert dataclasses.fields(AuditEvent)  # the record type the rows map to
