"""Table checksums and sequence values, to compare a source database with its restore."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

_USER_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

# Settings that change how values print in ``row::text``; pinned so checksums compare across
# sessions and servers.
_TEXT_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}


def _user_tables(cur: psycopg.Cursor[Any]) -> list[tuple[str, str]]:
    cur.execute(_USER_TABLES)
    return [(str(schema), str(name)) for schema, name in cur.fetchall()]


def user_table_count(conn: psycopg.Connection[Any]) -> int:
    """How many user tables (in every non-system schema, extension tables excluded) exist."""
    with conn.cursor() as cur:
        return len(_user_tables(cur))


def table_checksums(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, str]]:
    """``{"schema.table": (row_count, md5)}`` for every user table, independent of row order."""
    result: dict[str, tuple[int, str]] = {}
    with conn.transaction(), conn.cursor() as cur:
        for name, value in _TEXT_SETTINGS.items():
            cur.execute("SELECT set_config(%s, %s, true)", (name, value))
        for schema, table in _user_tables(cur):
            query = sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))),"
                " md5('')) FROM {}.{} t"
            ).format(sql.Identifier(schema), sql.Identifier(table))
            cur.execute(query)
            count, digest = one_row(cur)
            result[f"{schema}.{table}"] = (int(count), str(digest))
    return result


def sequence_values(conn: psycopg.Connection[Any]) -> dict[str, int | None]:
    """``{"schema.sequence": last_value}`` (None if never used) for every user sequence."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT schemaname, sequencename, last_value FROM pg_sequences"
            " WHERE schemaname <> 'information_schema' AND schemaname NOT LIKE 'pg\\_%'"
            " ORDER BY 1, 2"
        )
        rows: Sequence[tuple[Any, ...]] = cur.fetchall()
    return {f"{s}.{n}": None if v is None else int(v) for s, n, v in rows}


def one_row(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The single row a query returns."""
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("query returned no row")
    return tuple(row)
