"""The PostgreSQL adapters behind the protocols of ``source/base.py``, bundled as ``PgDrivers``.

Built from explicit arguments by whoever calls a use case (cli, daemon, migrate); the use cases
in ``ops`` see only the protocols. Each adapter is a thin shell over the module that does the
work: ``facts`` (queries), ``postgres`` (drop database), ``logical`` (``pg_restore``),
``scratch`` (throwaway servers), ``pgdata`` (files of a restore), ``combine``
(``pg_combinebackup``); ``pg_verifybackup`` runs here. The modules that import psycopg
(``facts``, ``postgres``, ``logical``, ``scratch``) are imported by the methods that use them: a
physical restore, which needs only ``pgdata`` and ``extract``, does not pay for psycopg's import.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from contentflow_backupd import procs
from contentflow_backupd.errors import SourceError
from contentflow_backupd.source import combine, extract, pgdata
from contentflow_backupd.source.base import (
    Database,
    ExtractStats,
    IndexCheck,
    LogicalTarget,
    NewDirectory,
    Owner,
    RecoveryConfig,
    SchemaFingerprint,
    ServerState,
    TableRead,
    ToolVerdict,
)
from contentflow_backupd.source.tools import find_tool

if TYPE_CHECKING:
    from contentflow_backupd.source.conninfo import ConnInfo
    from contentflow_backupd.source.scratch import PgScratchServer

VERIFY_TIMEOUT_S = 6 * 3600


def conninfo_of(db: Database) -> ConnInfo:
    """The ``ConnInfo`` a PostgreSQL adapter needs: these adapters accept only their own kind."""
    from contentflow_backupd.source.conninfo import ConnInfo

    if not isinstance(db, ConnInfo):
        raise TypeError(f"a PostgreSQL adapter was given {type(db).__name__}, not a ConnInfo")
    return db


class PgDatabaseFacts:
    """``DatabaseFacts`` over psycopg (``source/facts.py``)."""

    def server_state(self, db: Database) -> ServerState:
        from contentflow_backupd.source import facts

        return facts.server_state(conninfo_of(db))

    def schema_fingerprint(self, db: Database) -> SchemaFingerprint:
        from contentflow_backupd.source import facts

        return facts.schema_fingerprint(conninfo_of(db))

    def read_tables(self, db: Database) -> list[TableRead]:
        from contentflow_backupd.source import facts

        return facts.read_tables(conninfo_of(db))

    def check_btree_indexes(self, db: Database, *, create_extension: bool) -> IndexCheck:
        from contentflow_backupd.source import facts

        return facts.check_btree_indexes(conninfo_of(db), create_extension=create_extension)

    def run_boolean_query(self, db: Database, query: str) -> tuple[bool, str]:
        from contentflow_backupd.source import facts

        return facts.run_boolean_query(conninfo_of(db), query)


class PgDatabaseAdmin:
    """``DatabaseAdmin``: psycopg for ``DROP DATABASE``, ``pg_restore`` for restores."""

    def drop_database(self, server: Database, name: str) -> None:
        from contentflow_backupd.source import postgres

        postgres.drop_database(conninfo_of(server), name)

    def restore_target(self, db: Database, *, bin_dir: Path | None, tmp_root: Path | None) -> LogicalTarget:
        from contentflow_backupd.source.logical import PgRestoreTarget

        return PgRestoreTarget(conninfo_of(db), bin_dir=bin_dir, tmp_root=tmp_root)

    def cancel_queries(self, owner: str | None = None) -> int:
        from contentflow_backupd.source import postgres

        return postgres.cancel_queries(owner)


class PgScratchServers:
    """``ScratchServers``: ``source/scratch.py`` and ``pg_verifybackup``."""

    def owner(self) -> Owner:
        from contentflow_backupd.source import scratch

        return scratch.server_owner()

    def check_reachable(self, path: Path, owner: Owner) -> None:
        from contentflow_backupd.source import scratch

        scratch.check_reachable(path, owner)

    def bin_dir(self, major: int, pg_bin: Path | None, client_bin: Path | None) -> Path:
        from contentflow_backupd.source import scratch

        return scratch.server_bin_dir(major, pg_bin, client_bin)

    def server(
        self, pgdata: Path, run_dir: Path, bin_dir: Path, owner: Owner, *, superuser: str
    ) -> PgScratchServer:
        from contentflow_backupd.source import scratch

        return scratch.PgScratchServer(pgdata, run_dir, bin_dir, owner, superuser=superuser)

    def stop_leftover(self, pgdata: Path, bin_dir: Path | None) -> bool:
        from contentflow_backupd.source import scratch

        return scratch.stop_leftover(pgdata, bin_dir)

    def verify_backup(
        self, pgdata: Path, bin_dir: Path, client_bin: Path | None, major: int
    ) -> tuple[ToolVerdict, str]:
        name = "pg_verifybackup"
        if not (pgdata / "backup_manifest").exists():
            return "skipped", "the backup holds no backup_manifest"
        tool = bin_dir / name
        try:
            path = tool if tool.exists() else find_tool(name, major, client_bin)
        except SourceError as exc:
            hint = f" (hint: {exc.hint})" if exc.hint else ""
            return "not_run", f"pg_verifybackup could not run: {exc.message}{hint}"
        # WAL is not in the backup (it comes from the archive): recovery itself checks it.
        argv = [str(path), "--no-parse-wal", str(pgdata)]
        try:
            proc = procs.run(argv, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return "not_run", f"pg_verifybackup could not run: {exc}; check the tool under {path.parent}"
        out = " ".join((proc.stderr + " " + proc.stdout).split())
        if proc.returncode != 0:
            return "failed", f"the restored files do not match the backup's manifest: {out[-2000:]}"
        return "passed", out[-300:] or "backup successfully verified"


class LocalDataDirectories:
    """``DataDirectories`` on the local file system (``source/pgdata.py``, ``source/extract.py``).
    ``writers``: threads that write the files of a restore (``BACKUPD_RESTORE__PROCESS_MAX``)."""

    writers: int = 1

    def __init__(self, writers: int = 1) -> None:
        self.writers = max(1, writers)

    def resolve_owner(self, spec: str | None) -> Owner:
        return pgdata.resolve_owner(spec)

    def check_new_directory(self, path: Path, what: str) -> None:
        pgdata.check_new_directory(path, what)

    def new_directory(self, path: Path, owner: Owner) -> NewDirectory:
        return pgdata.NewDirectory(path, owner)

    def extract_tar(self, chunks: Iterable[bytes], dest: Path, owner: Owner) -> ExtractStats:
        return extract.extract_tar(chunks, dest, owner, writers=self.writers)

    def give_tree(self, root: Path, owner: Owner) -> None:
        combine.give_tree(root, owner.uid, owner.gid)

    def readable_by(self, path: Path, owner: Owner) -> bool:
        return pgdata.readable_by(path, owner)

    def recovery_dir_of(self, pgdata_dir: Path) -> Path:
        return pgdata.recovery_dir_of(pgdata_dir)

    def write_recovery_config(self, directory: Path, config: RecoveryConfig, owner: Owner) -> Path:
        return pgdata.write_recovery_config(directory, config, owner)

    def restore_command(self, tool: Sequence[str], config: Path) -> str:
        return pgdata.restore_command(tool, config)

    def write_recovery_settings(
        self, pgdata_dir: Path, settings: Mapping[str, str], owner: Owner, *, header: str
    ) -> None:
        pgdata.write_recovery_settings(pgdata_dir, settings, owner, header=header)


class PgBackupCombiner:
    """``BackupCombiner``: ``pg_combinebackup`` (``source/combine.py``)."""

    def find(self, major: int, bin_dir: Path | None) -> Path:
        return combine.find_combinebackup(major, bin_dir)

    def combine(self, tool: Path, inputs: Sequence[Path], output: Path, *, link: bool) -> None:
        combine.combine_backups(tool, inputs, output, link=link)


@dataclass(frozen=True)
class PgDrivers:
    """``PostgresDrivers``: the local PostgreSQL tools and psycopg. No settings are read; every
    adapter takes what it needs as arguments of its methods (and ``datadir`` its number of
    writer threads as an argument of its constructor)."""

    facts: PgDatabaseFacts = field(default_factory=PgDatabaseFacts)
    admin: PgDatabaseAdmin = field(default_factory=PgDatabaseAdmin)
    scratch: PgScratchServers = field(default_factory=PgScratchServers)
    datadir: LocalDataDirectories = field(default_factory=LocalDataDirectories)
    combiner: PgBackupCombiner = field(default_factory=PgBackupCombiner)
