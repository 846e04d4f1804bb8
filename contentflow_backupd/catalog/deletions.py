"""``DeletionCatalog`` on SQLAlchemy: the ``deletions`` table (contract in ``catalog/base.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from contentflow_backupd.catalog.mapping import DELETIONS
from contentflow_backupd.catalog.models import DeletionRow
from contentflow_backupd.catalog.records import DeletionRecord
from contentflow_backupd.catalog.session import SqlSessions
from contentflow_backupd.model import Scope


class SqlDeletions(SqlSessions):
    def add_deletions(self, records: Sequence[DeletionRecord]) -> None:
        if not records:
            return
        with self._session("record deletions", write=True) as session:
            session.add_all(DELETIONS.new_row(record) for record in records)

    def list_deletions(self, scope: Scope, limit: int | None = None) -> list[DeletionRecord]:
        query = (
            select(DeletionRow)
            .where(DeletionRow.repository_id == scope.repository_id, DeletionRow.cluster == scope.cluster)
            .order_by(DeletionRow.id.desc())
        )
        if limit is not None:
            query = query.limit(max(limit, 0))
        with self._session("list deletions", write=False) as session:
            return [DELETIONS.to_record(row) for row in reversed(session.scalars(query).all())]

    def count_deleted_wal_segments(self, scope: Scope) -> int:
        # Segment names are 24 hex digits; the other WAL files have a dot in their name.
        query = select(func.count()).where(
            DeletionRow.repository_id == scope.repository_id,
            DeletionRow.cluster == scope.cluster,
            DeletionRow.what == "wal",
            DeletionRow.name.not_like("%.%"),
        )
        with self._session("count deleted WAL segments", write=False) as session:
            return int(session.scalar(query) or 0)
