"""``DrillCatalog`` on SQLAlchemy: the ``drills`` table (contract in ``catalog/base.py``)."""

from __future__ import annotations

from sqlalchemy import select

from contentflow_backupd.catalog.mapping import DRILLS
from contentflow_backupd.catalog.models import DrillRow
from contentflow_backupd.catalog.records import DrillRecord, DrillStatus
from contentflow_backupd.catalog.session import SqlSessions
from contentflow_backupd.errors import CatalogError
from contentflow_backupd.model import Scope


class SqlDrills(SqlSessions):
    def add_drill(self, record: DrillRecord) -> None:
        with self._session("record drill", write=True) as session:
            if session.get(DrillRow, record.id) is not None:
                raise CatalogError(f"the catalog already holds a drill with id {record.id!r}")
            session.add(DRILLS.new_row(record))

    def list_drills(
        self, scope: Scope, *, limit: int | None = None, status: DrillStatus | None = None
    ) -> list[DrillRecord]:
        query = select(DrillRow).where(
            DrillRow.repository_id == scope.repository_id, DrillRow.cluster == scope.cluster
        )
        if status is not None:
            query = query.where(DrillRow.status == status)
        query = query.order_by(DrillRow.started_at.desc(), DrillRow.id.desc())
        if limit is not None:
            query = query.limit(max(limit, 0))
        with self._session("list drills", write=False) as session:
            return [DRILLS.to_record(row) for row in reversed(session.scalars(query).all())]
