"""The ``drills`` table as session-level functions; ``SqlCatalog`` calls each inside one
transaction (see ``catalog/base.py`` for the contract of each method)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from contentflow_backupd.catalog.base import DrillRecord, DrillStatus
from contentflow_backupd.catalog.models import DrillRow
from contentflow_backupd.errors import CatalogError
from contentflow_backupd.model import Scope


def add_drill(session: Session, record: DrillRecord) -> None:
    if session.get(DrillRow, record.id) is not None:
        raise CatalogError(f"the catalog already holds a drill with id {record.id!r}")
    session.add(
        DrillRow(
            id=record.id,
            run_id=record.run_id,
            cluster=record.cluster,
            mode=record.mode,
            backup_id=record.backup_id,
            target=record.target,
            status=record.status,
            started_at=record.started_at,
            finished_at=record.finished_at,
            rto_seconds=record.rto_seconds,
            restored_bytes=record.restored_bytes,
            throughput_bytes_per_s=record.throughput_bytes_per_s,
            checks=[dict(c) for c in record.checks],
            error=record.error,
            repository_id=record.repository_id,
        )
    )


def list_drills(
    session: Session, scope: Scope, *, limit: int | None, status: DrillStatus | None
) -> list[DrillRecord]:
    query = select(DrillRow).where(
        DrillRow.repository_id == scope.repository_id, DrillRow.cluster == scope.cluster
    )
    if status is not None:
        query = query.where(DrillRow.status == status)
    query = query.order_by(DrillRow.started_at.desc(), DrillRow.id.desc())
    if limit is not None:
        query = query.limit(max(limit, 0))
    return [_record(row) for row in reversed(session.scalars(query).all())]


def _record(row: DrillRow) -> DrillRecord:
    return DrillRecord(
        id=row.id,
        cluster=row.cluster,
        mode=row.mode,
        backup_id=row.backup_id,
        target=row.target,
        status=row.status,  # type: ignore[arg-type]
        started_at=row.started_at,
        finished_at=row.finished_at,
        rto_seconds=row.rto_seconds,
        restored_bytes=row.restored_bytes,
        throughput_bytes_per_s=row.throughput_bytes_per_s,
        checks=tuple(dict(c) for c in (row.checks or [])),
        error=row.error,
        run_id=row.run_id,
        repository_id=row.repository_id,
    )
