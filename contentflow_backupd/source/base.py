"""The PostgreSQL side as the use cases see it: protocols and records, no psycopg, no subprocesses.

``ops`` imports this module and nothing else of ``source``; the adapters that implement these
protocols live next to it (``source/drivers.py`` bundles them) and the callers (cli, daemon,
migrate) hand them to the use cases. In-memory fakes for tests: ``tests/support/fake_pg.py``.

=====================  ============================================  ==========================
protocol               what for                                      adapter
=====================  ============================================  ==========================
``PhysicalSource``     base backups, WAL switch, schema facts        ``source.physical``
``LogicalSource``      ``pg_dump``                                   ``source.logical``
``LogicalTarget``      ``pg_restore`` into a database                ``source.logical``
``Database``           where a database is (no password shown)       ``source.conninfo.ConnInfo``
``DatabaseFacts``      what checks read from a running database      ``source.drivers``
``DatabaseAdmin``      drop a database, a restore target on it       ``source.drivers``
``ScratchServer``      one throwaway PostgreSQL on a data directory  ``source.scratch``
``ScratchServers``     make them, their OS user and binaries,        ``source.drivers``
                       stop leftovers, ``pg_verifybackup``
``DataDirectories``    a new PGDATA from a tar stream, its           ``source.drivers``
                       recovery settings (``source.pgdata``)
``BackupCombiner``     ``pg_combinebackup``                          ``source.drivers``
``WalReceiver``        one supervised ``pg_receivewal``              ``source.receivewal``
``PostgresDrivers``    the bundle a drill or restore needs           ``source.drivers.PgDrivers``
=====================  ============================================  ==========================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol


@dataclass(frozen=True)
class DatabaseInfo:
    database: str
    user: str
    server_version_num: int
    server_version: str
    is_superuser: bool
    size: int | None = None
    """``pg_database_size``: bytes on disk (None when not known)."""

    @property
    def major(self) -> int:
        return self.server_version_num // 10000


@dataclass(frozen=True)
class ClusterInfo:
    database: str
    user: str
    server_version_num: int
    server_version: str
    system_identifier: str
    wal_segment_size: int
    timeline: int
    extra_tablespaces: list[str]
    can_replicate: bool
    is_superuser: bool
    archive_mode: str
    archive_command: str

    @property
    def major(self) -> int:
        return self.server_version_num // 10000


class BaseBackupStream(Protocol):
    """A running base backup: read ``stream``; once its block is left, the positions are set."""

    stream: Any
    start_lsn: int
    stop_lsn: int
    timeline: int
    manifest_raw: bytes
    """PostgreSQL's ``backup_manifest`` of this backup (set once the block is left)."""


class PhysicalSource(Protocol):
    """A self-hosted cluster that can be backed up physically."""

    def describe(self) -> ClusterInfo:
        """Connect and describe the cluster. ``SourceError`` when it cannot be reached."""
        ...

    def basebackup(
        self,
        label: str,
        *,
        archive_timeout: float,
        server_major: int,
        incremental_from: bytes | None = None,
    ) -> AbstractContextManager[BaseBackupStream]:
        """A tar stream of the data directory (no WAL). Leaving the block waits for the
        backup to end; ``SourceError`` when it failed or the server waited longer than
        ``archive_timeout`` seconds for the WAL to be archived. ``incremental_from``: the
        ``backup_manifest`` of the previous backup; the stream is then a native incremental
        backup (only the blocks changed since; PostgreSQL 17+ with ``summarize_wal = on``)."""
        ...

    def native_incremental_blocker(self, since_lsn: int, timeline: int) -> str | None:
        """Why a native incremental based on a backup that started at ``since_lsn`` on
        ``timeline`` cannot be taken now (server too old, ``summarize_wal`` off, WAL summaries
        not reaching back); None when it can, as far as the role can see."""
        ...

    def switch_wal(self) -> None:
        """Close the current WAL segment so that it is archived."""
        ...

    def schema_facts(self) -> dict[str, Any]:
        """What a restore must reproduce, read now: ``schema_fingerprint`` (and per-relation
        ``schema_objects``), ``row_estimates`` and ``bootstrap_superuser`` (JSON values, recorded
        in the manifest's details). ``SourceError`` when it cannot be read."""
        ...


class LogicalSource(Protocol):
    """A database that can be dumped."""

    def describe(self) -> DatabaseInfo:
        """Connect and describe the database. ``SourceError`` when it cannot be reached."""
        ...

    def dump(self) -> AbstractContextManager[BinaryIO]:
        """A ``pg_dump -Fc`` archive (its own compression off) as a stream. On leaving the
        block the dump process must have exited 0, else ``SourceError`` with its stderr."""
        ...

    def dump_facts(self) -> dict[str, Any]:
        """After a completed ``dump()``: facts read in the dump's own snapshot (JSON values for
        the manifest's details: ``schema_fingerprint``, ``schema_objects``, exact
        ``row_counts`` and ``row_estimates`` for tables not counted); ``{}`` when none."""
        ...


class LogicalTarget(Protocol):
    """A database to restore into."""

    def describe(self) -> str:
        """A display name without password."""
        ...

    def prepare(self, *, create: bool, clean: bool, dump_major: int | None = None) -> bool:
        """Find the client tools (able to read an archive of ``dump_major``'s pg_dump), make sure
        the database exists (create it with ``create``) and refuse one that holds user tables
        unless ``clean``. Raises before anything is changed. True when it created the database."""
        ...

    def drop_created(self) -> None:
        """Drop the database ``prepare`` created (a restore that did not finish); raises
        ``SourceError`` naming why it could not."""
        ...

    def drop_hint(self) -> str:
        """The command that drops the target database by hand."""
        ...

    def restore(self, archive: Iterable[bytes], *, clean: bool, jobs: int, no_owner: bool) -> None:
        """Feed a ``pg_dump`` custom archive to ``pg_restore``. With ``jobs == 1`` the restore
        runs in one transaction: a failure (including an exception raised by ``archive``)
        leaves the target as it was."""
        ...


# -- records -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Owner:
    """An OS user (and group) that owns restored files or runs a server."""

    uid: int
    gid: int
    name: str

    @property
    def is_me(self) -> bool:
        return self.uid == os.geteuid()


@dataclass(frozen=True)
class RecoveryConfig:
    """Where ``restore_command`` (``wal-fetch``) gets its settings.

    Either ``config_file``, the configuration the restore ran with, as it is; or a settings
    ``document`` (no secrets) written to ``<DIR>.recovery/backupd.toml`` with the encryption
    secret as a file reference: ``secret_file`` under ``secret_setting`` (``passphrase_file`` or
    ``key_file``), or ``passphrase``, known only by value, written to ``<DIR>.recovery/passphrase``.
    """

    config_file: Path | None = None
    document: Mapping[str, Any] = field(default_factory=dict)
    secret_setting: str = "passphrase_file"  # noqa: S105 - a setting name, not a secret
    secret_file: Path | None = None
    passphrase: str | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()


@dataclass
class ExtractStats:
    """What a tar stream put into a directory."""

    files: int = 0
    directories: int = 0
    links: int = 0
    bytes: int = 0
    names: set[str] = field(default_factory=set)
    """The names at the top of the directory."""
    writers: int = 1
    """Threads that wrote the files' contents."""


@dataclass(frozen=True)
class ServerState:
    """A running server as a client sees it."""

    in_recovery: bool
    replay_lsn: str | None
    """``pg_last_wal_replay_lsn()``: where recovery stopped (kept after promotion)."""
    last_replayed_commit: datetime | None
    timeline: int
    server_version_num: int


@dataclass(frozen=True)
class SchemaFingerprint:
    digest: str
    """SHA-256 (hex) over every line of the canonical listing."""
    objects: dict[str, str] | None
    """Per relation (``schema.name``): a short digest of its lines; ``""`` holds the schemas and
    extensions. None when the database has too many relations to list."""

    def to_details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_fingerprint": self.digest}
        if self.objects is not None:
            out["schema_objects"] = dict(self.objects)
        return out


@dataclass
class TableRead:
    """One user table read in full: its rows and size as text, or why it could not be read."""

    name: str
    rows: int = 0
    bytes: int = 0
    error: str | None = None


@dataclass
class IndexCheck:
    """``bt_index_check`` over the user B-tree indexes: ``available`` False (with ``reason``)
    when ``amcheck`` is not there; ``failures`` are (index, error) pairs."""

    available: bool
    reason: str = ""
    checked: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


ToolVerdict = Literal["passed", "failed", "not_run", "skipped"]


# -- a database ----------------------------------------------------------------------------------
class Database(Protocol):
    """Where a database is: a parsed connection string whose password is never rendered. The
    adapters accept only the kind they made (``ConnInfo`` for the PostgreSQL adapters)."""

    @property
    def dbname(self) -> str | None: ...

    def display(self) -> str:
        """``user@host:port/db`` for messages: never the password."""
        ...

    def with_database(self, dbname: str) -> Database:
        """The same server and credentials, another database."""
        ...


class DatabaseFacts(Protocol):
    """What the checks of a restored database read from it (``ops/drill/checks.py``). Every
    method connects anew; ``SourceError`` when the database cannot be reached or the query fails."""

    def server_state(self, db: Database) -> ServerState:
        """Whether it is in recovery, where replay stopped, its timeline and version."""
        ...

    def schema_fingerprint(self, db: Database) -> SchemaFingerprint:
        """The fingerprint of the user schema, comparable with the one a backup recorded."""
        ...

    def read_tables(self, db: Database) -> list[TableRead]:
        """Read every user table in full; one table's error is its ``TableRead.error``, not a raise."""
        ...

    def check_btree_indexes(self, db: Database, *, create_extension: bool) -> IndexCheck:
        """``bt_index_check`` on every valid user B-tree index; ``create_extension`` installs
        ``amcheck`` first (scratch instances only)."""
        ...

    def run_boolean_query(self, db: Database, query: str) -> tuple[bool, str]:
        """Run a user's check query: (it returned one true value, what it returned or why not).
        Never changes the database (read-only transaction)."""
        ...


class DatabaseAdmin(Protocol):
    """Databases on a server: dropped, or restored into."""

    def drop_database(self, server: Database, name: str) -> None:
        """Drop database ``name`` on ``server`` (connecting to its maintenance database);
        idempotent (an absent database is fine); ``SourceError`` naming why it could not."""
        ...

    def restore_target(self, db: Database, *, bin_dir: Path | None, tmp_root: Path | None) -> LogicalTarget:
        """``pg_restore`` into ``db`` with the client tools of ``bin_dir`` (else found), child
        passfiles under ``tmp_root``. Nothing is touched before ``prepare``."""
        ...

    def cancel_queries(self, owner: str | None = None) -> int:
        """Cancel the statement running on every connection this process holds open for
        ``owner`` (``procs.owner`` when it was opened; None: all of them, the daemon's stop
        after its grace period); how many were cancelled."""
        ...


# -- scratch servers -------------------------------------------------------------------------------
class ScratchServer(Protocol):
    """One throwaway PostgreSQL on a data directory (restored, or made by ``initdb``), private
    (socket only, archiving off: nothing leaves it) and stopped after use.

    Order: ``make_run_dir``, [``initdb``], ``configure``, ``start``, ``wait_ready``; ``stop``
    whenever (idempotent, and a no-op before ``start``). Each step raises ``SourceError`` with
    the end of the server log when it fails."""

    def make_run_dir(self) -> None:
        """Create its private run directory (socket, pg_hba.conf, log); it must not exist."""
        ...

    def initdb(self) -> None:
        """A new, empty cluster in its data directory, which must not exist."""
        ...

    def configure(self) -> None:
        """Private access and the isolation settings, written into the data directory."""
        ...

    def start(self) -> None:
        """Start it without waiting; from here on ``stop`` has something to stop."""
        ...

    def wait_ready(
        self,
        dbname: str,
        *,
        promoted: bool,
        timeout: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> ServerState:
        """Until ``dbname`` answers queries (with ``promoted``: and recovery has ended). Raises
        when the server stops on the way, after ``timeout`` seconds, or once ``cancelled()``."""
        ...

    def conninfo(self, dbname: str) -> Database:
        """How to reach ``dbname`` on it (as its superuser)."""
        ...

    def stop(self) -> None:
        """Fast shutdown, immediate when that fails; idempotent."""
        ...


class ScratchServers(Protocol):
    """Making scratch servers: who runs them, with which binaries; leftovers; ``pg_verifybackup``."""

    def owner(self) -> Owner:
        """The OS user a scratch server runs as (``postgres`` when we are root, else us);
        ``UsageError`` when there is none."""
        ...

    def check_reachable(self, path: Path, owner: Owner) -> None:
        """``UsageError`` unless ``owner`` can enter every existing directory on the way to ``path``."""
        ...

    def bin_dir(self, major: int, pg_bin: Path | None, client_bin: Path | None) -> Path:
        """The server binaries (postgres, pg_ctl, initdb) of exactly ``major``; ``SourceError``
        naming where it looked when there are none."""
        ...

    def server(
        self, pgdata: Path, run_dir: Path, bin_dir: Path, owner: Owner, *, superuser: str
    ) -> ScratchServer:
        """A scratch server (not started) for ``pgdata``, run by ``owner``."""
        ...

    def stop_leftover(self, pgdata: Path, bin_dir: Path | None) -> bool:
        """Stop a scratch postmaster still running on ``pgdata`` (immediate shutdown); whether
        one was running. Never stops a process that does not serve ``pgdata``."""
        ...

    def verify_backup(
        self, pgdata: Path, bin_dir: Path, client_bin: Path | None, major: int
    ) -> tuple[ToolVerdict, str]:
        """``pg_verifybackup`` of a restored data directory against its ``backup_manifest``
        (WAL not parsed): the verdict and a one-line detail. ``skipped`` without a manifest,
        ``not_run`` when the tool is missing or could not run. Never raises."""
        ...


# -- a new data directory ------------------------------------------------------------------------
class NewDirectory(Protocol):
    """A directory made empty for a restore, and removed again (or emptied) when it fails."""

    @property
    def path(self) -> Path: ...

    def make(self) -> None:
        """Create it (0700, given to its owner), or take it when it exists empty."""
        ...

    def discard(self) -> None:
        """Remove it if ``make`` created it, else empty it again."""
        ...


class DataDirectories(Protocol):
    """The files of a physical restore: a new PGDATA from a ``pg_basebackup`` tar stream and its
    recovery settings. Every file is fsynced; nothing existing is overwritten."""

    def resolve_owner(self, spec: str | None) -> Owner:
        """``USER``, ``USER:GROUP`` or numeric ids; None is us. ``UsageError`` for an unknown user."""
        ...

    def check_new_directory(self, path: Path, what: str) -> None:
        """``UsageError`` (naming ``what``) unless ``path`` is absent or an empty directory."""
        ...

    def new_directory(self, path: Path, owner: Owner) -> NewDirectory:
        """``path`` to be made by ``make`` (nothing happens before)."""
        ...

    def extract_tar(self, chunks: Iterable[bytes], dest: Path, owner: Owner) -> ExtractStats:
        """Extract a tar stream into the empty ``dest``, refusing any member that would leave it
        (``BackupdError``); files 0600 and directories 0700, given to ``owner``. Reads
        ``chunks`` to its end; returns only when every file is written and synced, and on any
        error only once nothing writes into ``dest`` any more. How many threads write is the
        adapter's choice (``ExtractStats.writers``)."""
        ...

    def give_tree(self, root: Path, owner: Owner) -> None:
        """Give everything under ``root`` to ``owner`` (a no-op unless we are root)."""
        ...

    def readable_by(self, path: Path, owner: Owner) -> bool:
        """Whether ``owner`` may read ``path`` by its mode bits."""
        ...

    def recovery_dir_of(self, pgdata: Path) -> Path:
        """Where the recovery settings of ``pgdata`` go (``<pgdata>.recovery``)."""
        ...

    def write_recovery_config(self, directory: Path, config: RecoveryConfig, owner: Owner) -> Path:
        """Write restore_command's settings file (and secret) into ``directory``; returns the file."""
        ...

    def restore_command(self, tool: Sequence[str], config: Path) -> str:
        """The ``restore_command`` line that runs ``tool ... wal-fetch %f %p`` with ``config``."""
        ...

    def write_recovery_settings(
        self, pgdata: Path, settings: Mapping[str, str], owner: Owner, *, header: str
    ) -> None:
        """Append ``settings`` to ``postgresql.auto.conf`` and create ``recovery.signal``."""
        ...


class BackupCombiner(Protocol):
    """``pg_combinebackup``: a data directory from a full backup and its native incrementals."""

    def find(self, major: int, bin_dir: Path | None) -> Path:
        """The tool of PostgreSQL ``major``; ``SourceError`` naming what is needed."""
        ...

    def combine(self, tool: Path, inputs: Sequence[Path], output: Path, *, link: bool) -> None:
        """Combine ``inputs`` (full first) into the new ``output``; ``SourceError`` on failure."""
        ...


class PostgresDrivers(Protocol):
    """What drills, recover and physical restore need from the PostgreSQL side, in one value."""

    @property
    def facts(self) -> DatabaseFacts: ...

    @property
    def admin(self) -> DatabaseAdmin: ...

    @property
    def scratch(self) -> ScratchServers: ...

    @property
    def datadir(self) -> DataDirectories: ...

    @property
    def combiner(self) -> BackupCombiner: ...


# -- WAL streaming ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReceiverExit:
    """How a ``pg_receivewal`` run ended."""

    returncode: int
    """Its exit code; negative for the signal that ended it (``-9``: killed)."""
    stderr: str
    """The last few KB of what it wrote to stderr."""
    ran_for: float
    """Seconds it ran."""


class WalReceiver(Protocol):
    """One ``pg_receivewal`` writing into ``spool_dir``, started and stopped on request by one
    supervisor (not thread-safe), and the replication slot that guards the WAL it has not
    archived yet. Use it as a context manager: leaving the block stops a running child. Complete
    segments appear in the spool under their name; the one being received is
    ``<segment>.partial``. The child resumes after the newest complete segment in the spool (or
    at the start of a ``.partial`` one), else at the server's current position; it does not move
    the slot: only ``confirm_archived`` does."""

    @property
    def spool_dir(self) -> Path: ...

    @property
    def running(self) -> bool: ...

    def __enter__(self) -> WalReceiver: ...

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None: ...

    def describe(self) -> str:
        """The server it streams from, for logs (no password)."""
        ...

    def start(self) -> int:
        """Create the slot if needed and start the child; its pid. ``SourceError`` when the
        server cannot be reached or the tool cannot start."""
        ...

    def poll(self) -> ReceiverExit | None:
        """How the child ended, once, when it has; None while it runs (or was not started)."""
        ...

    def stop(self) -> ReceiverExit | None:
        """Stop the child (it keeps its ``.partial`` file to resume from); idempotent."""
        ...

    def confirm_archived(self, lsn: int) -> int | None:
        """Let the server recycle WAL before ``lsn``, the end of the newest segment durably
        stored: advance the guard slot to it, never back (a slot already past it stays). May be
        called outside the ``with`` block and while another stream of the cluster does the same.
        Returns the slot's position afterwards (None: the slot is gone or holds no WAL).
        ``SourceError`` when the server cannot be reached or refuses."""
        ...
