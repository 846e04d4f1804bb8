"""``FleetCatalog`` on SQLAlchemy: the fleet's daemons and leases (contract in
``catalog/base.py``; design in ``docs/design/fleet.md``, step 8).

Every method reads the clock once, in its own transaction: ``now()`` on PostgreSQL (the
transaction's start, constant inside it, so reading it first and binding it is the same as
writing ``now()`` in each statement), the process's clock on SQLite (one daemon only). Expiries
are compared with that value only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from contentflow_backupd.catalog.fleet_records import DaemonRecord, LeaseRecord, ReapedRuns
from contentflow_backupd.catalog.mapping import RUNS
from contentflow_backupd.catalog.models import BackupRow, FleetDaemonRow, FleetLeaseRow, RunRow
from contentflow_backupd.catalog.runs import INTERRUPTED_ERROR, new_run_row
from contentflow_backupd.catalog.session import SqlSessions, utc
from contentflow_backupd.errors import CatalogError
from contentflow_backupd.model import RunRecord, RunTrigger, Scope, utcnow


class SqlFleet(SqlSessions):
    def announce(
        self,
        daemon_id: str,
        *,
        member: str,
        host: str,
        pid: int,
        version: str,
        clusters: Mapping[str, str],
        ttl_s: float,
    ) -> DaemonRecord:
        with self._session("announce the daemon", write=True) as session:
            now = _now(session)
            row = session.get(FleetDaemonRow, daemon_id)
            if row is None:
                row = FleetDaemonRow(id=daemon_id)
                session.add(row)
            row.member, row.host, row.pid, row.version = member, host, pid, version
            row.started_at = row.heartbeat_at = now
            row.expires_at = now + _ttl(ttl_s)
            row.clusters = dict(clusters)
            _add_free_leases(session, clusters)
            session.flush()
            return _daemon(row)

    def heartbeat_and_renew(self, daemon_id: str, ttl_s: float) -> dict[str, int]:
        with self._session("renew the leases", write=True) as session:
            now = _now(session)
            later = now + _ttl(ttl_s)
            beat = session.connection().execute(
                update(FleetDaemonRow)
                .where(FleetDaemonRow.id == daemon_id)
                .values(heartbeat_at=now, expires_at=later)
            )
            if beat.rowcount == 0:
                raise CatalogError(f"catalog {self.url}: no fleet daemon {daemon_id!r} (announce it first)")
            renewed = session.execute(
                update(FleetLeaseRow)
                .where(FleetLeaseRow.owner == daemon_id, FleetLeaseRow.expires_at >= now)
                .values(renewed_at=now, expires_at=later)
                .returning(FleetLeaseRow.cluster, FleetLeaseRow.epoch)
            ).all()
            return {cluster: epoch for cluster, epoch in sorted(renewed)}

    def claim(self, daemon_id: str, clusters: Collection[str], ttl_s: float) -> dict[str, int]:
        wanted = sorted(set(clusters))
        if not wanted:
            return {}
        with self._session("claim leases", write=True) as session:
            now = _now(session)
            alive = session.scalar(
                select(FleetDaemonRow.id).where(
                    FleetDaemonRow.id == daemon_id, FleetDaemonRow.expires_at >= now
                )
            )
            if alive is None:
                return {}
            _add_free_leases(session, wanted)
            # An alias, or SQLAlchemy would correlate the subquery with the updated table.
            lease = aliased(FleetLeaseRow)
            free = (
                select(lease.cluster)
                .where(lease.cluster.in_(wanted), or_(lease.owner.is_(None), lease.expires_at < now))
                .with_for_update(skip_locked=True)
            )
            won = session.execute(
                update(FleetLeaseRow)
                .where(FleetLeaseRow.cluster.in_(free.scalar_subquery()))
                .values(
                    owner=daemon_id,
                    epoch=FleetLeaseRow.epoch + 1,
                    acquired_at=now,
                    renewed_at=now,
                    expires_at=now + _ttl(ttl_s),
                )
                .returning(FleetLeaseRow.cluster, FleetLeaseRow.epoch)
                .execution_options(synchronize_session=False)
            ).all()
            return {cluster: epoch for cluster, epoch in sorted(won)}

    def release(self, daemon_id: str, clusters: Collection[str] | None = None) -> list[str]:
        query = update(FleetLeaseRow).where(FleetLeaseRow.owner == daemon_id)
        if clusters is not None:
            query = query.where(FleetLeaseRow.cluster.in_(sorted(set(clusters))))
        with self._session("release leases", write=True) as session:
            released = session.execute(
                query.values(owner=None, expires_at=None)
                .returning(FleetLeaseRow.cluster)
                .execution_options(synchronize_session=False)
            ).scalars()
            return sorted(released)

    def leases(self) -> list[LeaseRecord]:
        with self._session("list leases", write=False) as session:
            now = _now(session)
            rows = session.scalars(select(FleetLeaseRow).order_by(FleetLeaseRow.cluster)).all()
            return [
                LeaseRecord(
                    cluster=row.cluster,
                    owner=row.owner,
                    epoch=row.epoch,
                    acquired_at=row.acquired_at,
                    renewed_at=row.renewed_at,
                    expires_at=row.expires_at,
                    held=row.owner is not None and row.expires_at is not None and row.expires_at >= now,
                )
                for row in rows
            ]

    def live_daemons(self) -> list[DaemonRecord]:
        with self._session("list live daemons", write=False) as session:
            now = _now(session)
            query = select(FleetDaemonRow).where(FleetDaemonRow.expires_at >= now).order_by(FleetDaemonRow.id)
            return [_daemon(row) for row in session.scalars(query)]

    def reap_runs_of(self, daemon_ids: Collection[str], clusters: Collection[str]) -> ReapedRuns:
        ids, names = sorted(set(daemon_ids)), sorted(set(clusters))
        if not ids or not names:
            return ReapedRuns()
        with self._session("reap runs of dead daemons", write=True) as session:
            now = _now(session)
            dead = session.execute(
                select(
                    FleetDaemonRow.id, FleetDaemonRow.host, FleetDaemonRow.pid, FleetDaemonRow.started_at
                ).where(FleetDaemonRow.id.in_(ids), FleetDaemonRow.expires_at < now)
            ).all()
            live = set(
                session.scalars(
                    select(FleetDaemonRow.id).where(
                        FleetDaemonRow.id.in_(ids), FleetDaemonRow.expires_at >= now
                    )
                )
            )
            # A daemon id without a row (never announced, or its row replaced) is dead too.
            dead_ids = [i for i in ids if i not in live]
            if not dead_ids:
                return ReapedRuns()
            changes = {"status": "interrupted", "finished_at": utcnow(), "error": INTERRUPTED_ERROR}
            runs = session.scalars(
                update(RunRow)
                .where(RunRow.status == "running", RunRow.daemon_id.in_(dead_ids), RunRow.cluster.in_(names))
                .values(changes)
                .returning(RunRow)
                .execution_options(synchronize_session=False)
            ).all()
            owned: list[ColumnElement[bool]] = [BackupRow.daemon_id.in_(dead_ids)]
            owned += [
                and_(
                    BackupRow.daemon_id.is_(None),
                    BackupRow.host == host,
                    BackupRow.pid == pid,
                    BackupRow.started_at >= started_at,
                )
                for _id, host, pid, started_at in dead
            ]
            backup_ids = session.scalars(
                update(BackupRow)
                .where(BackupRow.status == "running", BackupRow.cluster.in_(names), or_(*owned))
                .values(changes)
                .returning(BackupRow.id)
                .execution_options(synchronize_session=False)
            ).all()
            return ReapedRuns(
                runs=sorted((RUNS.to_record(row) for row in runs), key=lambda r: r.id),
                backup_ids=sorted(backup_ids),
            )

    def start_run_fenced(
        self,
        daemon_id: str,
        epoch: int,
        scope: Scope,
        job: str,
        trigger: RunTrigger,
        *,
        pid: int | None = None,
        host: str | None = None,
        lease: str | None = None,
    ) -> RunRecord | None:
        with self._session("start a fenced run", write=True) as session:
            now = _now(session)
            # FOR SHARE: a concurrent claim (FOR UPDATE) of this lease waits for this insert, or
            # this insert waits for the claim and then sees the new owner (PostgreSQL; SQLite
            # serializes writers anyway).
            held = (
                select(FleetLeaseRow.cluster)
                .where(
                    FleetLeaseRow.cluster == (scope.cluster if lease is None else lease),
                    FleetLeaseRow.owner == daemon_id,
                    FleetLeaseRow.epoch == epoch,
                    FleetLeaseRow.expires_at >= now,
                )
                .with_for_update(read=True)
            )
            if session.scalar(held) is None:
                return None
            row = new_run_row(scope, job, trigger, pid=pid, host=host, daemon_id=daemon_id, lease_epoch=epoch)
            session.add(row)
            session.flush()
            return RUNS.to_record(row)


def _now(session: Session) -> datetime:
    """The fleet's clock: the PostgreSQL server's ``now()``, or this process's on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        value = session.scalar(select(func.now()))
        if not isinstance(value, datetime):
            raise CatalogError("catalog: now() returned no timestamp")
        return utc(value)
    return utcnow()


def _ttl(ttl_s: float) -> timedelta:
    if not ttl_s > 0:
        raise ValueError(f"lease TTL must be > 0 seconds, got {ttl_s!r}")
    return timedelta(seconds=ttl_s)


def _add_free_leases(session: Session, clusters: Collection[str]) -> None:
    """A free lease row (epoch 0) for each cluster without one; in sorted order, so that two
    transactions adding rows at once wait for each other instead of deadlocking."""
    names = sorted(set(clusters))
    if not names:
        return
    values = [{"cluster": name, "epoch": 0} for name in names]
    if session.get_bind().dialect.name == "postgresql":
        session.execute(pg_insert(FleetLeaseRow).on_conflict_do_nothing(index_elements=["cluster"]), values)
    else:
        session.execute(
            sqlite_insert(FleetLeaseRow).on_conflict_do_nothing(index_elements=["cluster"]), values
        )


def _daemon(row: FleetDaemonRow) -> DaemonRecord:
    return DaemonRecord(
        id=row.id,
        member=row.member,
        host=row.host,
        pid=row.pid,
        version=row.version,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        expires_at=row.expires_at,
        clusters=dict(row.clusters),
    )


__all__ = ["SqlFleet"]
