"""psycopg side of ``migrate batch``: one session on the database a batch job changes.

Identifiers (schema, table, key column) are only ever quoted with ``psycopg.sql.Identifier``;
key values are only ever bound as parameters, cast to the key column's type (``bigint`` for
integer keys, so the last bound max(key) + 1 fits any integer column). The user's statement is
never string-formatted: its text is kept as it is and only its ``:lo``/``:hi`` placeholders
become bound parameters.

Between batches the session is in autocommit; :meth:`BatchSession.run_batch` wraps one batch in
its own transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from contentflow_backupd.errors import SourceError, UsageError
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.postgres import connect, error_reason

KeyValue = int | str
"""A key value: a Python int for integer keys, else the value's text form (``key::text``)."""

BATCH_LOCK_CLASS = 0x6D626174  # "mbat": first half of the job's two-key advisory lock
INTEGER_TYPES = ("smallint", "integer", "bigint")
TRANSIENT_SQLSTATES = {
    "55P03": "lock_timeout",  # lock_not_available
    "40P01": "deadlock",
    "40001": "serialization_failure",
}


@dataclass(frozen=True)
class SqlTemplate:
    """The user's statement cut at its placeholders: ``chunks[0] params[0] chunks[1] ...``."""

    chunks: tuple[str, ...]
    params: tuple[str, ...]


@dataclass(frozen=True)
class BatchTable:
    database: str
    schema: str
    name: str
    key: str
    key_type: str
    """``regtype`` of the key column (``integer``, ``uuid``, ``text``, ...)."""
    key_not_null: bool
    key_indexed: bool
    """An index has the key as its first column (each batch bound is then an index lookup)."""

    @property
    def integer_key(self) -> bool:
        return self.key_type in INTEGER_TYPES

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class NextBatch:
    hi: KeyValue | None
    """Exclusive upper bound; None only for the last batch of a non-integer key."""
    final: bool


@dataclass(frozen=True)
class ServerWal:
    current_lsn: int
    archive_mode: str
    segment_size: int
    last_archived_wal: str | None
    failed_count: int
    replica_lag: int | None


class TransientBatchError(SourceError):
    """The batch was rolled back on a lock timeout, a deadlock or a serialization failure."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BatchSession:
    """A session on the target database. ``SourceError`` for anything the server refuses;
    ``UsageError`` when the command names a table, column or statement that cannot work."""

    def __init__(self, info: ConnInfo) -> None:
        params = {**info.params, "application_name": "contentflow-backupd migrate batch"}
        self._conn = connect(ConnInfo(params=params, password=info.password, setting=info.setting))
        self.server_version = self._conn.info.server_version

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> BatchSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fetch(self, query: sql.Composed | sql.SQL | str, params: Any = None, *, what: str) -> Any:
        try:
            row = self._conn.execute(query, params).fetchone()
        except psycopg.Error as exc:
            raise SourceError(f"cannot {what}: {error_reason(exc)}") from None
        return row

    # -- the job's target -----------------------------------------------------------------
    def describe(self, schema: str | None, table: str, key: str) -> BatchTable:
        """The table and its key column, or ``UsageError`` naming what does not exist."""
        qualified = f"{schema}.{table}" if schema else table
        name = (
            sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(table)])
            if schema
            else sql.Identifier(table)
        )
        row = self._fetch(
            "select c.oid, n.nspname, c.relname, c.relkind::text, current_database()"
            " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where c.oid = to_regclass(%s)",
            (name.as_string(self._conn),),
            what=f"look up table {qualified!r}",
        )
        if row is None:
            raise UsageError(
                f"table {qualified!r} does not exist in database {self._database()!r}",
                hint='names are exact and case-sensitive (Prisma\'s model Post is table "Post"); '
                "use schema.table for a table outside the search_path",
            )
        oid, nspname, relname, relkind, database = row
        if relkind not in ("r", "p"):
            raise UsageError(f"{nspname}.{relname} is not a table (relkind {relkind!r})")
        col = self._fetch(
            "select a.atttypid::regtype::text, a.attnotnull,"
            " exists (select 1 from pg_index i where i.indrelid = a.attrelid and i.indkey[0] = a.attnum)"
            " from pg_attribute a where a.attrelid = %s and a.attname = %s"
            " and a.attnum > 0 and not a.attisdropped",
            (oid, key),
            what=f"look up column {key!r}",
        )
        if col is None:
            raise UsageError(
                f"table {nspname}.{relname} has no column {key!r}",
                hint="--key names the column the batches are ordered and cut by (usually the primary key)",
            )
        return BatchTable(database, nspname, relname, key, str(col[0]), bool(col[1]), bool(col[2]))

    def _database(self) -> str:
        row = self._fetch("select current_database()", what="read the database name")
        return str(row[0])

    def _key(self, table: BatchTable) -> sql.Composable:
        return sql.Identifier(table.key)

    def _rel(self, table: BatchTable) -> sql.Composable:
        return sql.SQL(".").join([sql.Identifier(table.schema), sql.Identifier(table.name)])

    def _cast(self, table: BatchTable, param: str) -> sql.Composable:
        # The type name comes from the server (regtype output is quoted as needed), never from argv.
        type_name = sql.SQL("bigint" if table.integer_key else table.key_type)
        return sql.SQL("CAST({} AS {})").format(sql.Placeholder(param), type_name)

    def _out(self, table: BatchTable, expr: sql.Composable) -> sql.Composable:
        return sql.SQL("({})::{}").format(expr, sql.SQL("bigint" if table.integer_key else "text"))

    def _value(self, table: BatchTable, raw: Any) -> KeyValue | None:
        if raw is None:
            return None
        return int(raw) if table.integer_key else str(raw)

    def statement(self, table: BatchTable, template: SqlTemplate) -> sql.Composed:
        """The user's statement with ``:lo``/``:hi`` as parameters cast to the key's type."""
        parts: list[sql.Composable] = []
        for i, chunk in enumerate(template.chunks):
            parts.append(sql.SQL(chunk.replace("%", "%%")))
            if i < len(template.params):
                parts.append(sql.SQL("({})").format(self._cast(table, template.params[i])))
        return sql.Composed(parts)

    def check_statement(
        self, table: BatchTable, template: SqlTemplate, lo: KeyValue | None, *, lock_timeout_ms: int
    ) -> bool:
        """``EXPLAIN`` the statement (parsed and planned, not run): ``UsageError`` with the
        server's message when it does not compile (syntax, unknown names, wrong types, no
        privilege). False when planning could not take its lock within ``lock_timeout`` (planning
        an UPDATE takes the table's ROW EXCLUSIVE lock): the check is then skipped."""
        query = sql.SQL("EXPLAIN {}").format(self.statement(table, template))
        try:
            with self._conn.transaction(force_rollback=True):
                self._conn.execute("select set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
                self._conn.execute(query, {"lo": lo, "hi": None})
        except psycopg.Error as exc:
            state = exc.sqlstate or ""
            if state in TRANSIENT_SQLSTATES:
                return False
            if state[:2] in ("42", "22", "0A", "21"):
                raise UsageError(
                    f"the SQL does not compile against {table.display}: {error_reason(exc)}",
                    hint="write one INSERT, UPDATE, DELETE, MERGE or SELECT statement using :lo and :hi",
                ) from None
            raise SourceError(f"cannot check the SQL against {table.display}: {error_reason(exc)}") from None
        return True

    def try_lock(self, key: int) -> bool:
        """Session advisory lock ``(BATCH_LOCK_CLASS, key)``: one runner per job."""
        row = self._fetch(
            "select pg_try_advisory_lock(%s, %s)",
            (BATCH_LOCK_CLASS, key),
            what="take the job's advisory lock",
        )
        return bool(row[0])

    # -- bounds -----------------------------------------------------------------------------
    def first_key(self, table: BatchTable) -> KeyValue | None:
        q = sql.SQL("select {} from {}").format(
            self._out(table, sql.SQL("min({})").format(self._key(table))), self._rel(table)
        )
        return self._value(table, self._fetch(q, what=f"read min({table.key}) of {table.display}")[0])

    def count_from(self, table: BatchTable, lo: KeyValue) -> int:
        q = sql.SQL("select count(*) from {} where {} >= {}").format(
            self._rel(table), self._key(table), self._cast(table, "lo")
        )
        return int(self._fetch(q, {"lo": lo}, what=f"count the rows of {table.display}")[0])

    def next_batch(self, table: BatchTable, lo: KeyValue | None, size: int) -> NextBatch | None:
        """The batch starting at ``lo``: ``hi`` is the key of the (size+1)-th row with key >= lo
        (or the next greater key when duplicates make it equal to ``lo``). No such row: the last
        batch, ``hi`` = max(key) + 1 for integer keys, None otherwise. None: no row has key >= lo."""
        key, rel, lo_p = self._key(table), self._rel(table), self._cast(table, "lo")
        q = sql.SQL(
            "with nth as (select {key} as k from {rel} where {key} >= {lo}"
            " order by {key} offset %(n)s limit 1)"
            " select {next}, {last}, exists (select 1 from {rel} where {key} >= {lo})"
        ).format(
            key=key,
            rel=rel,
            lo=lo_p,
            next=self._out(
                table,
                sql.SQL(
                    "(select case when nth.k > {lo} then nth.k"
                    " else (select min({key}) from {rel} where {key} > {lo}) end from nth)"
                ).format(key=key, rel=rel, lo=lo_p),
            ),
            last=self._out(table, sql.SQL("(select max({}) from {})").format(key, rel)),
        )
        row = self._fetch(q, {"lo": lo, "n": size}, what=f"find the next batch of {table.display}")
        nxt, top, any_left = self._value(table, row[0]), self._value(table, row[1]), bool(row[2])
        if not any_left:
            return None
        if nxt is not None:
            return NextBatch(nxt, final=False)
        if table.integer_key:
            assert isinstance(top, int)
            if top >= 2**63 - 1:
                raise SourceError(f"{table.display}.{table.key} reaches the largest bigint: no bound past it")
            return NextBatch(top + 1, final=True)
        return NextBatch(None, final=True)

    # -- one batch --------------------------------------------------------------------------
    def run_batch(
        self,
        table: BatchTable,
        template: SqlTemplate,
        lo: KeyValue,
        hi: KeyValue | None,
        *,
        lock_timeout_ms: int,
        statement_timeout_ms: int | None,
        before_commit: Callable[[str, int], None],
    ) -> int:
        """One transaction: ``SET LOCAL`` the timeouts, take the transaction id, run the
        statement, call ``before_commit(xid, rowcount)`` (which records the batch in flight),
        COMMIT. Returns the row count. ``TransientBatchError`` after a rollback on a lock
        timeout, deadlock or serialization failure; ``SourceError`` for other failures (the
        transaction is rolled back, unless the connection broke during COMMIT: then only the
        transaction's status on the server tells). An exception from ``before_commit`` rolls back."""
        xid_fn = "pg_current_xact_id()" if self.server_version >= 130000 else "txid_current()"
        try:
            with self._conn.transaction():
                self._conn.execute("select set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
                if statement_timeout_ms is not None:
                    self._conn.execute(
                        "select set_config('statement_timeout', %s, true)", (f"{statement_timeout_ms}ms",)
                    )
                row = self._conn.execute(f"select {xid_fn}::text").fetchone()
                assert row is not None
                cur = self._conn.execute(self.statement(table, template), {"lo": lo, "hi": hi})
                rows = max(cur.rowcount, 0)
                before_commit(str(row[0]), rows)
        except psycopg.Error as exc:
            reason = error_reason(exc)
            state = exc.sqlstate or ""
            if state in TRANSIENT_SQLSTATES:
                raise TransientBatchError(
                    f"batch from {lo!r} rolled back: {reason}", reason=TRANSIENT_SQLSTATES[state]
                ) from None
            raise SourceError(f"batch from {lo!r} to {hi!r} of {table.display} failed: {reason}") from None
        return rows

    def xact_status(self, xid: str) -> Literal["committed", "aborted", "in progress", "future", "unknown"]:
        """``pg_xact_status`` (``txid_status`` before 13) of a transaction id from this server."""
        query = (
            "select pg_xact_status(%s::xid8)"
            if self.server_version >= 130000
            else "select txid_status(%s::bigint)"
        )
        try:
            row = self._conn.execute(query, (xid,)).fetchone()
        except pgerrors.InvalidParameterValue as exc:
            if "in the future" in str(exc):
                return "future"
            raise SourceError(f"cannot ask the status of transaction {xid}: {error_reason(exc)}") from None
        except psycopg.Error as exc:
            raise SourceError(f"cannot ask the status of transaction {xid}: {error_reason(exc)}") from None
        status = row[0] if row else None
        if status in ("committed", "aborted", "in progress"):
            return status  # type: ignore[no-any-return]
        return "unknown"

    def wal(self) -> ServerWal:
        """Where WAL is written, what the archiver reports, and the largest replica lag."""
        row = self._fetch(
            "select pg_current_wal_lsn()::text, current_setting('archive_mode'),"
            " (select setting::bigint from pg_settings where name = 'wal_segment_size'),"
            " a.last_archived_wal, a.failed_count,"
            " (select max(pg_wal_lsn_diff(pg_current_wal_lsn(),"
            "   coalesce(r.replay_lsn, r.flush_lsn, r.write_lsn, r.sent_lsn)))::bigint"
            "  from pg_stat_replication r)"
            " from pg_stat_archiver a",
            what="read the WAL position and lag (is this a primary?)",
        )
        hi, lo = str(row[0]).split("/")
        return ServerWal(
            current_lsn=(int(hi, 16) << 32) | int(lo, 16),
            archive_mode=str(row[1]),
            segment_size=int(row[2]),
            last_archived_wal=row[3],
            failed_count=int(row[4]),
            replica_lag=None if row[5] is None else max(0, int(row[5])),
        )
