"""Facts about a database's contents that a restore must reproduce, and the queries that check them.

Recorded at backup time (in the manifest's free-form ``details``) and compared by restore drills
and ``recover`` (``ops/drill/checks.py``); the same queries run on both sides.

- The **schema fingerprint** is a SHA-256 over a canonical listing of the user schemas, extensions
  (by name), tables, views and their columns (position among live columns, name, type, not null,
  default, identity, generated), constraints, indexes and user triggers, as PostgreSQL itself
  prints them (``pg_get_constraintdef``, ``pg_get_indexdef`` ...) with ``search_path`` set to
  ``pg_catalog`` so that every name is schema-qualified. Left out on purpose: owners, privileges,
  comments, statistics, object ids and dropped columns (a logical restore renumbers columns and
  creates objects under a new owner with ``--no-owner``), and objects that belong to an extension
  (recreated by ``CREATE EXTENSION``). Per-relation digests (``schema_objects``, up to
  ``MAX_OBJECTS`` relations) let a mismatch name the relations that differ.
- **Row counts**: exact counts of every user table (``count(*)`` in the dump's own snapshot,
  logical mode), or the planner's estimates (``reltuples``, physical mode).

Everything here is read-only, except ``check_btree_indexes`` with ``create_extension`` (only for
scratch instances). psycopg lives in ``source/``: callers get plain values and ``SourceError``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from contentflow_backupd.errors import SourceError
from contentflow_backupd.source.base import IndexCheck as IndexCheck  # records of source.base
from contentflow_backupd.source.base import SchemaFingerprint as SchemaFingerprint
from contentflow_backupd.source.base import ServerState as ServerState
from contentflow_backupd.source.base import TableRead as TableRead
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.postgres import connect, error_reason

MAX_OBJECTS = 5000
"""Per-relation digests and row counts are recorded for databases with at most this many tables
(the manifest stays small); above it, only the overall fingerprint."""

_USER_NAMESPACE = "n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'"
_NOT_EXTENSION_MEMBER = (
    "not exists (select 1 from pg_catalog.pg_depend d where d.classid = '{catalog}'::regclass"
    " and d.objid = {oid} and d.deptype = 'e')"
)
_RELATIONS = f"""
    select c.oid, c.relkind, c.relpartbound, format('%I.%I', n.nspname, c.relname) as qname
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p', 'v', 'm', 'f') and {_USER_NAMESPACE}
      and c.relpersistence <> 't'
      and {_NOT_EXTENSION_MEMBER.format(catalog="pg_catalog.pg_class", oid="c.oid")}
"""
_FINGERPRINT_SQL = f"""
with rels as ({_RELATIONS})
select '' as obj, 'extension ' || quote_ident(e.extname) as line from pg_catalog.pg_extension e
union all
select '', 'schema ' || quote_ident(n.nspname) from pg_catalog.pg_namespace n
 where {_USER_NAMESPACE}
   and {_NOT_EXTENSION_MEMBER.format(catalog="pg_catalog.pg_namespace", oid="n.oid")}
union all
select r.qname, 'relation ' || r.relkind::text
       || coalesce(' partition by ' || pg_catalog.pg_get_partkeydef(r.oid), '')
       || coalesce(' ' || pg_catalog.pg_get_expr(r.relpartbound, r.oid), '')
  from rels r
union all
select r.qname, format('column %s %I %s%s%s%s%s',
         row_number() over (partition by a.attrelid order by a.attnum), a.attname,
         pg_catalog.format_type(a.atttypid, a.atttypmod),
         case when a.attnotnull then ' not null' else '' end,
         coalesce(' default ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), ''),
         case a.attidentity when 'a' then ' identity always' when 'd' then ' identity by default'
              else '' end,
         case when a.attgenerated <> '' then ' generated' else '' end)
  from rels r
  join pg_catalog.pg_attribute a on a.attrelid = r.oid and a.attnum > 0 and not a.attisdropped
  left join pg_catalog.pg_attrdef ad on ad.adrelid = a.attrelid and ad.adnum = a.attnum
union all
select r.qname, 'constraint ' || quote_ident(co.conname) || ' '
       || pg_catalog.pg_get_constraintdef(co.oid)
  from pg_catalog.pg_constraint co join rels r on r.oid = co.conrelid
union all
select r.qname, 'index ' || pg_catalog.pg_get_indexdef(i.indexrelid)
  from pg_catalog.pg_index i join rels r on r.oid = i.indrelid
union all
select r.qname, 'trigger ' || pg_catalog.pg_get_triggerdef(t.oid)
  from pg_catalog.pg_trigger t join rels r on r.oid = t.tgrelid where not t.tgisinternal
"""
# Tables with their own rows (partitioned parents hold none; matviews are rebuilt by a restore).
# Sizes from relpages, not pg_relation_size(): that takes a lock, and must not wait for a table
# someone holds locked while a backup starts.
_TABLES_SQL = f"""
with rels as ({_RELATIONS})
select r.qname, c.reltuples::bigint,
       c.relpages::bigint * pg_catalog.current_setting('block_size')::bigint
  from rels r join pg_catalog.pg_class c on c.oid = r.oid
 where r.relkind = 'r' order by r.qname
"""
_BTREE_INDEXES_SQL = f"""
select format('%I.%I', n.nspname, c.relname), c.oid::bigint
  from pg_catalog.pg_index i
  join pg_catalog.pg_class c on c.oid = i.indexrelid
  join pg_catalog.pg_am am on am.oid = c.relam
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where am.amname = 'btree' and i.indisvalid and i.indisready and c.relpersistence <> 't'
   and {_USER_NAMESPACE}
 order by 1
"""


# -- values ----------------------------------------------------------------------------------
def fingerprint_of(rows: Iterable[tuple[str, str]]) -> SchemaFingerprint:
    """The fingerprint of ``(relation, line)`` rows, in any order (pure)."""
    by_object: dict[str, list[str]] = defaultdict(list)
    for obj, line in rows:
        by_object[obj].append(line)
    total = hashlib.sha256()
    objects: dict[str, str] = {}
    for obj in sorted(by_object):
        lines = sorted(by_object[obj])
        part = hashlib.sha256()
        for line in lines:
            total.update(f"{obj}\t{line}\n".encode())
            part.update(f"{line}\n".encode())
        objects[obj] = part.hexdigest()[:16]
    too_many = sum(1 for name in objects if name) > MAX_OBJECTS
    return SchemaFingerprint(total.hexdigest(), None if too_many else objects)


@dataclass(frozen=True)
class TableSize:
    name: str
    """``schema.table``, quoted where needed."""
    estimated_rows: int
    """``reltuples``: -1 when never analyzed (PostgreSQL 14+)."""
    heap_bytes: int
    """``relpages`` times the block size: as of the last VACUUM or ANALYZE."""


# -- queries on an open connection (the backup's snapshot transaction uses these) -------------
def _on_pg_catalog_path(conn: psycopg.Connection[Any]) -> None:
    # Transaction-local: every name printed by pg_get_* comes out schema-qualified.
    conn.execute("select pg_catalog.set_config('search_path', 'pg_catalog', true)")


def fingerprint_in(conn: psycopg.Connection[Any]) -> SchemaFingerprint:
    """The fingerprint, read inside the caller's open transaction."""
    _on_pg_catalog_path(conn)
    rows = conn.execute(_FINGERPRINT_SQL).fetchall()
    return fingerprint_of((str(r[0]), str(r[1])) for r in rows)


def tables_in(conn: psycopg.Connection[Any]) -> list[TableSize]:
    rows = conn.execute(_TABLES_SQL).fetchall()
    return [TableSize(str(r[0]), int(r[1]), int(r[2])) for r in rows]


def count_rows_in(
    conn: psycopg.Connection[Any], tables: Iterable[TableSize], stop: Callable[[], bool] | None = None
) -> dict[str, int]:
    """Exact ``count(*)`` of each table (``ONLY``: partitions count on their own), in the
    caller's open transaction, each under a savepoint: a table that cannot be counted (locked
    beyond ``lock_timeout``) is left out and the transaction stays usable. Stops early
    (returning what it has) when ``stop()`` turns true or the count is cancelled."""
    counts: dict[str, int] = {}
    for table in tables:
        if stop is not None and stop():
            break
        query = sql.SQL("select count(*) from only {}").format(sql.SQL(table.name))
        try:
            with conn.transaction():  # a savepoint inside the caller's transaction
                row = conn.execute(query).fetchone()
        except psycopg.errors.QueryCanceled:
            break
        except psycopg.errors.LockNotAvailable:
            continue
        counts[table.name] = int(row[0]) if row else 0
    return counts


def cluster_facts_in(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Physical backups: the fingerprint, estimated row counts and the bootstrap superuser (the
    role a drill connects to the restored cluster as)."""
    with conn.transaction():
        conn.execute("select pg_catalog.set_config('lock_timeout', '10s', true)")
        print_ = fingerprint_in(conn)
        tables = tables_in(conn)
        row = conn.execute("select rolname from pg_catalog.pg_roles where oid = 10").fetchone()
    out = print_.to_details()
    if len(tables) <= MAX_OBJECTS:
        out["row_estimates"] = {t.name: t.estimated_rows for t in tables}
    if row is not None:
        out["bootstrap_superuser"] = str(row[0])
    return out


# -- checks against a (restored) database -----------------------------------------------------
def _translate(info: ConnInfo, what: str, exc: psycopg.Error) -> SourceError:
    return SourceError(f"{what} on {info.display()} failed: {error_reason(exc)}")


def server_state(info: ConnInfo) -> ServerState:
    with connect(info, what="the restored server") as conn:
        try:
            row = conn.execute(
                "select pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,"
                " pg_last_xact_replay_timestamp(),"
                " (select timeline_id from pg_control_checkpoint()),"
                " current_setting('server_version_num')::int"
            ).fetchone()
        except psycopg.Error as exc:
            raise _translate(info, "reading the recovery state", exc) from None
    assert row is not None
    return ServerState(bool(row[0]), row[1], row[2], int(row[3]), int(row[4]))


def schema_fingerprint(info: ConnInfo) -> SchemaFingerprint:
    with connect(info, what="the restored database") as conn:
        try:
            with conn.transaction():
                return fingerprint_in(conn)
        except psycopg.Error as exc:
            raise _translate(info, "reading the schema", exc) from None


def read_tables(info: ConnInfo) -> list[TableRead]:
    """Read every user table in full (every column of every row, TOAST included, by turning
    each row into text), counting its rows. One table's error does not stop the others."""
    results: list[TableRead] = []
    with connect(info, what="the restored database") as conn:
        try:
            conn.execute("set statement_timeout = 0")
            tables = tables_in(conn)
        except psycopg.Error as exc:
            raise _translate(info, "listing the tables", exc) from None
        for table in tables:
            query = sql.SQL("select count(*), coalesce(sum(octet_length(t::text)), 0) from only {} t")
            try:
                row = conn.execute(query.format(sql.SQL(table.name))).fetchone()
            except psycopg.Error as exc:
                results.append(TableRead(table.name, error=error_reason(exc)))
                continue
            assert row is not None
            results.append(TableRead(table.name, rows=int(row[0]), bytes=int(row[1])))
    return results


def check_btree_indexes(info: ConnInfo, *, create_extension: bool) -> IndexCheck:
    """``bt_index_check`` on every valid user B-tree index. The ``amcheck`` extension is used
    when installed in the database, created first with ``create_extension`` (scratch instances
    only), else the check is not available."""
    with connect(info, what="the restored database") as conn:
        try:
            conn.execute("set statement_timeout = 0")
            installed = conn.execute("select 1 from pg_extension where extname = 'amcheck'").fetchone()
            if installed is None:
                if not create_extension:
                    return IndexCheck(False, "the amcheck extension is not installed in this database")
                try:
                    conn.execute("create extension amcheck")
                except psycopg.Error as exc:
                    return IndexCheck(False, f"cannot create the amcheck extension: {error_reason(exc)}")
            schema = conn.execute(
                "select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace"
                " where e.extname = 'amcheck'"
            ).fetchone()
            assert schema is not None
            indexes = conn.execute(_BTREE_INDEXES_SQL).fetchall()
        except psycopg.Error as exc:
            raise _translate(info, "listing the indexes", exc) from None
        check = sql.SQL("select {}.bt_index_check(%s::oid::regclass)").format(sql.Identifier(schema[0]))
        result = IndexCheck(True)
        for name, oid in indexes:
            try:
                conn.execute(check, (oid,))
            except psycopg.Error as exc:
                result.failures.append((str(name), error_reason(exc)))
            result.checked += 1
    return result


def run_boolean_query(info: ConnInfo, query: str) -> tuple[bool, str]:
    """Run one user query: it passes when it returns exactly one row whose first column is
    true. Returns (passed, what it returned or the error)."""
    with connect(info, what="the restored database") as conn:
        try:
            rows = conn.execute(query.encode()).fetchall()
        except psycopg.Error as exc:
            return False, f"error: {error_reason(exc)}"
    if len(rows) != 1 or not rows[0]:
        return False, f"returned {len(rows)} rows (expected one row holding true)"
    value = rows[0][0]
    if value is True:
        return True, "true"
    return False, f"returned {value!r}"
