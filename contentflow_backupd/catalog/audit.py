"""``AuditCatalog`` on SQLAlchemy: the ``audit_events`` table and the marks of what was copied
to each repository (in ``catalog_meta``; contract in ``catalog/base.py``).

Appends are serialized: the last record is read inside the same write transaction that inserts
the next one (SQLite: the transaction began with ``BEGIN IMMEDIATE`` and holds the write lock;
PostgreSQL: a transaction-scoped advisory lock), so concurrent writers (the daemon and a CLI
command on one catalog) never fork the chain. ``seq`` is the primary key: a second insert of the
same ``seq`` fails rather than forks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from contentflow_backupd.catalog.audit_records import AuditEvent, chained
from contentflow_backupd.catalog.mapping import AUDIT_EVENTS
from contentflow_backupd.catalog.models import AuditEventRow, CatalogMetaRow
from contentflow_backupd.catalog.session import SqlSessions, utc
from contentflow_backupd.model import utcnow

# pg_advisory_xact_lock key serializing audit appends: the bytes b"cfaudit!" as a signed bigint.
AUDIT_LOCK_KEY = 0x6366_6175_6469_7421
_FLUSHED_KEY = "audit_flushed_seq:"


class SqlAudit(SqlSessions):
    def append_audit_event(
        self,
        *,
        action: str,
        outcome: str,
        actor: str,
        objects: Sequence[str] = (),
        details: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AuditEvent:
        when = utc(at or utcnow())
        with self._session("record audit event", write=True) as session:
            _lock(session)
            event = chained(
                _last(session),
                at=when,
                actor=actor,
                action=action,
                outcome=outcome,
                objects=objects,
                details=details,
            )
            session.add(AUDIT_EVENTS.new_row(event))
            session.flush()
            return event

    def list_audit_events(
        self,
        *,
        since: datetime | None = None,
        after_seq: int | None = None,
        action: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditEvent]:
        query = select(AuditEventRow)
        if since is not None:
            query = query.where(AuditEventRow.at >= utc(since))
        if after_seq is not None:
            query = query.where(AuditEventRow.seq > after_seq)
        if action is not None:
            query = query.where(AuditEventRow.action == action)
        query = query.order_by(AuditEventRow.seq.desc() if newest_first else AuditEventRow.seq)
        if limit is not None:
            query = query.limit(max(limit, 0))
        with self._session("list audit events", write=False) as session:
            return [AUDIT_EVENTS.to_record(row) for row in session.scalars(query)]

    def merge_audit_events(self, events: Sequence[AuditEvent]) -> tuple[int, int]:
        with self._session("restore audit events", write=True) as session:
            return _merge(session, events)

    def get_audit_flushed_seq(self, repository_id: str) -> int | None:
        with self._session("read audit mark", write=False) as session:
            row = session.get(CatalogMetaRow, _FLUSHED_KEY + repository_id)
            return None if row is None else int(row.value)

    def set_audit_flushed_seq(self, repository_id: str, seq: int) -> None:
        # Raise the mark to ``seq``, never lower it: a slower concurrent flush loses nothing.
        with self._session("save audit mark", write=True) as session:
            row = session.get(CatalogMetaRow, _FLUSHED_KEY + repository_id)
            if row is None:
                session.add(CatalogMetaRow(key=_FLUSHED_KEY + repository_id, value=str(seq)))
            elif int(row.value) < seq:
                row.value = str(seq)


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(AUDIT_LOCK_KEY)))


def _last(session: Session) -> AuditEvent | None:
    row = session.scalars(select(AuditEventRow).order_by(AuditEventRow.seq.desc()).limit(1)).first()
    return None if row is None else AUDIT_EVENTS.to_record(row)


def _merge(session: Session, events: Sequence[AuditEvent]) -> tuple[int, int]:
    """Make the repository's records (``events``) the catalog's history up to their last seq.

    Rows with a seq the repository holds are replaced by the repository's copy. Rows beyond it
    stay as they are when they chain onto its last record; rows that do not (written to a
    catalog that did not know the repository's history, e.g. a new catalog before ``catalog
    rebuild``) are appended again after it, with new seq and hashes, keeping their content.
    Returns (records imported, records appended again)."""
    _lock(session)
    by_seq: dict[int, AuditEvent] = {}
    for event in sorted(events, key=lambda e: e.seq):
        by_seq.setdefault(event.seq, event)
    if not by_seq:
        return 0, 0
    top = max(by_seq)
    repo_hashes = {e.hash for e in by_seq.values()}
    rows = session.scalars(select(AuditEventRow).order_by(AuditEventRow.seq))
    local = [AUDIT_EVENTS.to_record(row) for row in rows]
    current = {e.seq: e for e in local}
    displaced = [e for e in local if e.seq in by_seq and e.hash not in repo_hashes]
    tail = [e for e in local if e.seq > top]
    rechain = bool(displaced) or bool(tail and tail[0].prev_hash != by_seq[top].hash)
    imported = 0
    changed = [e for seq, e in by_seq.items() if current.get(seq) != e]
    if changed:
        session.execute(delete(AuditEventRow).where(AuditEventRow.seq.in_([e.seq for e in changed])))
        session.flush()
        session.add_all(AUDIT_EVENTS.new_row(e) for e in changed)
        imported = len([e for e in changed if e.seq not in current or current[e.seq].hash != e.hash])
    if not rechain:
        session.flush()
        return imported, 0
    if tail:
        session.execute(delete(AuditEventRow).where(AuditEventRow.seq > top))
    session.flush()
    prev: AuditEvent | None = by_seq[top]
    for old in [*displaced, *tail]:
        prev = chained(
            prev,
            at=old.at,
            actor=old.actor,
            action=old.action,
            outcome=old.outcome,
            objects=old.objects,
            details=old.details,
        )
        session.add(AUDIT_EVENTS.new_row(prev))
    session.flush()
    return imported, len(displaced) + len(tail)
