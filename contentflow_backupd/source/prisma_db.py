"""The database side of ``migrate check``: Prisma's ``_prisma_migrations`` rows and the sizes of
the relations that pending migrations touch. Read-only; psycopg lives in ``source/``.

Names are resolved the way the migration's own statements resolve them: a schema-qualified name
as given, an unqualified one through the connection's ``search_path`` (``to_regclass``). So a
Prisma schema other than ``public`` is found when the connection string sets it, e.g.
``?options=-csearch_path%3Dmyschema``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from contentflow_backupd.errors import SourceError
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.postgres import connect, error_reason

__all__ = [
    "PRISMA_TABLE",
    "PrismaMigrationRow",
    "RelName",
    "Relation",
    "RelationSizes",
    "read_prisma_migrations",
    "relation_sizes",
]

PRISMA_TABLE = "_prisma_migrations"

RelName = tuple[str | None, str]
"""``(schema or None, name)``, each as PostgreSQL stores it (unquoted, case preserved)."""


@dataclass(frozen=True)
class PrismaMigrationRow:
    """One row of ``_prisma_migrations``.

    Applied: ``finished_at`` set and ``rolled_back_at`` unset. Failed: neither set (blocks
    ``migrate deploy``, Prisma's P3009). Rolled back: ``rolled_back_at`` set (ignored by Prisma).
    """

    id: str
    checksum: str
    finished_at: datetime | None
    migration_name: str
    logs: str | None
    rolled_back_at: datetime | None
    started_at: datetime
    applied_steps_count: int

    @property
    def applied(self) -> bool:
        return self.finished_at is not None and self.rolled_back_at is None

    @property
    def failed(self) -> bool:
        return self.finished_at is None and self.rolled_back_at is None


def read_prisma_migrations(info: ConnInfo) -> list[PrismaMigrationRow]:
    """Every row of ``_prisma_migrations`` (found through ``search_path``), oldest start first;
    an empty list when the table does not exist (nothing was ever deployed). ``SourceError`` when
    the database cannot be reached or read."""
    with connect(info) as conn:
        try:
            found = conn.execute(
                "select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " where c.oid = to_regclass(%s)",
                (PRISMA_TABLE,),
            ).fetchone()
            if found is None:
                return []
            rows = conn.execute(
                sql.SQL(
                    "select id, checksum, finished_at, migration_name, logs, rolled_back_at,"
                    " started_at, applied_steps_count from {} order by started_at, migration_name, id"
                ).format(sql.Identifier(found[0], PRISMA_TABLE))
            ).fetchall()
        except psycopg.Error as exc:
            raise SourceError(
                f"cannot read {PRISMA_TABLE} on {info.display()}: {error_reason(exc)}",
                hint="the database user needs SELECT on the Prisma migrations table",
            ) from None
    return [
        PrismaMigrationRow(
            id=str(r[0]),
            checksum=str(r[1]),
            finished_at=r[2],
            migration_name=str(r[3]),
            logs=r[4],
            rolled_back_at=r[5],
            started_at=r[6],
            applied_steps_count=int(r[7]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Relation:
    """A relation found in the database, with its size and, for an index, its table's."""

    schema: str
    name: str
    kind: str
    """``pg_class.relkind``: ``r`` table, ``p`` partitioned table, ``i``/``I`` index, ``m`` matview..."""
    total_bytes: int
    """``pg_total_relation_size`` (indexes and TOAST included); partitioned: summed over partitions."""
    table_schema: str
    table_name: str
    """For an index: the table it belongs to; otherwise the relation itself."""
    table_bytes: int


@dataclass(frozen=True)
class RelationSizes:
    """What :func:`relation_sizes` found."""

    current_schema: str | None
    """Where an unqualified ``CREATE TABLE`` would go (``current_schema()``)."""
    found: dict[RelName, Relation]
    """Only the names that exist."""


def relation_sizes(info: ConnInfo, names: Iterable[RelName]) -> RelationSizes:
    """Resolve each name (schema-qualified, or through ``search_path``) and measure it; names
    that do not exist are left out of ``found``. ``SourceError`` when the database cannot be read."""
    wanted = list(dict.fromkeys(names))
    with connect(info) as conn:
        try:
            row = conn.execute("select current_schema()").fetchone()
            current = row[0] if row else None
            tree = conn.info.server_version >= 120000  # pg_partition_tree
            found: dict[RelName, Relation] = {}
            for name in wanted:
                rel = _describe(conn, name, tree)
                if rel is not None:
                    found[name] = rel
        except psycopg.Error as exc:
            raise SourceError(
                f"cannot read table sizes on {info.display()}: {error_reason(exc)}",
                hint="the database user needs to see the tables the migrations touch",
            ) from None
    return RelationSizes(current_schema=current, found=found)


def _size_expr(alias: str, tree: bool) -> str:
    if not tree:
        return f"pg_total_relation_size({alias}.oid)"
    return (
        f"case when {alias}.relkind in ('p', 'I') then coalesce((select sum(pg_total_relation_size(relid))"
        f" from pg_partition_tree({alias}.oid)), 0) else pg_total_relation_size({alias}.oid) end"
    )


def _describe(conn: psycopg.Connection[Any], name: RelName, tree: bool) -> Relation | None:
    schema, rel = name
    ident = sql.Identifier(schema, rel) if schema else sql.Identifier(rel)
    query = (
        "select n.nspname, c.relname, c.relkind::text, " + _size_expr("c", tree) + ","
        " tn.nspname, t.relname, " + _size_expr("t", tree) + " from pg_class c"
        " join pg_namespace n on n.oid = c.relnamespace"
        " left join pg_index i on i.indexrelid = c.oid"
        " join pg_class t on t.oid = coalesce(i.indrelid, c.oid)"
        " join pg_namespace tn on tn.oid = t.relnamespace"
        " where c.oid = to_regclass(%s)"
    )
    row = conn.execute(query, (ident.as_string(conn),)).fetchone()
    if row is None:
        return None
    return Relation(
        schema=row[0],
        name=row[1],
        kind=row[2],
        total_bytes=int(row[3]),
        table_schema=row[4],
        table_name=row[5],
        table_bytes=int(row[6]),
    )
