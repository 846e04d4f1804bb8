"""The migration guard's tables (``migration_runs``, ``migration_batches``) as session-level
functions; ``SqlCatalog`` calls each inside one transaction (see
``catalog/base.py`` for the contract of each method)."""

from __future__ import annotations

import dataclasses

from sqlalchemy import select
from sqlalchemy.orm import Session

from contentflow_backupd.catalog.guard_records import (
    BatchCheckpoint,
    MigrationRunRecord,
    MigrationStatus,
)
from contentflow_backupd.catalog.models import BatchCheckpointRow, MigrationRunRow
from contentflow_backupd.model import Scope

_RUN_FIELDS = [f.name for f in dataclasses.fields(MigrationRunRecord)]
_BATCH_FIELDS = [f.name for f in dataclasses.fields(BatchCheckpoint)]


def save_migration_run(session: Session, record: MigrationRunRecord) -> None:
    row = session.get(MigrationRunRow, record.id)
    values = {name: getattr(record, name) for name in _RUN_FIELDS}
    values["dry_run"] = int(record.dry_run)
    values["command"] = list(record.command)
    values["details"] = dict(record.details)
    if row is None:
        session.add(MigrationRunRow(**values))
    else:
        for name, value in values.items():
            setattr(row, name, value)


def _run_record(row: MigrationRunRow) -> MigrationRunRecord:
    values = {name: getattr(row, name) for name in _RUN_FIELDS}
    values["dry_run"] = bool(row.dry_run)
    values["command"] = list(row.command or [])
    values["details"] = dict(row.details or {})
    return MigrationRunRecord(**values)


def get_migration_run(session: Session, run_id: str) -> MigrationRunRecord | None:
    row = session.get(MigrationRunRow, run_id)
    return None if row is None else _run_record(row)


def list_migration_runs(
    session: Session, scope: Scope, *, limit: int | None, status: MigrationStatus | None
) -> list[MigrationRunRecord]:
    query = select(MigrationRunRow).where(
        MigrationRunRow.repository_id == scope.repository_id, MigrationRunRow.cluster == scope.cluster
    )
    if status is not None:
        query = query.where(MigrationRunRow.status == status)
    query = query.order_by(MigrationRunRow.started_at.desc(), MigrationRunRow.id.desc())
    if limit is not None:
        query = query.limit(max(limit, 0))
    return [_run_record(row) for row in reversed(session.scalars(query).all())]


def save_batch(session: Session, checkpoint: BatchCheckpoint) -> None:
    row = session.get(BatchCheckpointRow, checkpoint.id)
    values = {name: getattr(checkpoint, name) for name in _BATCH_FIELDS}
    values["details"] = dict(checkpoint.details)
    if row is None:
        session.add(BatchCheckpointRow(**values))
    else:
        for name, value in values.items():
            setattr(row, name, value)


def get_batch(session: Session, batch_id: str) -> BatchCheckpoint | None:
    row = session.get(BatchCheckpointRow, batch_id)
    if row is None:
        return None
    values = {name: getattr(row, name) for name in _BATCH_FIELDS}
    values["details"] = dict(row.details or {})
    return BatchCheckpoint(**values)
