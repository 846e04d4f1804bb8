"""Reading a Prisma migrations directory, and Prisma's migration checksum (pure, no database).

Layout (``prisma/migrations``)::

    migration_lock.toml                 provider = "postgresql"
    20240101120000_init/migration.sql   one folder per migration, applied in name order
    20240102090000_users/migration.sql
    20240102090000_users/down.sql       optional: the reverse script (``migrate`` rollback uses it)

:func:`read_migrations_dir` never raises for what it finds in the directory: each problem is a
message naming the path and what to do, in :attr:`MigrationDir.problems`, and the folders that
are not migrations are left out of :attr:`MigrationDir.migrations`. Rules:

- ``migration_lock.toml`` must exist and say ``provider = "postgresql"``;
- a folder is named ``<14 digits>_<name>`` (``YYYYMMDDHHMMSS_name``). Prisma itself names the
  folder ``<14 digits>`` alone when the migration name is empty (schema-engine
  ``generate_migration_directory_name``), so that form is accepted too;
- a folder without ``migration.sql`` is a problem; other plain files at the top level (README,
  .gitkeep) are ignored;
- ``migration.sql`` that is not valid UTF-8 is a problem: Prisma reads it as UTF-8 text, so the
  bytes it runs and checksums are not the bytes on disk (invalid sequences become U+FFFD). The
  checksum here is computed on that same decoded text.

Migrations are sorted by folder name (Prisma's order).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DOWN_SCRIPT",
    "LOCK_FILE",
    "MIGRATION_SCRIPT",
    "MigrationDir",
    "MigrationFile",
    "checksum_matches",
    "prisma_checksum",
    "read_migrations_dir",
]

LOCK_FILE = "migration_lock.toml"
MIGRATION_SCRIPT = "migration.sql"
DOWN_SCRIPT = "down.sql"
PROVIDER = "postgresql"

_FOLDER_NAME = re.compile(r"\A[0-9]{14}(?:_.*)?\Z", re.DOTALL)
_CHECKSUM_STR_LEN = 64


# --- Prisma's checksum -------------------------------------------------------------------------
# Ported from prisma/prisma-engines, schema-engine/connectors/schema-connector/src/checksum.rs
# (render_checksum, script_matches_checksum, compute_checksum, format_checksum(_old)):
# - the checksum is SHA-256 of the script's UTF-8 text, rendered as 64 lower-case hex digits;
# - a recorded checksum matches when it equals the checksum of the script as it is, or with
#   every CRLF replaced by LF, or with every LF replaced by CRLF (git's line-ending conversions;
#   note the last one is applied to the original script, so an existing CRLF becomes CR CR LF);
# - a non-empty recorded checksum whose length is not 64 was written by an old schema engine
#   that formatted each byte with ``{:x}`` (no zero padding, prisma-engines issue 1887): it is
#   compared with that rendering instead.


def prisma_checksum(script: bytes) -> str:
    """What Prisma records in ``_prisma_migrations.checksum`` for a script with these bytes (the
    UTF-8 encoding of the text Prisma read): SHA-256, 64 lower-case hex digits."""
    return hashlib.sha256(script).hexdigest()


def _format_old(digest: bytes) -> str:
    return "".join(f"{b:x}" for b in digest)


def checksum_matches(script: bytes, recorded: str) -> bool:
    """Prisma's ``script_matches_checksum``: does ``recorded`` belong to ``script``, allowing for
    line-ending conversions and the historical unpadded hex rendering (see the comment above)?"""
    old_format = recorded != "" and len(recorded) != _CHECKSUM_STR_LEN
    for variant in (script, script.replace(b"\r\n", b"\n"), script.replace(b"\n", b"\r\n")):
        digest = hashlib.sha256(variant).digest()
        rendered = _format_old(digest) if old_format else digest.hex()
        if rendered == recorded:
            return True
    return False


# --- The directory -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationFile:
    """One migration folder that has a ``migration.sql``."""

    name: str
    """The folder name, as recorded in ``_prisma_migrations.migration_name``."""
    path: Path
    """The ``migration.sql`` file."""
    sql: str
    """Its text, as Prisma reads it (UTF-8; invalid bytes replaced)."""
    checksum: str
    """Prisma's checksum of ``sql`` (what ``migrate deploy`` records for it)."""
    down_sql_path: Path | None
    """``down.sql`` beside ``migration.sql``, when there is one."""

    def matches_checksum(self, recorded: str) -> bool:
        """Whether a recorded checksum belongs to this file, by Prisma's rule."""
        return checksum_matches(self.sql.encode(), recorded)


@dataclass(frozen=True)
class MigrationDir:
    """What :func:`read_migrations_dir` found."""

    path: Path
    migrations: tuple[MigrationFile, ...]
    """The valid migration folders, sorted by name."""
    problems: tuple[str, ...]
    """Each a message naming the path and what to do; empty when the directory is sound."""

    def by_name(self) -> dict[str, MigrationFile]:
        return {m.name: m for m in self.migrations}


def read_migrations_dir(path: Path) -> MigrationDir:
    """Read a Prisma migrations directory; problems are collected, never raised (module docstring)."""
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        return MigrationDir(
            path=path,
            migrations=(),
            problems=(
                f"{path} {what}: give --migrations-dir the Prisma migrations directory "
                "(usually prisma/migrations)",
            ),
        )
    problems: list[str] = []
    lock_problem = _check_lock_file(path / LOCK_FILE)
    if lock_problem:
        problems.append(lock_problem)
    migrations: list[MigrationFile] = []
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        if not entry.is_dir():
            continue  # migration_lock.toml, README.md and other plain files
        if not _FOLDER_NAME.match(entry.name):
            problems.append(
                f"{entry}: not a migration folder name (expected <14 digits>_<name>, e.g. "
                "20240131120000_add_users); rename it the way `prisma migrate dev` names folders, "
                "or move it out of the migrations directory"
            )
            continue
        script = entry / MIGRATION_SCRIPT
        if not script.is_file():
            problems.append(
                f"{entry}: no {MIGRATION_SCRIPT} in this migration folder; add the migration's "
                "SQL there (or `prisma migrate diff --script`), or remove the empty folder"
            )
            continue
        raw = script.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                f"{script}: not valid UTF-8 (byte {exc.start}); Prisma reads migrations as UTF-8 "
                "and would run altered text: re-save the file as UTF-8"
            )
            text = raw.decode("utf-8", errors="replace")
        down = entry / DOWN_SCRIPT
        migrations.append(
            MigrationFile(
                name=entry.name,
                path=script,
                sql=text,
                checksum=prisma_checksum(text.encode()),
                down_sql_path=down if down.is_file() else None,
            )
        )
    return MigrationDir(path=path, migrations=tuple(migrations), problems=tuple(problems))


def _check_lock_file(lock: Path) -> str | None:
    fix = f'it should hold provider = "{PROVIDER}" (Prisma writes it; restore it from version control)'
    if not lock.is_file():
        return f"{lock} is missing: {fix}"
    try:
        data = tomllib.loads(lock.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return f"{lock}: not valid TOML ({exc}); {fix}"
    provider = data.get("provider")
    if provider is None:
        return f"{lock}: no provider; {fix}"
    if provider != PROVIDER:
        return (
            f"{lock}: provider is {provider!r}, not {PROVIDER!r}: these migrations were written for "
            "another database; point --migrations-dir at the PostgreSQL migrations"
        )
    return None
