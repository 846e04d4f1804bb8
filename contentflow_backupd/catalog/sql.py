"""``SqlCatalog``: the Catalog in a SQLite file (the default) or a PostgreSQL database.

``SqlCatalog`` is one class made of one part per role of ``catalog/base.py``, each in its own
module on top of ``catalog/session.py`` (the engine, one short transaction per method, errors
translated to ``CatalogError`` once):

    backups.py          BackupCatalog        runs.py          RunCatalog
    restore_points.py   RestorePointCatalog  deletions.py     DeletionCatalog
    verification.py     VerificationCatalog  drills.py        DrillCatalog
    guard.py            MigrationCatalog     audit.py         AuditCatalog
    scope.py            ScopeCatalog         (here)           CatalogDatabase, schema migrations

Rows become records, and records rows, only through ``catalog/mapping.py``.

The schema is brought to the newest Alembic revision by ``open_catalog`` under a lock (a
transaction-scoped advisory lock on PostgreSQL, the write lock on SQLite), so that processes
opening a catalog at the same moment run the migrations once and all succeed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from contentflow_backupd.catalog.audit import SqlAudit
from contentflow_backupd.catalog.backups import SqlBackups
from contentflow_backupd.catalog.deletions import SqlDeletions
from contentflow_backupd.catalog.drills import SqlDrills
from contentflow_backupd.catalog.fleet import SqlFleet
from contentflow_backupd.catalog.guard import SqlMigrationGuard
from contentflow_backupd.catalog.models import VERSION_TABLE
from contentflow_backupd.catalog.restore_points import SqlRestorePoints
from contentflow_backupd.catalog.runs import INTERRUPTED_ERROR, SqlRuns
from contentflow_backupd.catalog.scope import SqlScope
from contentflow_backupd.catalog.session import BUSY_TIMEOUT_MS, CONNECT_TIMEOUT_S
from contentflow_backupd.catalog.verification import SqlVerification
from contentflow_backupd.errors import CatalogError

if TYPE_CHECKING:
    from alembic.config import Config

    from contentflow_backupd.catalog.base import (
        AuditCatalog,
        BackupCatalog,
        Catalog,
        CatalogDatabase,
        DeletionCatalog,
        DrillCatalog,
        FleetCatalog,
        MigrationCatalog,
        RestorePointCatalog,
        RunCatalog,
        ScopeCatalog,
        VerificationCatalog,
    )

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CONNECT_TIMEOUT_S",
    "INTERRUPTED_ERROR",
    "MIGRATIONS_DIR",
    "MIGRATION_LOCK_KEY",
    "SqlCatalog",
    "alembic_config",
    "head_revision",
    "open_catalog",
]

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
# pg_advisory_xact_lock key serializing migrations: the bytes b"cfbackup" as a signed bigint.
MIGRATION_LOCK_KEY = 0x6366_6261_636B_7570


def open_catalog(url: str, *, read_only: bool = False) -> SqlCatalog:
    """Connect to the catalog at ``url``, bring its schema to the newest revision, return it.

    ``read_only`` (the commands that only read): change nothing. A catalog whose schema is not
    the newest raises ``CatalogError`` naming ``catalog upgrade``; a SQLite catalog file that
    does not exist yet is not created, and a catalog database without any schema yet is left
    as it is: an empty catalog in memory stands for either (nothing was recorded). A catalog that
    cannot be reached raises ``CatalogError`` saying so."""
    if read_only and _sqlite_file_missing(url):
        url, read_only = "sqlite://", False
    catalog = SqlCatalog(url, read_only=read_only)
    try:
        if not read_only:
            catalog.migrate()
        elif catalog.is_new():
            catalog.close()  # nothing recorded yet: an empty catalog in memory stands for it
            return open_catalog("sqlite://")
        else:
            catalog.check_schema()
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


class SqlCatalog(
    SqlBackups,
    SqlRuns,
    SqlRestorePoints,
    SqlDeletions,
    SqlVerification,
    SqlDrills,
    SqlMigrationGuard,
    SqlAudit,
    SqlScope,
    SqlFleet,
):
    """The Catalog on SQLAlchemy: every role. Construct with ``open_catalog`` (which also
    migrates)."""

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

    def close(self) -> None:
        self._engine.dispose()

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

    def is_new(self) -> bool:
        """True when the catalog database holds no schema yet (reachable, no version table)."""
        return self._current_revision() is None

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
        """The schema's revision; None for a new catalog (no version table yet). A catalog that
        cannot be reached raises ``CatalogError`` (it is not a new one)."""
        with self._translate("connect"), self._engine.connect() as connection:
            try:
                row = connection.execute(text(f"select version_num from {VERSION_TABLE}")).first()
            except SQLAlchemyError:
                return None  # no version table yet: a new catalog
        return None if row is None else str(row[0])


if TYPE_CHECKING:  # mypy checks that SqlCatalog fills every role (tests/catalog/test_roles.py too)
    _conforms: type[Catalog] = SqlCatalog
    _backups: type[BackupCatalog] = SqlBackups
    _runs: type[RunCatalog] = SqlRuns
    _restore_points: type[RestorePointCatalog] = SqlRestorePoints
    _deletions: type[DeletionCatalog] = SqlDeletions
    _verification: type[VerificationCatalog] = SqlVerification
    _drills: type[DrillCatalog] = SqlDrills
    _guard: type[MigrationCatalog] = SqlMigrationGuard
    _audit: type[AuditCatalog] = SqlAudit
    _scope: type[ScopeCatalog] = SqlScope
    _fleet: type[FleetCatalog] = SqlFleet
    _database: type[CatalogDatabase] = SqlCatalog
