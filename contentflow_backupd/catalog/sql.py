"""``SqlCatalog``: the Catalog in a SQLite file (the default) or a PostgreSQL database.

Every method is one short transaction. On SQLite, writes begin with ``BEGIN IMMEDIATE`` so that a
writer takes the write lock up front and waits for it (``busy_timeout``, 30 s) instead of failing
on a read-to-write lock upgrade; reads begin ``DEFERRED`` and, in WAL mode, never block writers.
On PostgreSQL, lock waits are bounded by ``lock_timeout`` (30 s) unless the URL sets ``options``.

The schema is brought to the newest Alembic revision by ``open_catalog`` under a lock (a
transaction-scoped advisory lock on PostgreSQL, the write lock on SQLite), so that processes
opening a catalog at the same moment run the migrations once and all succeed.

SQLAlchemy, Alembic and driver errors are translated to ``CatalogError`` here, once; the message
names the catalog URL with its password hidden.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, delete, event, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from contentflow_backupd.catalog import audit, drills, guard, verification
from contentflow_backupd.catalog.audit_records import AuditEvent
from contentflow_backupd.catalog.base import (
    CorruptObject,
    DeletionRecord,
    DrillRecord,
    DrillStatus,
    VerifyState,
)
from contentflow_backupd.catalog.guard_records import BatchCheckpoint, MigrationRunRecord, MigrationStatus
from contentflow_backupd.catalog.models import (
    VERSION_TABLE,
    BackupRow,
    CatalogMetaRow,
    DeletionRow,
    DrillRow,
    MigrationRunRow,
    RestorePointRow,
    RunRow,
)
from contentflow_backupd.errors import CatalogError
from contentflow_backupd.model import (
    BackupRecord,
    BackupStatus,
    RestorePoint,
    RunRecord,
    RunStatus,
    RunTrigger,
    Scope,
    utcnow,
)

if TYPE_CHECKING:
    from alembic.config import Config

    from contentflow_backupd.catalog.base import Catalog

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
# pg_advisory_xact_lock key serializing migrations: the bytes b"cfbackup" as a signed bigint.
MIGRATION_LOCK_KEY = 0x6366_6261_636B_7570
BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 10
INTERRUPTED_ERROR = "process ended without finishing (killed or crashed)"

_SQLITE_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_WRITE_OPTION = "contentflow_catalog_write"  # execution option: begin with BEGIN IMMEDIATE
_BACKUP_FIELDS = tuple(f.name for f in dataclasses.fields(BackupRecord))
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunRecord))


def open_catalog(url: str, *, read_only: bool = False) -> SqlCatalog:
    """Connect to the catalog at ``url``, bring its schema to the newest revision, return it.

    ``read_only`` (the commands that only read): change nothing. A catalog whose schema is not
    the newest raises ``CatalogError`` naming ``catalog upgrade``; a SQLite catalog file that
    does not exist yet is not created: an empty catalog in memory stands for it (nothing was
    recorded)."""
    if read_only and _sqlite_file_missing(url):
        url, read_only = "sqlite://", False
    catalog = SqlCatalog(url, read_only=read_only)
    try:
        if read_only:
            catalog.check_schema()
        else:
            catalog.migrate()
    except BaseException:
        catalog.close()
        raise
    return catalog


def _sqlite_file_missing(url: str) -> bool:
    try:
        parsed = make_url(url)
    except SQLAlchemyError:
        return False  # SqlCatalog says what is wrong with it
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return False
    if database.startswith("file:"):
        return False
    return not Path(database).expanduser().exists()


class _NoAlembicError(Exception):
    """Stands for Alembic's CommandError while Alembic is not imported."""


def _alembic_command_error() -> type[Exception]:
    util = sys.modules.get("alembic.util")
    error = getattr(util, "CommandError", None) if util is not None else None
    return error if isinstance(error, type) and issubclass(error, Exception) else _NoAlembicError


def head_revision() -> str:
    """The newest revision: the migrations are linear and each file starts with its revision id
    (checked against Alembic's own view of the scripts by the catalog tests)."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py"))


def alembic_config(*, connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic ``Config`` for the catalog's migrations, built in code (no alembic.ini)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class SqlCatalog:
    """The Catalog on SQLAlchemy. Construct with ``open_catalog`` (which also migrates)."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        """``read_only``: a SQLite file keeps its journal mode (setting WAL writes its header)."""
        try:
            parsed = make_url(url)
        except SQLAlchemyError:
            raise CatalogError("invalid catalog URL (not shown: it may hold a password)") from None
        self.url = parsed.render_as_string(hide_password=True)
        password = parsed.password
        self._password = password if isinstance(password, str) and password else None
        with self._translate("open"):
            self._engine = _create_engine(parsed, read_only=read_only)
        self._writer = self._engine.execution_options(**{_WRITE_OPTION: True})
        self._reads = sessionmaker(self._engine)
        self._writes = sessionmaker(self._writer)

    def __repr__(self) -> str:
        return f"SqlCatalog({self.url!r})"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for APScheduler's job store: the same database with the same
        connection settings (SQLite busy timeout, PostgreSQL connect timeout)."""
        return self._engine

    def __enter__(self) -> SqlCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ----------------------------------------------------------------------------
    def migrate(self) -> None:
        """Apply every pending Alembic revision, serialized against other processes.

        A catalog already at the newest revision is recognised with one query, without importing
        Alembic (a third of a second of start-up, paid by every command otherwise)."""
        if self._current_revision() == head_revision():
            return
        from alembic import command

        with self._translate("migrate the schema"), self._writer.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            command.upgrade(alembic_config(connection=connection), "head")

    def check_schema(self) -> None:
        """``CatalogError`` unless the schema is at the newest revision (read-only commands
        never upgrade it)."""
        current, head = self._current_revision(), head_revision()
        if current == head:
            return
        if current is not None and current > head:
            raise CatalogError(
                f"catalog {self.url}: its schema (revision {current}) is newer than this version of "
                f"contentflow-backupd knows (revision {head})",
                hint="run the contentflow-backupd version that wrote it, or a newer one",
            )
        raise CatalogError(
            f"catalog {self.url}: its schema is at revision {current or '(none)'}, this version "
            f"reads revision {head}; a read-only command does not upgrade it",
            hint="run `contentflow-backupd catalog upgrade` (or any command that writes, such as a "
            "backup, or the daemon `run`), then this command again",
        )

    def _current_revision(self) -> str | None:
        try:
            with self._engine.connect() as connection:
                row = connection.execute(text(f"select version_num from {VERSION_TABLE}")).first()
        except SQLAlchemyError:
            return None  # no version table yet: a new catalog
        return None if row is None else str(row[0])

    # -- backups ---------------------------------------------------------------------------
    def upsert_backup(self, record: BackupRecord) -> None:
        with self._session("upsert backup", write=True) as session:
            _upsert_backups(session, [record])

    def get_backup(self, backup_id: str) -> BackupRecord | None:
        with self._session("get backup", write=False) as session:
            row = session.get(BackupRow, backup_id)
            return None if row is None else _backup_record(row)

    def list_backups(
        self, scope: Scope, statuses: Iterable[BackupStatus] | None = None
    ) -> list[BackupRecord]:
        query = select(BackupRow).where(
            BackupRow.repository_id == scope.repository_id, BackupRow.cluster == scope.cluster
        )
        if statuses is not None:
            query = query.where(BackupRow.status.in_(list(statuses)))
        query = query.order_by(BackupRow.started_at, BackupRow.id)
        with self._session("list backups", write=False) as session:
            return [_backup_record(row) for row in session.scalars(query)]

    def delete_backup(self, backup_id: str) -> None:
        with self._session("delete backup", write=True) as session:
            session.execute(delete(BackupRow).where(BackupRow.id == backup_id))

    def replace_backups(self, scope: Scope, records: Sequence[BackupRecord]) -> None:
        with self._session("replace backups", write=True) as session:
            session.execute(
                delete(BackupRow).where(
                    BackupRow.repository_id == scope.repository_id,
                    BackupRow.cluster == scope.cluster,
                    BackupRow.status == "succeeded",
                )
            )
            # An upsert replaces the rows whose id is in ``records``, whatever their status.
            _upsert_backups(session, records)

    # -- runs ------------------------------------------------------------------------------
    def start_run(
        self,
        scope: Scope,
        job: str,
        trigger: RunTrigger,
        *,
        pid: int | None = None,
        host: str | None = None,
    ) -> RunRecord:
        row = RunRow(
            job=job,
            trigger=trigger,
            status="running",
            started_at=utcnow(),
            pid=pid,
            host=host,
            repository_id=scope.repository_id,
            cluster=scope.cluster,
        )
        with self._session("start run", write=True) as session:
            session.add(row)
            session.flush()
            return _run_record(row)

    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        *,
        backup_id: str | None = None,
        error: str | None = None,
    ) -> None:
        changes = {
            "status": status,
            "finished_at": utcnow(),
            "backup_id": backup_id,
            "error": error,
        }
        with self._session("finish run", write=True) as session:
            result = session.connection().execute(update(RunRow).where(RunRow.id == run_id).values(changes))
            if result.rowcount == 0:
                raise CatalogError(f"catalog {self.url}: no run with id {run_id}")

    def list_runs(self, scope: Scope, limit: int | None = None, job: str | None = None) -> list[RunRecord]:
        query = (
            select(RunRow)
            .where(RunRow.repository_id == scope.repository_id, RunRow.cluster == scope.cluster)
            .order_by(RunRow.id.desc())
        )
        if job is not None:
            query = query.where(RunRow.job == job)
        if limit is not None:
            query = query.limit(max(limit, 0))
        with self._session("list runs", write=False) as session:
            return [_run_record(row) for row in reversed(session.scalars(query).all())]

    def mark_interrupted(self, is_alive: Callable[[int | None, str | None], bool]) -> list[str]:
        with self._session("find running backups and runs", write=False) as session:
            backups = session.execute(
                select(BackupRow.id, BackupRow.pid, BackupRow.host).where(BackupRow.status == "running")
            ).all()
            runs = session.execute(
                select(RunRow.id, RunRow.pid, RunRow.host).where(RunRow.status == "running")
            ).all()
        # ``is_alive`` runs outside any transaction: it may be slow, and it is not ours.
        dead_backups = [row.id for row in backups if not is_alive(row.pid, row.host)]
        dead_runs = [row.id for row in runs if not is_alive(row.pid, row.host)]
        if not dead_backups and not dead_runs:
            return []
        changes = {"status": "interrupted", "finished_at": utcnow(), "error": INTERRUPTED_ERROR}
        changed: list[str] = []
        with self._session("mark interrupted", write=True) as session:
            # ``status == running`` again: a row finished meanwhile is left alone.
            for backup_id in dead_backups:
                result = session.connection().execute(
                    update(BackupRow)
                    .where(BackupRow.id == backup_id, BackupRow.status == "running")
                    .values(changes)
                )
                if result.rowcount:
                    changed.append(backup_id)
            for run_id in dead_runs:
                session.execute(
                    update(RunRow).where(RunRow.id == run_id, RunRow.status == "running").values(changes)
                )
        return changed

    # -- restore points --------------------------------------------------------------------
    def add_restore_point(
        self, scope: Scope, name: str, lsn: str, timeline: int, created_at: datetime
    ) -> None:
        cluster = scope.cluster
        with self._session("add restore point", write=True) as session:
            existing = session.get(RestorePointRow, (cluster, name))
            if existing is not None:
                raise CatalogError(
                    f"cluster {cluster!r} already has a restore point named {name!r} "
                    f"(at {existing.lsn}, made {existing.created_at:%Y-%m-%d %H:%M:%S} UTC)",
                    hint="restore point names are unique per cluster; choose another name",
                )
            session.add(
                RestorePointRow(
                    cluster=cluster,
                    name=name,
                    lsn=lsn,
                    timeline=timeline,
                    created_at=created_at,
                    repository_id=scope.repository_id,
                )
            )

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
            return [_restore_point(row) for row in session.scalars(query)]

    def get_restore_point(self, scope: Scope, name: str) -> RestorePoint | None:
        with self._session("get restore point", write=False) as session:
            row = session.get(RestorePointRow, (scope.cluster, name))
            if row is None or row.repository_id != scope.repository_id:
                return None
            return _restore_point(row)

    # -- deletions -------------------------------------------------------------------------
    def add_deletions(self, records: Sequence[DeletionRecord]) -> None:
        if not records:
            return
        with self._session("record deletions", write=True) as session:
            session.add_all(
                DeletionRow(
                    at=r.at,
                    cluster=r.cluster,
                    what=r.what,
                    name=r.name,
                    bytes=r.bytes,
                    reason=r.reason,
                    run_id=r.run_id,
                    repository_id=r.repository_id,
                )
                for r in records
            )

    def list_deletions(self, scope: Scope, limit: int | None = None) -> list[DeletionRecord]:
        query = (
            select(DeletionRow)
            .where(DeletionRow.repository_id == scope.repository_id, DeletionRow.cluster == scope.cluster)
            .order_by(DeletionRow.id.desc())
        )
        if limit is not None:
            query = query.limit(max(limit, 0))
        with self._session("list deletions", write=False) as session:
            return [_deletion_record(row) for row in reversed(session.scalars(query).all())]

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

    # -- continuous verification (catalog/verification.py) -----------------------------------
    def get_verify_state(self, scope: Scope) -> VerifyState:
        with self._session("read verification state", write=False) as session:
            return verification.get_verify_state(session, scope)

    def set_verify_state(self, scope: Scope, state: VerifyState) -> None:
        with self._session("save verification state", write=True) as session:
            verification.set_verify_state(session, scope, state)

    def record_corrupt(
        self,
        scope: Scope,
        key: str,
        backup_ids: Sequence[str],
        problem: str,
        *,
        detected_at: datetime | None = None,
    ) -> CorruptObject:
        at = _utc(detected_at or utcnow())
        with self._session("record corrupt object", write=True) as session:
            return verification.record_corrupt(session, scope, key, backup_ids, problem, at)

    def list_corrupt(self, scope: Scope, *, open_only: bool = True) -> list[CorruptObject]:
        with self._session("list corrupt objects", write=False) as session:
            return verification.list_corrupt(session, scope, open_only=open_only)

    def resolve_corrupt(
        self, scope: Scope, key: str, resolution: str, *, resolved_at: datetime | None = None
    ) -> bool:
        at = _utc(resolved_at or utcnow())
        with self._session("resolve corrupt object", write=True) as session:
            return verification.resolve_corrupt(session, scope, key, resolution, at)

    # -- restore drills (catalog/drills.py) -------------------------------------------------
    def add_drill(self, record: DrillRecord) -> None:
        with self._session("record drill", write=True) as session:
            drills.add_drill(session, record)

    def list_drills(
        self, scope: Scope, *, limit: int | None = None, status: DrillStatus | None = None
    ) -> list[DrillRecord]:
        with self._session("list drills", write=False) as session:
            return drills.list_drills(session, scope, limit=limit, status=status)

    def save_migration_run(self, record: MigrationRunRecord) -> None:
        with self._session("record migration run", write=True) as session:
            guard.save_migration_run(session, record)

    def get_migration_run(self, run_id: str) -> MigrationRunRecord | None:
        with self._session("read migration run", write=False) as session:
            return guard.get_migration_run(session, run_id)

    def list_migration_runs(
        self, scope: Scope, *, limit: int | None = None, status: MigrationStatus | None = None
    ) -> list[MigrationRunRecord]:
        with self._session("list migration runs", write=False) as session:
            return guard.list_migration_runs(session, scope, limit=limit, status=status)

    def save_batch(self, checkpoint: BatchCheckpoint) -> None:
        with self._session("record batch checkpoint", write=True) as session:
            guard.save_batch(session, checkpoint)

    def get_batch(self, batch_id: str) -> BatchCheckpoint | None:
        with self._session("read batch checkpoint", write=False) as session:
            return guard.get_batch(session, batch_id)

    # -- audit trail (catalog/audit.py) -------------------------------------------------------
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
        when = _utc(at or utcnow())
        with self._session("record audit event", write=True) as session:
            return audit.append_audit_event(
                session,
                at=when,
                actor=actor,
                action=action,
                outcome=outcome,
                objects=objects,
                details=details,
            )

    def list_audit_events(
        self,
        *,
        since: datetime | None = None,
        after_seq: int | None = None,
        action: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditEvent]:
        since = None if since is None else _utc(since)
        with self._session("list audit events", write=False) as session:
            return audit.list_audit_events(
                session,
                since=since,
                after_seq=after_seq,
                action=action,
                limit=limit,
                newest_first=newest_first,
            )

    def merge_audit_events(self, events: Sequence[AuditEvent]) -> tuple[int, int]:
        with self._session("restore audit events", write=True) as session:
            return audit.merge_audit_events(session, events)

    def get_audit_flushed_seq(self, repository_id: str) -> int | None:
        with self._session("read audit mark", write=False) as session:
            return audit.get_flushed_seq(session, repository_id)

    def set_audit_flushed_seq(self, repository_id: str, seq: int) -> None:
        with self._session("save audit mark", write=True) as session:
            audit.set_flushed_seq(session, repository_id, seq)

    # -- scope of rows from before revision 0008 -----------------------------------------------
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

    def close(self) -> None:
        self._engine.dispose()

    # -- plumbing --------------------------------------------------------------------------
    @contextmanager
    def _session(self, what: str, *, write: bool) -> Iterator[Session]:
        maker = self._writes if write else self._reads
        with self._translate(what), maker.begin() as session:
            yield session

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Turn SQLAlchemy, Alembic, driver and file-system errors into ``CatalogError``."""
        try:
            yield
        except Exception as exc:
            if not isinstance(exc, SQLAlchemyError | OSError | _alembic_command_error()):
                raise
            orig = exc.orig if isinstance(exc, DBAPIError) else exc
            reason = " ".join(str(orig).split())[:500] or type(orig).__name__
            leaked = self._password is not None and self._password in str(exc)
            if self._password:
                reason = reason.replace(self._password, "***")
            error = CatalogError(
                f"catalog {self.url}: cannot {what}: {reason}",
                hint="check that the catalog database is reachable, its URL and its credentials"
                if isinstance(exc, DBAPIError | OSError)
                else None,
            )
            if leaked:
                raise error from None
            raise error from exc


# -- engines -------------------------------------------------------------------------------
def _create_engine(url: URL, *, read_only: bool = False) -> Engine:
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not read_only:
            _make_parent_directory(url)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_on_connect_read_only if read_only else _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if backend == "postgresql":
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in url.query:
            connect_args["application_name"] = "contentflow-backupd catalog"
        if "options" not in url.query:
            connect_args["options"] = f"-c lock_timeout={BUSY_TIMEOUT_MS}"
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    raise CatalogError(
        f"catalog {url.render_as_string(hide_password=True)}: unsupported database {backend!r}",
        hint="use a sqlite:///path or postgresql://user@host/db URL",
    )


def _make_parent_directory(url: URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module: ``_sqlite_on_begin`` emits BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _set_wal_journal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_connect_read_only(dbapi_connection: Any, _record: Any) -> None:
    """``_sqlite_on_connect`` without ``journal_mode = WAL`` (a write when the file is not in WAL
    mode yet) nor the parent directory."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _set_wal_journal(cursor: Any) -> None:
    """``journal_mode = WAL``, waiting for the lock: when processes create the file at once,
    SQLite answers ``database is locked`` at once instead of calling the busy handler."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_BUSY_CODES
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_on_begin(connection: Connection) -> None:
    write = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")


# -- rows <-> records ----------------------------------------------------------------------
def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _upsert_backups(session: Session, records: Sequence[BackupRecord]) -> None:
    if not records:
        return
    values = [dataclasses.asdict(record) for record in records]
    if session.get_bind().dialect.name == "postgresql":
        pg_stmt = pg_insert(BackupRow)
        session.execute(
            pg_stmt.on_conflict_do_update(
                index_elements=[BackupRow.id],
                set_={name: pg_stmt.excluded[name] for name in _BACKUP_FIELDS if name != "id"},
            ),
            values,
        )
    else:
        lite_stmt = sqlite_insert(BackupRow)
        session.execute(
            lite_stmt.on_conflict_do_update(
                index_elements=[BackupRow.id],
                set_={name: lite_stmt.excluded[name] for name in _BACKUP_FIELDS if name != "id"},
            ),
            values,
        )


def _backup_record(row: BackupRow) -> BackupRecord:
    data = {name: getattr(row, name) for name in _BACKUP_FIELDS}
    data["details"] = dict(row.details or {})
    return BackupRecord(**data)


def _run_record(row: RunRow) -> RunRecord:
    return RunRecord(**{name: getattr(row, name) for name in _RUN_FIELDS})


def _restore_point(row: RestorePointRow) -> RestorePoint:
    return RestorePoint(
        cluster=row.cluster, name=row.name, lsn=row.lsn, timeline=row.timeline, created_at=row.created_at
    )


def _deletion_record(row: DeletionRow) -> DeletionRecord:
    return DeletionRecord(
        at=row.at,
        cluster=row.cluster,
        what=row.what,  # type: ignore[arg-type]
        name=row.name,
        bytes=row.bytes,
        reason=row.reason,
        run_id=row.run_id,
        id=row.id,
        repository_id=row.repository_id,
    )


if TYPE_CHECKING:
    _conforms: type[Catalog] = SqlCatalog
