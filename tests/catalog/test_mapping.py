"""Rows to records and back (``catalog/mapping.py``): one mapping per record type, and every
record type survives a round trip through the catalog unchanged, on SQLite and on PostgreSQL
(see conftest). Each record below sets every field to a value other than its default, so that a
field the mapping forgets fails its test."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contentflow_backupd.catalog import mapping
from contentflow_backupd.catalog.audit_records import AuditEvent
from contentflow_backupd.catalog.guard_records import BatchCheckpoint, MigrationRunRecord
from contentflow_backupd.catalog.mapping import MAPPINGS, RecordMapping
from contentflow_backupd.catalog.models import Base, RunRow
from contentflow_backupd.catalog.records import CorruptObject, DeletionRecord, DrillRecord, VerifyState
from contentflow_backupd.catalog.sql import SqlCatalog
from contentflow_backupd.model import BackupRecord, RestorePoint, RunRecord, Scope

REPO_ID = "repo-map"
SCOPE = Scope(REPO_ID, "main")
T0 = datetime(2026, 12, 1, 3, 4, 5, 678901, tzinfo=UTC)


def backup() -> BackupRecord:
    return BackupRecord(
        id="20261201T030405Z-full-00ab",
        cluster="main",
        kind="full",
        mode="physical",
        status="succeeded",
        generation="g-20261201",
        started_at=T0,
        parent_id="20261130T030405Z-full-00aa",
        database="app",
        finished_at=T0 + timedelta(minutes=3),
        source_bytes=10**10,
        stored_bytes=3 * 10**9,
        chunks_total=9000,
        chunks_new=120,
        manifest_key="main/backups/20261201T030405Z-full-00ab.json",
        error="warning: none",
        pid=4242,
        host="db-1",
        details={"start_lsn": "0/5000028", "nested": {"files": [1, 2]}},
        repository_id=REPO_ID,
    )


def drill() -> DrillRecord:
    return DrillRecord(
        id="20261201T040000Z-drill-0001",
        cluster="main",
        mode="physical",
        backup_id="20261201T030405Z-full-00ab",
        target="lsn 0/5000028",
        status="failed",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=90),
        rto_seconds=61.25,
        restored_bytes=10**9,
        throughput_bytes_per_s=1.5e7,
        checks=({"name": "restore", "status": "passed", "detail": "ok"},),
        error="user check failed",
        run_id=7,
        repository_id=REPO_ID,
    )


def migration_run() -> MigrationRunRecord:
    return MigrationRunRecord(
        id="20261201T050000Z-migrate-01",
        cluster="main",
        database="app",
        actor="deploy@web-1",
        command=["npx", "prisma", "migrate", "deploy"],
        dry_run=True,
        status="rolled_back",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=5),
        restore_point="before_migrate_01",
        backup_id="20261201T030405Z-full-00ab",
        details={"migrations": [{"name": "0001_init", "checksum": "ab" * 32}]},
        schema_before="CREATE TABLE t (id int);",
        schema_after="CREATE TABLE t (id bigint);",
        error="check failed",
        repository_id=REPO_ID,
    )


def batch() -> BatchCheckpoint:
    return BatchCheckpoint(
        id="batch-01",
        cluster="main",
        database="app",
        table_name="items",
        key_column="id",
        sql_sha256="cd" * 32,
        status="finished",
        started_at=T0,
        updated_at=T0 + timedelta(seconds=1),
        finished_at=T0 + timedelta(seconds=2),
        details={"last_key": 1000, "batches": 10},
    )


SAMPLES: dict[type[Any], Any] = {
    BackupRecord: backup(),
    RunRecord: RunRecord(
        7, "backup-full", "schedule", "failed", T0, T0, "b1", "boom", 11, "h", REPO_ID, "main"
    ),
    RestorePoint: RestorePoint("main", "before_deploy", "0/3000100", 2, T0),
    DeletionRecord: DeletionRecord(
        T0, "main", "wal", "000000010000000000000003", 16 << 20, "expired", 9, 5, REPO_ID
    ),
    VerifyState: VerifyState("main", T0, "main/chunks/g/ab/abcd", T0, 1234, ("b1", "b2")),
    CorruptObject: CorruptObject(
        "main", "main/chunks/g/ab/abcd", ("b1", "b2"), "bad tag", T0, T0, "rewritten", 3
    ),
    DrillRecord: drill(),
    MigrationRunRecord: migration_run(),
    BatchCheckpoint: batch(),
    AuditEvent: AuditEvent(4, T0, "root@h", "delete", "succeeded", ("b1",), {"n": 1}, "a" * 64, "b" * 64),
}


def test_every_field_of_the_samples_differs_from_its_default() -> None:
    for record in SAMPLES.values():
        for field in dataclasses.fields(record):
            if field.default is not dataclasses.MISSING:
                assert getattr(record, field.name) != field.default, (type(record).__name__, field.name)
            if field.default_factory is not dataclasses.MISSING:
                assert getattr(record, field.name) != field.default_factory(), (
                    type(record).__name__,
                    field.name,
                )


def test_one_mapping_per_record_type_and_per_row_type() -> None:
    assert sorted(m.record.__name__ for m in MAPPINGS) == sorted(t.__name__ for t in SAMPLES)
    rows = [m.row for m in MAPPINGS]
    assert len(rows) == len(set(rows))
    tables = {m.row.__tablename__ for m in MAPPINGS}
    # catalog_meta: key/value text, no record. The fleet's tables are read and written only by
    # catalog/fleet.py (leases and heartbeats, fleet_records.py), tested in test_fleet.py.
    assert set(Base.metadata.tables) - tables == {"catalog_meta", "fleet_daemons", "fleet_leases"}


@pytest.mark.parametrize("mapped", MAPPINGS, ids=lambda m: m.record.__name__)
def test_a_record_survives_a_row_unchanged(mapped: RecordMapping[Any, Any]) -> None:
    """Without a database: record -> row -> record, generated fields (ids) set as the database
    would; the row never shares a mutable value with the record."""
    record = SAMPLES[mapped.record]
    row = mapped.new_row(record)
    for name in mapped.generated:
        setattr(row, name, getattr(record, name))
    assert mapped.to_record(row) == record
    for name in mapped.fields:
        value = getattr(record, name)
        if isinstance(value, dict | list):
            assert getattr(row, name) is not value, name


def test_extra_columns_and_updates() -> None:
    row = mapping.VERIFY_STATES.new_row(SAMPLES[VerifyState], repository_id=REPO_ID)
    assert row.repository_id == REPO_ID
    assert row.verified_backups == '["b1", "b2"]'
    renamed = dataclasses.replace(SAMPLES[VerifyState], sweep_cursor=None, verified_backups=("b3", "b3"))
    mapping.VERIFY_STATES.update_row(row, renamed, repository_id="other")
    assert (row.sweep_cursor, row.verified_backups, row.repository_id) == (None, '["b3"]', "other")
    assert mapping.id_list("not json") == () and mapping.id_list(None) == ()


def test_a_mapping_refuses_a_field_without_a_column() -> None:
    @dataclasses.dataclass
    class Odd:
        id: int
        colour: str

    with pytest.raises(TypeError, match="colour"):
        RecordMapping(Odd, RunRow)


# -- through the catalog -------------------------------------------------------------------
def test_backup_round_trip(catalog: SqlCatalog) -> None:
    record = SAMPLES[BackupRecord]
    catalog.upsert_backup(record)
    assert catalog.get_backup(record.id) == record
    assert catalog.list_backups(SCOPE) == [record]
    changed = dataclasses.replace(record, status="failed", details={"other": True}, error=None)
    catalog.replace_backups(SCOPE, [changed])
    assert catalog.get_backup(record.id) == changed


def test_run_round_trip(catalog: SqlCatalog) -> None:
    started = catalog.start_run(SCOPE, "backup-full", "manual", pid=11, host="h")
    assert catalog.list_runs(SCOPE) == [started]
    catalog.finish_run(started.id, "failed", backup_id="b1", error="boom")
    (finished,) = catalog.list_runs(SCOPE)
    assert finished.finished_at is not None
    assert finished == dataclasses.replace(
        started, status="failed", backup_id="b1", error="boom", finished_at=finished.finished_at
    )


def test_restore_point_round_trip(catalog: SqlCatalog) -> None:
    point = SAMPLES[RestorePoint]
    catalog.add_restore_point(SCOPE, point.name, point.lsn, point.timeline, point.created_at)
    assert catalog.get_restore_point(SCOPE, point.name) == point
    assert catalog.list_restore_points(SCOPE) == [point]


def test_deletion_round_trip(catalog: SqlCatalog) -> None:
    record = SAMPLES[DeletionRecord]
    catalog.add_deletions([record, dataclasses.replace(record, name="000000010000000000000004")])
    first, second = catalog.list_deletions(SCOPE)
    assert first == dataclasses.replace(record, id=first.id)
    assert second.id is not None and first.id is not None and second.id > first.id


def test_verify_state_round_trip(catalog: SqlCatalog) -> None:
    state = SAMPLES[VerifyState]
    catalog.set_verify_state(SCOPE, state)
    assert catalog.get_verify_state(SCOPE) == state
    again = dataclasses.replace(state, sweep_cursor=None, sweep_objects_total=0, verified_backups=())
    catalog.set_verify_state(SCOPE, again)
    assert catalog.get_verify_state(SCOPE) == again


def test_corrupt_object_round_trip(catalog: SqlCatalog) -> None:
    sample = SAMPLES[CorruptObject]
    opened = catalog.record_corrupt(SCOPE, sample.key, ["b2", "b1", "b2"], sample.problem, detected_at=T0)
    assert catalog.list_corrupt(SCOPE) == [opened]
    assert opened == dataclasses.replace(sample, resolved_at=None, resolution=None, id=opened.id)
    assert catalog.resolve_corrupt(SCOPE, sample.key, "rewritten", resolved_at=T0)
    assert catalog.list_corrupt(SCOPE, open_only=False) == [dataclasses.replace(sample, id=opened.id)]


def test_drill_round_trip(catalog: SqlCatalog) -> None:
    record = SAMPLES[DrillRecord]
    catalog.add_drill(record)
    assert catalog.list_drills(SCOPE) == [record]


def test_migration_run_round_trip(catalog: SqlCatalog) -> None:
    record = SAMPLES[MigrationRunRecord]
    catalog.save_migration_run(record)
    assert catalog.get_migration_run(record.id) == record
    assert catalog.list_migration_runs(SCOPE) == [record]
    changed = dataclasses.replace(record, dry_run=False, command=["true"], details={}, schema_after=None)
    catalog.save_migration_run(changed)
    assert catalog.get_migration_run(record.id) == changed


def test_batch_round_trip(catalog: SqlCatalog) -> None:
    checkpoint = SAMPLES[BatchCheckpoint]
    catalog.save_batch(checkpoint)
    assert catalog.get_batch(checkpoint.id) == checkpoint
    changed = dataclasses.replace(checkpoint, status="running", finished_at=None, details={"last_key": 5})
    catalog.save_batch(changed)
    assert catalog.get_batch(checkpoint.id) == changed


def test_audit_event_round_trip(catalog: SqlCatalog) -> None:
    event = catalog.append_audit_event(
        action="delete", outcome="succeeded", actor="root@h", objects=["b1"], details={"n": 1}, at=T0
    )
    assert catalog.list_audit_events() == [event]
    assert event.objects == ("b1",) and event.details == {"n": 1} and event.at == T0
    assert catalog.merge_audit_events([event]) == (0, 0)
    assert catalog.list_audit_events() == [event]
