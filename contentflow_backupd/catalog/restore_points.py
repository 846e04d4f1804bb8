"""``RestorePointCatalog`` on SQLAlchemy: the ``restore_points`` table (contract in
``catalog/base.py``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from contentflow_backupd.catalog.mapping import RESTORE_POINTS
from contentflow_backupd.catalog.models import RestorePointRow
from contentflow_backupd.catalog.session import SqlSessions
from contentflow_backupd.errors import CatalogError
from contentflow_backupd.model import RestorePoint, Scope


class SqlRestorePoints(SqlSessions):
    def add_restore_point(
        self, scope: Scope, name: str, lsn: str, timeline: int, created_at: datetime
    ) -> None:
        point = RestorePoint(scope.cluster, name, lsn, timeline, created_at)
        with self._session("add restore point", write=True) as session:
            existing = session.get(RestorePointRow, (point.cluster, name))
            if existing is not None:
                raise CatalogError(
                    f"cluster {point.cluster!r} already has a restore point named {name!r} "
                    f"(at {existing.lsn}, made {existing.created_at:%Y-%m-%d %H:%M:%S} UTC)",
                    hint="restore point names are unique per cluster; choose another name",
                )
            session.add(RESTORE_POINTS.new_row(point, repository_id=scope.repository_id))

    def list_restore_points(self, scope: Scope) -> list[RestorePoint]:
        query = (
            select(RestorePointRow)
            .where(
                RestorePointRow.repository_id == scope.repository_id,
                RestorePointRow.cluster == scope.cluster,
            )
            .order_by(RestorePointRow.created_at, RestorePointRow.name)
        )
        with self._session("list restore points", write=False) as session:
            return [RESTORE_POINTS.to_record(row) for row in session.scalars(query)]

    def get_restore_point(self, scope: Scope, name: str) -> RestorePoint | None:
        with self._session("get restore point", write=False) as session:
            row = session.get(RestorePointRow, (scope.cluster, name))
            if row is None or row.repository_id != scope.repository_id:
                return None
            return RESTORE_POINTS.to_record(row)
