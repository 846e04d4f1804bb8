"""``VerificationCatalog`` on SQLAlchemy: the continuous-verification tables (``verify_state``,
``corrupt_objects``; contract in ``catalog/base.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from contentflow_backupd.catalog.mapping import CORRUPT_OBJECTS, IDS_AS_TEXT, VERIFY_STATES
from contentflow_backupd.catalog.models import CorruptObjectRow, VerifyStateRow
from contentflow_backupd.catalog.records import CorruptObject, VerifyState
from contentflow_backupd.catalog.session import SqlSessions, utc
from contentflow_backupd.model import Scope, utcnow


class SqlVerification(SqlSessions):
    def get_verify_state(self, scope: Scope) -> VerifyState:
        with self._session("read verification state", write=False) as session:
            row = session.get(VerifyStateRow, scope.cluster)
            if row is None or row.repository_id != scope.repository_id:
                # The one row of the cluster belongs to another repository (or to none yet):
                # this repository's verification has not run.
                return VerifyState(scope.cluster)
            return VERIFY_STATES.to_record(row)

    def set_verify_state(self, scope: Scope, state: VerifyState) -> None:
        with self._session("save verification state", write=True) as session:
            row = VERIFY_STATES.save(
                session.get(VerifyStateRow, scope.cluster),
                state,
                cluster=scope.cluster,
                repository_id=scope.repository_id,
            )
            session.add(row)

    def record_corrupt(
        self,
        scope: Scope,
        key: str,
        backup_ids: Sequence[str],
        problem: str,
        *,
        detected_at: datetime | None = None,
    ) -> CorruptObject:
        at = utc(detected_at or utcnow())
        with self._session("record corrupt object", write=True) as session:
            row = _open_row(session, scope, key)
            if row is None:
                _close_foreign_open_row(session, scope, key, at)
                record = CorruptObject(scope.cluster, key, tuple(backup_ids), problem, at)
                row = CORRUPT_OBJECTS.new_row(record, repository_id=scope.repository_id)
                session.add(row)
            else:
                row.backup_ids = IDS_AS_TEXT.to_row(backup_ids)
                row.problem = problem
            session.flush()
            return CORRUPT_OBJECTS.to_record(row)

    def list_corrupt(self, scope: Scope, *, open_only: bool = True) -> list[CorruptObject]:
        query = select(CorruptObjectRow).where(
            CorruptObjectRow.repository_id == scope.repository_id,
            CorruptObjectRow.cluster == scope.cluster,
        )
        if open_only:
            query = query.where(CorruptObjectRow.resolved_at.is_(None))
        with self._session("list corrupt objects", write=False) as session:
            rows = session.scalars(query.order_by(CorruptObjectRow.id))
            return [CORRUPT_OBJECTS.to_record(row) for row in rows]

    def resolve_corrupt(
        self, scope: Scope, key: str, resolution: str, *, resolved_at: datetime | None = None
    ) -> bool:
        at = utc(resolved_at or utcnow())
        with self._session("resolve corrupt object", write=True) as session:
            row = _open_row(session, scope, key)
            if row is None:
                return False
            row.resolved_at = at
            row.resolution = resolution
            return True


def _open_row(session: Session, scope: Scope, key: str) -> CorruptObjectRow | None:
    query = select(CorruptObjectRow).where(
        CorruptObjectRow.repository_id == scope.repository_id,
        CorruptObjectRow.cluster == scope.cluster,
        CorruptObjectRow.key == key,
        CorruptObjectRow.resolved_at.is_(None),
    )
    return session.scalars(query).first()


def _close_foreign_open_row(session: Session, scope: Scope, key: str, at: datetime) -> None:
    """At most one open record per (cluster, key) is the table's rule (a unique index from
    before revision 0008): an open record of the key kept by another repository, or by none,
    is closed so that this repository's can be opened."""
    query = select(CorruptObjectRow).where(
        CorruptObjectRow.cluster == scope.cluster,
        CorruptObjectRow.key == key,
        CorruptObjectRow.resolved_at.is_(None),
    )
    for row in session.scalars(query):
        row.resolved_at = at
        row.resolution = f"superseded by a record of repository {scope.repository_id}"
    session.flush()
