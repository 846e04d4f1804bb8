"""The continuous-verification tables (``verify_state``, ``corrupt_objects``) as session-level
functions; ``SqlCatalog`` calls each inside one transaction (see ``catalog/base.py`` for the
contract of each method)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from contentflow_backupd.catalog.base import CorruptObject, VerifyState
from contentflow_backupd.catalog.models import CorruptObjectRow, VerifyStateRow
from contentflow_backupd.model import Scope


def get_verify_state(session: Session, scope: Scope) -> VerifyState:
    row = session.get(VerifyStateRow, scope.cluster)
    if row is None or row.repository_id != scope.repository_id:
        # The one row of the cluster belongs to another repository (or to none yet): this
        # repository's verification has not run.
        return VerifyState(scope.cluster)
    return VerifyState(
        cluster=row.cluster,
        last_deep_success_at=row.last_deep_success_at,
        sweep_cursor=row.sweep_cursor,
        sweep_started_at=row.sweep_started_at,
        sweep_objects_total=row.sweep_objects_total,
        verified_backups=_id_list(row.verified_backups),
    )


def set_verify_state(session: Session, scope: Scope, state: VerifyState) -> None:
    row = session.get(VerifyStateRow, scope.cluster)
    if row is None:
        row = VerifyStateRow(cluster=scope.cluster)
        session.add(row)
    row.repository_id = scope.repository_id
    row.last_deep_success_at = state.last_deep_success_at
    row.sweep_cursor = state.sweep_cursor
    row.sweep_started_at = state.sweep_started_at
    row.sweep_objects_total = state.sweep_objects_total
    row.verified_backups = json.dumps(sorted(set(state.verified_backups)))


def _open_row(session: Session, scope: Scope, key: str) -> CorruptObjectRow | None:
    query = select(CorruptObjectRow).where(
        CorruptObjectRow.repository_id == scope.repository_id,
        CorruptObjectRow.cluster == scope.cluster,
        CorruptObjectRow.key == key,
        CorruptObjectRow.resolved_at.is_(None),
    )
    return session.scalars(query).first()


def record_corrupt(
    session: Session,
    scope: Scope,
    key: str,
    backup_ids: Sequence[str],
    problem: str,
    detected_at: datetime,
) -> CorruptObject:
    ids = json.dumps(sorted(set(backup_ids)))
    row = _open_row(session, scope, key)
    if row is None:
        _close_foreign_open_row(session, scope, key, detected_at)
        row = CorruptObjectRow(
            cluster=scope.cluster,
            key=key,
            backup_ids=ids,
            problem=problem,
            detected_at=detected_at,
            repository_id=scope.repository_id,
        )
        session.add(row)
    else:
        row.backup_ids = ids
        row.problem = problem
    session.flush()
    return corrupt_object(row)


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


def list_corrupt(session: Session, scope: Scope, *, open_only: bool) -> list[CorruptObject]:
    query = select(CorruptObjectRow).where(
        CorruptObjectRow.repository_id == scope.repository_id, CorruptObjectRow.cluster == scope.cluster
    )
    if open_only:
        query = query.where(CorruptObjectRow.resolved_at.is_(None))
    return [corrupt_object(row) for row in session.scalars(query.order_by(CorruptObjectRow.id))]


def resolve_corrupt(session: Session, scope: Scope, key: str, resolution: str, resolved_at: datetime) -> bool:
    row = _open_row(session, scope, key)
    if row is None:
        return False
    row.resolved_at = resolved_at
    row.resolution = resolution
    return True


def _id_list(text: str | None) -> tuple[str, ...]:
    try:
        ids = json.loads(text) if text else []
    except ValueError:
        ids = []
    return tuple(str(i) for i in ids) if isinstance(ids, list) else ()


def corrupt_object(row: CorruptObjectRow) -> CorruptObject:
    return CorruptObject(
        cluster=row.cluster,
        key=row.key,
        backup_ids=_id_list(row.backup_ids),
        problem=row.problem,
        detected_at=row.detected_at,
        resolved_at=row.resolved_at,
        resolution=row.resolution,
        id=row.id,
    )
