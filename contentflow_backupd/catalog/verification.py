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


def get_verify_state(session: Session, cluster: str) -> VerifyState:
    row = session.get(VerifyStateRow, cluster)
    if row is None:
        return VerifyState(cluster)
    return VerifyState(
        cluster=row.cluster,
        last_deep_success_at=row.last_deep_success_at,
        sweep_cursor=row.sweep_cursor,
        sweep_started_at=row.sweep_started_at,
        sweep_objects_total=row.sweep_objects_total,
        verified_backups=_id_list(row.verified_backups),
    )


def set_verify_state(session: Session, state: VerifyState) -> None:
    row = session.get(VerifyStateRow, state.cluster)
    if row is None:
        row = VerifyStateRow(cluster=state.cluster)
        session.add(row)
    row.last_deep_success_at = state.last_deep_success_at
    row.sweep_cursor = state.sweep_cursor
    row.sweep_started_at = state.sweep_started_at
    row.sweep_objects_total = state.sweep_objects_total
    row.verified_backups = json.dumps(sorted(set(state.verified_backups)))


def _open_row(session: Session, cluster: str, key: str) -> CorruptObjectRow | None:
    query = select(CorruptObjectRow).where(
        CorruptObjectRow.cluster == cluster,
        CorruptObjectRow.key == key,
        CorruptObjectRow.resolved_at.is_(None),
    )
    return session.scalars(query).first()


def record_corrupt(
    session: Session,
    cluster: str,
    key: str,
    backup_ids: Sequence[str],
    problem: str,
    detected_at: datetime,
) -> CorruptObject:
    ids = json.dumps(sorted(set(backup_ids)))
    row = _open_row(session, cluster, key)
    if row is None:
        row = CorruptObjectRow(
            cluster=cluster, key=key, backup_ids=ids, problem=problem, detected_at=detected_at
        )
        session.add(row)
    else:
        row.backup_ids = ids
        row.problem = problem
    session.flush()
    return corrupt_object(row)


def list_corrupt(session: Session, cluster: str, *, open_only: bool) -> list[CorruptObject]:
    query = select(CorruptObjectRow).where(CorruptObjectRow.cluster == cluster)
    if open_only:
        query = query.where(CorruptObjectRow.resolved_at.is_(None))
    return [corrupt_object(row) for row in session.scalars(query.order_by(CorruptObjectRow.id))]


def resolve_corrupt(session: Session, cluster: str, key: str, resolution: str, resolved_at: datetime) -> bool:
    row = _open_row(session, cluster, key)
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
