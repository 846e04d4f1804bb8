"""The catalog's tables as SQLAlchemy 2 declarative models.

The schema itself is created and changed only by the Alembic revisions in ``migrations/versions``;
these models describe the current head so that queries are typed and ``alembic revision
--autogenerate`` can diff against them. Later tables (WAL segments, drills, migrations, audit)
come as later revisions plus a model here.

Datetimes are stored timezone-aware: ``timestamptz`` on PostgreSQL; on SQLite, which has no
zone-aware type, they are stored as UTC and UTC is attached again on read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, MetaData, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Alembic's own table. Not the default ``alembic_version``, so that a catalog pointed at a
# database another Alembic-managed application also uses does not read that application's revision.
VERSION_TABLE = "catalog_alembic_version"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime that always comes back in UTC.

    A naive value going in is taken to be UTC (as ``model.iso`` does).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSON on SQLite (stored as text), JSONB on PostgreSQL.
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class BackupRow(Base):
    """One ``BackupRecord``."""

    __tablename__ = "backups"
    __table_args__ = (
        Index("ix_backups_cluster_started_at", "cluster", "started_at"),
        Index("ix_backups_scope", "repository_id", "cluster", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    cluster: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    generation: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    parent_id: Mapped[str | None] = mapped_column(String(128))
    database: Mapped[str | None] = mapped_column(String(255))
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    source_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks_total: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks_new: Mapped[int] = mapped_column(BigInteger, default=0)
    manifest_key: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    repository_id: Mapped[str | None] = mapped_column(String(64))
    """The repository (its ``repo.json`` id); None: a row from before revision 0008 not attributed."""
    daemon_id: Mapped[str | None] = mapped_column(String(255))
    """The fleet daemon that started the backup (revision 0009); None: a command, or older."""


class RunRow(Base):
    """One ``RunRecord``. Ids are never reused (``AUTOINCREMENT`` on SQLite)."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_scope", "repository_id", "cluster", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(255))
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    backup_id: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    repository_id: Mapped[str | None] = mapped_column(String(64))
    """The repository (its ``repo.json`` id); None: a row from before revision 0008 not attributed."""
    cluster: Mapped[str | None] = mapped_column(String(255))
    daemon_id: Mapped[str | None] = mapped_column(String(255))
    """The fleet daemon that started the run (``start_run_fenced``, revision 0009); None: a
    command, or older."""
    lease_epoch: Mapped[int | None] = mapped_column(BigInteger)
    """The epoch of the cluster's lease the daemon held when it started the run."""


class CatalogMetaRow(Base):
    """Small facts about the catalog itself (e.g. when it was last rebuilt), as key/value text."""

    __tablename__ = "catalog_meta"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RestorePointRow(Base):
    """One ``RestorePoint``: a name is unique within its cluster."""

    __tablename__ = "restore_points"
    __table_args__ = (Index("ix_restore_points_cluster_created_at", "cluster", "created_at"),)

    cluster: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    lsn: Mapped[str] = mapped_column(String(32))
    timeline: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    repository_id: Mapped[str | None] = mapped_column(String(64))
    """The repository (its ``repo.json`` id); None: a row from before revision 0008 not attributed."""


class DeletionRow(Base):
    """One ``DeletionRecord``: something retention removed from the repository. Append-only."""

    __tablename__ = "deletions"
    __table_args__ = (
        Index("ix_deletions_cluster_at", "cluster", "at"),
        Index("ix_deletions_scope", "repository_id", "cluster", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    cluster: Mapped[str] = mapped_column(String(255))
    what: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(Integer)
    repository_id: Mapped[str | None] = mapped_column(String(64))
    """The repository (its ``repo.json`` id); None: a row from before revision 0008 not attributed."""


class VerifyStateRow(Base):
    """One ``VerifyState``: continuous verification of a cluster."""

    __tablename__ = "verify_state"

    cluster: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_deep_success_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    sweep_cursor: Mapped[str | None] = mapped_column(Text)
    sweep_started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    sweep_objects_total: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    verified_backups: Mapped[str | None] = mapped_column(Text)
    """JSON list of backup ids."""
    repository_id: Mapped[str | None] = mapped_column(String(64))
    """The repository (its ``repo.json`` id); None: a row from before revision 0008 not attributed."""


class CorruptObjectRow(Base):
    """One ``CorruptObject``; ``backup_ids`` is a JSON list as text. At most one open record
    (``resolved_at`` NULL) per (cluster, key)."""

    __tablename__ = "corrupt_objects"
    __table_args__ = (
        Index("ix_corrupt_objects_cluster_resolved_at", "cluster", "resolved_at"),
        Index(
            "uq_corrupt_objects_open",
            "cluster",
            "key",
            unique=True,
            sqlite_where=text("resolved_at IS NULL"),
            postgresql_where=text("resolved_at IS NULL"),
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(Text)
    backup_ids: Mapped[str] = mapped_column(Text)
    problem: Mapped[str] = mapped_column(Text)
    detected_at: Mapped[datetime] = mapped_column(UtcDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    resolution: Mapped[str | None] = mapped_column(Text)
    repository_id: Mapped[str | None] = mapped_column(String(64))
    """The repository (its ``repo.json`` id); None: a row from before revision 0008 not attributed."""


class DrillRow(Base):
    """One ``DrillRecord``; ``checks`` is the list of check results as JSON."""

    __tablename__ = "drills"
    __table_args__ = (
        Index("ix_drills_cluster_started_at", "cluster", "started_at"),
        Index("ix_drills_scope", "repository_id", "cluster", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[int | None] = mapped_column(Integer)
    cluster: Mapped[str] = mapped_column(String(255))
    mode: Mapped[str] = mapped_column(String(16))
    backup_id: Mapped[str | None] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    rto_seconds: Mapped[float | None] = mapped_column(Float)
    restored_bytes: Mapped[int | None] = mapped_column(BigInteger)
    throughput_bytes_per_s: Mapped[float | None] = mapped_column(Float)
    checks: Mapped[list[dict[str, str]]] = mapped_column(JsonDocument, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    repository_id: Mapped[str | None] = mapped_column(String(64))
    """The repository (its ``repo.json`` id); None: a row from before revision 0008 not attributed."""


class MigrationRunRow(Base):
    """One ``MigrationRunRecord`` (a ``migrate`` run, dry or not): the audit record of a schema
    migration, its safety net, schemas before and after, and the role settings it changed."""

    __tablename__ = "migration_runs"
    __table_args__ = (
        Index("ix_migration_runs_cluster_started_at", "cluster", "started_at"),
        Index("ix_migration_runs_scope", "repository_id", "cluster", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    cluster: Mapped[str] = mapped_column(String(255))
    database: Mapped[str] = mapped_column(String(255))
    actor: Mapped[str] = mapped_column(String(255))
    command: Mapped[list[str]] = mapped_column(JsonDocument, default=list)
    dry_run: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    restore_point: Mapped[str | None] = mapped_column(String(255))
    backup_id: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    schema_before: Mapped[str | None] = mapped_column(Text)
    schema_after: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    repository_id: Mapped[str | None] = mapped_column(String(64))
    """The repository (its ``repo.json`` id); None: a row from before revision 0008 not attributed."""


class BatchCheckpointRow(Base):
    """One ``BatchCheckpoint``: where a ``migrate batch`` run stands, so it resumes after a crash."""

    __tablename__ = "migration_batches"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    cluster: Mapped[str] = mapped_column(String(255))
    database: Mapped[str] = mapped_column(String(255))
    table_name: Mapped[str] = mapped_column(String(255))
    key_column: Mapped[str] = mapped_column(String(255))
    sql_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class AuditEventRow(Base):
    """One ``AuditEvent`` (catalog/audit_records.py). Append-only: rows are inserted by
    ``catalog/audit.py`` with ``seq`` one more than the last, chained by ``prev_hash``/``hash``."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    objects: Mapped[list[str]] = mapped_column(JsonDocument, default=list)
    details: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class FleetDaemonRow(Base):
    """One ``DaemonRecord``: a daemon incarnation of the fleet, alive while ``expires_at`` is
    not past (on the catalog server's clock)."""

    __tablename__ = "fleet_daemons"
    __table_args__ = (Index("ix_fleet_daemons_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    member: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    clusters: Mapped[dict[str, str]] = mapped_column(JsonDocument, default=dict)
    """Cluster name -> digest of its resolved settings."""


class FleetLeaseRow(Base):
    """One ``LeaseRecord``: the lease of a cluster, held by ``owner`` (a daemon id) until
    ``expires_at``; free when ``owner`` is NULL."""

    __tablename__ = "fleet_leases"
    __table_args__ = (Index("ix_fleet_leases_owner", "owner"),)

    cluster: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(255))
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    acquired_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    renewed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
