"""``ScopeCatalog`` on SQLAlchemy: ``catalog_meta`` and the attribution of rows from before
revision 0008 to a repository (contract in ``catalog/base.py``)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, update

from contentflow_backupd.catalog.models import BackupRow, CatalogMetaRow, DrillRow, MigrationRunRow, RunRow
from contentflow_backupd.catalog.session import SqlSessions
from contentflow_backupd.model import Scope


class SqlScope(SqlSessions):
    def adopt_unscoped(self, scope: Scope, manifest_ids: Iterable[str]) -> int:
        ids = set(manifest_ids)
        with self._session("attribute old rows to a repository", write=True) as session:
            candidates = session.scalars(
                select(BackupRow.id).where(
                    BackupRow.repository_id.is_(None), BackupRow.cluster == scope.cluster
                )
            ).all()
            adopted = sorted(set(candidates) & ids)
            owner = {"repository_id": scope.repository_id}
            for start in range(0, len(adopted), 500):
                batch = adopted[start : start + 500]
                session.execute(update(BackupRow).where(BackupRow.id.in_(batch)).values(owner))
                session.execute(
                    update(RunRow)
                    .where(RunRow.repository_id.is_(None), RunRow.backup_id.in_(batch))
                    .values(repository_id=scope.repository_id, cluster=scope.cluster)
                )
                session.execute(
                    update(DrillRow)
                    .where(
                        DrillRow.repository_id.is_(None),
                        DrillRow.cluster == scope.cluster,
                        DrillRow.backup_id.in_(batch),
                    )
                    .values(owner)
                )
                session.execute(
                    update(MigrationRunRow)
                    .where(
                        MigrationRunRow.repository_id.is_(None),
                        MigrationRunRow.cluster == scope.cluster,
                        MigrationRunRow.backup_id.in_(batch),
                    )
                    .values(owner)
                )
            return len(adopted)

    def has_unscoped(self, cluster: str) -> bool:
        query = (
            select(BackupRow.id)
            .where(BackupRow.repository_id.is_(None), BackupRow.cluster == cluster)
            .limit(1)
        )
        with self._session("find old rows", write=False) as session:
            return session.scalars(query).first() is not None

    def get_meta(self, key: str) -> str | None:
        with self._session("read catalog meta", write=False) as session:
            row = session.get(CatalogMetaRow, key)
            return None if row is None else row.value

    def set_meta(self, key: str, value: str) -> None:
        with self._session("save catalog meta", write=True) as session:
            row = session.get(CatalogMetaRow, key)
            if row is None:
                session.add(CatalogMetaRow(key=key, value=value))
            else:
                row.value = value
