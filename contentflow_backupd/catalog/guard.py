"""``MigrationCatalog`` on SQLAlchemy: the migration guard's tables (``migration_runs``,
``migration_batches``; contract in ``catalog/base.py``)."""

from __future__ import annotations

from sqlalchemy import select

from contentflow_backupd.catalog.guard_records import BatchCheckpoint, MigrationRunRecord, MigrationStatus
from contentflow_backupd.catalog.mapping import BATCHES, MIGRATION_RUNS
from contentflow_backupd.catalog.models import BatchCheckpointRow, MigrationRunRow
from contentflow_backupd.catalog.session import SqlSessions
from contentflow_backupd.model import Scope


class SqlMigrationGuard(SqlSessions):
    def save_migration_run(self, record: MigrationRunRecord) -> None:
        with self._session("record migration run", write=True) as session:
            session.add(MIGRATION_RUNS.save(session.get(MigrationRunRow, record.id), record))

    def get_migration_run(self, run_id: str) -> MigrationRunRecord | None:
        with self._session("read migration run", write=False) as session:
            row = session.get(MigrationRunRow, run_id)
            return None if row is None else MIGRATION_RUNS.to_record(row)

    def list_migration_runs(
        self, scope: Scope, *, limit: int | None = None, status: MigrationStatus | None = None
    ) -> list[MigrationRunRecord]:
        query = select(MigrationRunRow).where(
            MigrationRunRow.repository_id == scope.repository_id, MigrationRunRow.cluster == scope.cluster
        )
        if status is not None:
            query = query.where(MigrationRunRow.status == status)
        query = query.order_by(MigrationRunRow.started_at.desc(), MigrationRunRow.id.desc())
        if limit is not None:
            query = query.limit(max(limit, 0))
        with self._session("list migration runs", write=False) as session:
            return [MIGRATION_RUNS.to_record(row) for row in reversed(session.scalars(query).all())]

    def save_batch(self, checkpoint: BatchCheckpoint) -> None:
        with self._session("record batch checkpoint", write=True) as session:
            session.add(BATCHES.save(session.get(BatchCheckpointRow, checkpoint.id), checkpoint))

    def get_batch(self, batch_id: str) -> BatchCheckpoint | None:
        with self._session("read batch checkpoint", write=False) as session:
            row = session.get(BatchCheckpointRow, batch_id)
            return None if row is None else BATCHES.to_record(row)
