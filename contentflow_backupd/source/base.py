"""The PostgreSQL side as the use cases see it: protocols, no psycopg, no subprocesses."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol


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


class LogicalSource(Protocol):
    """A database that can be dumped."""

    def describe(self) -> DatabaseInfo:
        """Connect and describe the database. ``SourceError`` when it cannot be reached."""
        ...

    def dump(self) -> AbstractContextManager[BinaryIO]:
        """A ``pg_dump -Fc`` archive (its own compression off) as a stream. On leaving the
        block the dump process must have exited 0, else ``SourceError`` with its stderr."""
        ...


class LogicalTarget(Protocol):
    """A database to restore into."""

    def describe(self) -> str:
        """A display name without password."""
        ...

    def prepare(self, *, create: bool, clean: bool) -> None:
        """Make sure the database exists (create it with ``create``) and refuse one that holds
        user tables unless ``clean``. Raises before anything is changed."""
        ...

    def restore(self, archive: Iterable[bytes], *, clean: bool, jobs: int, no_owner: bool) -> None:
        """Feed a ``pg_dump`` custom archive to ``pg_restore``. With ``jobs == 1`` the restore
        runs in one transaction: a failure (including an exception raised by ``archive``)
        leaves the target as it was."""
        ...
