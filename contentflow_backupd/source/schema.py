"""The database side of the migration guard: schema dumps, the role settings that put
``lock_timeout`` in force for a migration's sessions, the ``down.sql`` rollback transaction, and
the counters that say what a restore would lose.

Why role settings: ``PGOPTIONS`` reaches libpq clients (psql, psycopg) but not Prisma's own
driver, and an ``options`` URL parameter is not read by every driver either. A setting stored for
the role in the database (``ALTER ROLE r IN DATABASE d SET lock_timeout = ...``) is applied by the
server itself to every new session of that role, whatever the client. The guard stores the
previous value in the catalog before changing it and puts it back afterwards (also after a crash,
at the next ``migrate``).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from contentflow_backupd.errors import SourceError
from contentflow_backupd.source.conninfo import ConnInfo, libpq_env
from contentflow_backupd.source.postgres import connect, error_reason
from contentflow_backupd.source.tools import find_tool

PRISMA_TABLE = "_prisma_migrations"
GUARDED_SETTINGS = ("lock_timeout", "statement_timeout")

_NOISE = re.compile(r"^(--.*|SET .*|SELECT pg_catalog\.set_config\(.*|\\(un)?restrict .*)$")


def server_major(info: ConnInfo) -> int:
    with connect(info) as conn:
        row = conn.execute("select current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def dump_schema(info: ConnInfo, *, bin_dir: Path | None = None, tmp_root: Path | None = None) -> str:
    """``pg_dump --schema-only`` of the database, without owners, privileges, comments, ``SET``
    lines and ``_prisma_migrations`` (Prisma's bookkeeping is checked separately): the text two
    schemas are compared by."""
    pg_dump = find_tool("pg_dump", server_major(info), bin_dir)
    argv = [
        str(pg_dump), "--schema-only", "--no-owner", "--no-privileges", "--no-comments",
        f"--exclude-table={PRISMA_TABLE}", "-d", info.safe(),
    ]  # fmt: skip
    with libpq_env(info, tmp_root) as env:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceError(f"pg_dump --schema-only of {info.display()} failed: {exc}") from None
    if proc.returncode != 0:
        raise SourceError(
            f"pg_dump --schema-only of {info.display()} failed: {proc.stderr.strip()[-2000:]}",
            hint="check BACKUPD_DATABASE_URL and BACKUPD_PG_BIN",
        )
    return normalize_schema(proc.stdout)


def normalize_schema(text: str) -> str:
    """Drop comments, ``SET`` lines and blank runs, so that two dumps of one schema are equal."""
    out: list[str] = []
    for line in text.splitlines():
        if _NOISE.match(line):
            continue
        if not line.strip():
            if out and out[-1] == "":
                continue
            out.append("")
            continue
        out.append(line.rstrip())
    return "\n".join(out).strip() + "\n"


def load_sql(info: ConnInfo, script: str, *, what: str) -> None:
    """Run ``script`` (many statements) in one transaction; ``SourceError`` naming ``what``."""
    with connect(info) as conn:
        try:
            with conn.transaction():
                conn.execute(script.encode())
        except psycopg.Error as exc:
            raise SourceError(f"{what} failed: {error_reason(exc)}") from None


# -- role settings ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RoleSettings:
    """The per-role, per-database settings of ``role`` in ``database`` that the guard manages:
    name -> value, or None where none was set."""

    role: str
    database: str
    values: dict[str, str | None]

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "database": self.database, "values": dict(self.values)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RoleSettings:
        return cls(str(raw["role"]), str(raw["database"]), dict(raw["values"]))


def read_role_settings(info: ConnInfo) -> RoleSettings:
    """The current user's settings in the current database for ``GUARDED_SETTINGS``."""
    with connect(info) as conn:
        row = conn.execute(
            "select current_user, current_database(), (select setconfig from pg_db_role_setting s "
            " where s.setrole = (select oid from pg_roles where rolname = current_user)"
            " and s.setdatabase = (select oid from pg_database where datname = current_database()))"
        ).fetchone()
    assert row is not None
    found = dict(item.split("=", 1) for item in (row[2] or []))
    return RoleSettings(row[0], row[1], {name: found.get(name) for name in GUARDED_SETTINGS})


def apply_role_settings(info: ConnInfo, settings: RoleSettings) -> None:
    """``ALTER ROLE .. IN DATABASE .. SET`` (or ``RESET`` for None) for every value."""
    with connect(info) as conn:
        try:
            with conn.transaction():
                for name, value in settings.values.items():
                    target = sql.SQL("ALTER ROLE {} IN DATABASE {} ").format(
                        sql.Identifier(settings.role), sql.Identifier(settings.database)
                    )
                    if value is None:
                        conn.execute(target + sql.SQL("RESET {}").format(sql.Identifier(name)))
                    else:
                        conn.execute(
                            target + sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
                        )
        except psycopg.Error as exc:
            raise SourceError(
                f"cannot change the settings of role {settings.role!r} in database "
                f"{settings.database!r}: {error_reason(exc)}",
                hint="the migration role must be allowed ALTER ROLE ... IN DATABASE ... SET for itself "
                "(any role may set its own defaults); see docs/migrations.md",
            ) from None


# -- rollback --------------------------------------------------------------------------------
def roll_back_with_down_sql(
    info: ConnInfo,
    scripts: Sequence[tuple[str, str]],
    mark_rolled_back: Sequence[str],
    *,
    lock_timeout_ms: int,
) -> None:
    """In one transaction: run each ``(migration, down.sql text)`` in the order given, then mark
    the latest unrolled row of every name in ``mark_rolled_back`` as rolled back in
    ``_prisma_migrations``, as ``prisma migrate resolve --rolled-back`` does
    (``rolled_back_at = now()``). Nothing changes if any statement fails."""
    with connect(info) as conn:
        current = ""
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms"))
                )
                for name, script in scripts:
                    current = name
                    conn.execute(script.encode())
                current = "_prisma_migrations"
                for name in mark_rolled_back:
                    conn.execute(
                        'UPDATE "_prisma_migrations" SET rolled_back_at = now() WHERE id = ('
                        'SELECT id FROM "_prisma_migrations" WHERE migration_name = %s '
                        "AND rolled_back_at IS NULL ORDER BY started_at DESC LIMIT 1)",
                        (name,),
                    )
        except psycopg.Error as exc:
            raise SourceError(
                f"the rollback failed in {current}: {error_reason(exc)}; nothing of it was applied"
            ) from None


# -- what a restore would lose ---------------------------------------------------------------
def write_counters(info: ConnInfo) -> dict[str, int]:
    """Rows inserted + updated + deleted per user table since statistics were reset
    (``pg_stat_user_tables``): compared before and after, the tables written in between."""
    with connect(info) as conn:
        rows = conn.execute(
            "select schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del from pg_stat_user_tables"
        ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def wal_bytes_since(info: ConnInfo, lsn: str) -> int | None:
    """Bytes of WAL written since ``lsn`` (None when the server cannot say, e.g. a standby)."""
    try:
        with connect(info) as conn:
            row = conn.execute("select pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (lsn,)).fetchone()
    except (psycopg.Error, SourceError):
        return None
    return None if row is None or row[0] is None else int(row[0])
