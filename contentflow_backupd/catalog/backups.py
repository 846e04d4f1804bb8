"""``BackupCatalog`` on SQLAlchemy: the ``backups`` table (contract in ``catalog/base.py``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from contentflow_backupd.catalog.mapping import BACKUPS
from contentflow_backupd.catalog.models import BackupRow
from contentflow_backupd.catalog.session import SqlSessions
from contentflow_backupd.model import BackupRecord, BackupStatus, Scope


class SqlBackups(SqlSessions):
    def upsert_backup(self, record: BackupRecord) -> None:
        with self._session("upsert backup", write=True) as session:
            _upsert_backups(session, [record])

    def get_backup(self, backup_id: str) -> BackupRecord | None:
        with self._session("get backup", write=False) as session:
            row = session.get(BackupRow, backup_id)
            return None if row is None else BACKUPS.to_record(row)

    def list_backups(
        self, scope: Scope, statuses: Iterable[BackupStatus] | None = None
    ) -> list[BackupRecord]:
        query = select(BackupRow).where(
            BackupRow.repository_id == scope.repository_id, BackupRow.cluster == scope.cluster
        )
        if statuses is not None:
            query = query.where(BackupRow.status.in_(list(statuses)))
        query = query.order_by(BackupRow.started_at, BackupRow.id)
        with self._session("list backups", write=False) as session:
            return [BACKUPS.to_record(row) for row in session.scalars(query)]

    def delete_backup(self, backup_id: str) -> None:
        with self._session("delete backup", write=True) as session:
            session.execute(delete(BackupRow).where(BackupRow.id == backup_id))

    def replace_backups(self, scope: Scope, records: Sequence[BackupRecord]) -> None:
        with self._session("replace backups", write=True) as session:
            session.execute(
                delete(BackupRow).where(
                    BackupRow.repository_id == scope.repository_id,
                    BackupRow.cluster == scope.cluster,
                    BackupRow.status == "succeeded",
                )
            )
            # An upsert replaces the rows whose id is in ``records``, whatever their status.
            _upsert_backups(session, records)


def _upsert_backups(session: Session, records: Sequence[BackupRecord]) -> None:
    """Insert ``records``, replacing every column of the rows with the same ids (one statement:
    no read-then-write race between two writers of one backup)."""
    if not records:
        return
    values = [BACKUPS.values(record) for record in records]
    updated = [name for name in BACKUPS.fields if name != "id"]
    if session.get_bind().dialect.name == "postgresql":
        pg_stmt = pg_insert(BackupRow)
        session.execute(
            pg_stmt.on_conflict_do_update(
                index_elements=[BackupRow.id], set_={name: pg_stmt.excluded[name] for name in updated}
            ),
            values,
        )
    else:
        lite_stmt = sqlite_insert(BackupRow)
        session.execute(
            lite_stmt.on_conflict_do_update(
                index_elements=[BackupRow.id], set_={name: lite_stmt.excluded[name] for name in updated}
            ),
            values,
        )
