"""The PostgreSQL side as the use cases see it: protocols, no psycopg, no subprocesses."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol


@dataclass(frozen=True)
class DatabaseInfo:
    database: str
    user: str
    server_version_num: int
    server_version: str
    is_superuser: bool

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
