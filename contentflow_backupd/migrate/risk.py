"""Which statements of a pending migration destroy data or hold heavy locks for long (pglast).

Two steps, so the parsing stays pure and testable without a server:

1. :func:`analyze_migration` parses a migration's SQL with PostgreSQL's own parser (libpg_query
   through pglast, the only module that imports it) and returns :class:`Finding` s: the kind, the
   statement and the relation it targets. SQL it cannot parse is a problem (a message naming the
   file, line and column), never an exception. Static statements inside ``DO`` blocks (PL/pgSQL)
   are analysed too; ``EXECUTE`` of dynamic SQL there is a ``dynamic_sql`` finding.
2. :func:`assess` turns findings into :class:`RiskyStatement` s with the schema-qualified table and
   its current size (from ``source.prisma_db.relation_sizes``). Kinds in :data:`KINDS` marked
   *large only* are kept only when their table exists and is at least ``large_table_bytes``
   (or when they name no table at all, such as a database-wide ``VACUUM FULL``); every other kind
   is always kept. The kinds and their rules are the table in docs/migrations.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pglast
from pglast import ast, enums
from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS
from pglast.parser import ParseError
from pglast.visitors import Visitor

if TYPE_CHECKING:
    from contentflow_backupd.source.prisma_db import Relation

__all__ = [
    "KINDS",
    "Analysis",
    "Finding",
    "RiskyStatement",
    "analyze_migration",
    "assess",
    "quote_ident",
    "relation_names",
]

STATEMENT_CHARS = 200

RelName = tuple[str | None, str]
"""``(schema or None, name)`` as PostgreSQL stores them (same as ``source.prisma_db.RelName``)."""


@dataclass(frozen=True)
class Kind:
    description: str
    large_only: bool


KINDS: dict[str, Kind] = {
    "drop_table": Kind("DROP TABLE: the table and its data are gone", False),
    "drop_column": Kind("ALTER TABLE ... DROP COLUMN: the column's data is gone", False),
    "truncate": Kind("TRUNCATE: every row is deleted", False),
    "drop_schema": Kind("DROP SCHEMA: every object in it (CASCADE) is gone", False),
    "drop_cascade": Kind(
        "DROP ... CASCADE of a type, domain, function...: may drop columns and tables", False
    ),
    "delete_all": Kind("DELETE without WHERE: every row is deleted", False),
    "update_all": Kind("UPDATE without WHERE: every row is rewritten, under row locks", False),
    "alter_column_type": Kind("ALTER COLUMN ... TYPE: rewrites the table under ACCESS EXCLUSIVE", False),
    "set_not_null": Kind("SET NOT NULL: scans the table under ACCESS EXCLUSIVE", False),
    "rename": Kind("RENAME of a table, column or schema: running application code breaks", False),
    "dynamic_sql": Kind("EXECUTE in a DO block: dynamic SQL cannot be analysed", False),
    "create_index": Kind("CREATE INDEX without CONCURRENTLY: blocks writes while it builds", True),
    "drop_index": Kind("DROP INDEX without CONCURRENTLY: ACCESS EXCLUSIVE on the table", True),
    "add_unique": Kind("ADD UNIQUE / PRIMARY KEY / EXCLUDE: builds an index under ACCESS EXCLUSIVE", True),
    "add_foreign_key": Kind("ADD FOREIGN KEY without NOT VALID: scans the table while locked", True),
    "add_check": Kind("ADD CHECK without NOT VALID: scans the table under ACCESS EXCLUSIVE", True),
    "add_column_rewrite": Kind(
        "ADD COLUMN with a volatile default, serial, identity or stored generated column: rewrites "
        "the table under ACCESS EXCLUSIVE",
        True,
    ),
    "rewrite_table": Kind("SET TABLESPACE / SET LOGGED / SET UNLOGGED: rewrites the table", True),
    "vacuum_full": Kind("VACUUM FULL: rewrites the table under ACCESS EXCLUSIVE", True),
    "cluster": Kind("CLUSTER: rewrites the table under ACCESS EXCLUSIVE", True),
    "refresh_matview": Kind("REFRESH MATERIALIZED VIEW without CONCURRENTLY: blocks its readers", True),
}

VOLATILE_FUNCTIONS = frozenset(
    {
        "random",
        "random_normal",
        "gen_random_uuid",
        "uuidv4",
        "uuidv7",
        "uuid_generate_v1",
        "uuid_generate_v1mc",
        "uuid_generate_v4",
        "clock_timestamp",
        "timeofday",
        "nextval",
        "txid_current",
    }
)
"""Functions whose default forces a table rewrite on ADD COLUMN (PostgreSQL 11+ stores a
non-volatile default without rewriting). User-defined volatile functions are not known here."""

SERIAL_TYPES = frozenset({"smallserial", "serial2", "serial", "serial4", "bigserial", "serial8"})


@dataclass(frozen=True)
class Finding:
    """A statement of a kind in :data:`KINDS`, before sizes are known."""

    migration: str
    statement: str
    kind: str
    target: RelName | None
    """The relation it acts on (an index for ``drop_index``); None when it names none."""


@dataclass(frozen=True)
class Analysis:
    findings: tuple[Finding, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True)
class RiskyStatement:
    """One entry of ``migrate check``'s ``risky`` list."""

    migration: str
    statement: str
    """The statement text, whitespace collapsed, at most ~200 characters."""
    kind: str
    table: str | None
    """Schema-qualified (quoted where PostgreSQL needs it), or None when the statement has none."""
    table_bytes: int | None
    """The table's current total size; None when it does not exist (yet)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "statement": self.statement,
            "kind": self.kind,
            "table": self.table,
            "table_bytes": self.table_bytes,
        }


# --- Parsing -----------------------------------------------------------------------------------


def analyze_migration(migration: str, sql: str, *, source: str | None = None) -> Analysis:
    """Parse ``sql`` (the migration named ``migration``; ``source`` names its file in messages)
    and find its risky statements, in order. Never raises for bad SQL: that is a problem."""
    where = source or migration
    try:
        stmts = pglast.parse_sql(sql)
    except ParseError as exc:
        return Analysis((), (_parse_problem(where, sql, exc),))
    findings: list[Finding] = []
    problems: list[str] = []
    for raw in stmts:
        start = raw.stmt_location or 0
        text = sql[start : start + raw.stmt_len] if raw.stmt_len else sql[start:]
        if raw.stmt is None:
            continue
        for kind, target, shown in _classify(raw.stmt, text, where, problems):
            findings.append(Finding(migration, _snippet(shown), kind, target))
    return Analysis(tuple(findings), tuple(problems))


def _parse_problem(where: str, sql: str, exc: ParseError) -> str:
    message = str(exc.args[0]) if exc.args else str(exc)
    pos = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
    at = ""
    if pos is not None:
        line = sql.count("\n", 0, pos) + 1
        col = pos - (sql.rfind("\n", 0, pos) + 1) + 1
        at = f" at line {line}, column {col}"
    return (
        f"{where}: PostgreSQL's parser rejects the SQL{at}: {message}; fix the statement "
        "(PostgreSQL would refuse it too)"
    )


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= STATEMENT_CHARS else flat[: STATEMENT_CHARS - 3] + "..."


Hit = tuple[str, RelName | None, str]


def _classify(node: ast.Node, text: str, where: str, problems: list[str]) -> Iterator[Hit]:
    """Yield ``(kind, target, statement text)`` for one parsed statement."""
    if isinstance(node, ast.DropStmt):
        yield from ((k, t, text) for k, t in _drop(node))
    elif isinstance(node, ast.TruncateStmt):
        for rv in node.relations or ():
            yield "truncate", _rangevar(rv), text
    elif isinstance(node, ast.AlterTableStmt):
        if node.objtype in (enums.ObjectType.OBJECT_TABLE, enums.ObjectType.OBJECT_MATVIEW):
            target = _rangevar(node.relation)
            for cmd in node.cmds or ():
                for kind in _alter_table_cmd(cmd):
                    yield kind, target, text
    elif isinstance(node, ast.RenameStmt):
        yield from ((k, t, text) for k, t in _rename(node))
    elif isinstance(node, ast.IndexStmt):
        if not node.concurrent:
            yield "create_index", _rangevar(node.relation), text
    elif isinstance(node, ast.DeleteStmt):
        if node.whereClause is None:
            yield "delete_all", _rangevar(node.relation), text
    elif isinstance(node, ast.UpdateStmt):
        if node.whereClause is None:
            yield "update_all", _rangevar(node.relation), text
    elif isinstance(node, ast.VacuumStmt):
        if node.is_vacuumcmd and any(_flag(o, "full") for o in node.options or ()):
            rels: list[RelName | None] = [
                _rangevar(r.relation) for r in node.rels or () if isinstance(r, ast.VacuumRelation)
            ]
            yield from (("vacuum_full", t, text) for t in (rels or [None]))
    elif isinstance(node, ast.ClusterStmt):
        yield "cluster", _rangevar(node.relation) if node.relation else None, text
    elif isinstance(node, ast.RefreshMatViewStmt):
        if not node.concurrent:
            yield "refresh_matview", _rangevar(node.relation), text
    elif isinstance(node, ast.DoStmt):
        yield from _do_block(node, text, where, problems)


def _drop(node: ast.DropStmt) -> Iterator[tuple[str, RelName | None]]:
    objects = node.objects or ()
    kind = node.removeType
    if kind == enums.ObjectType.OBJECT_TABLE:
        for obj in objects:
            yield "drop_table", _qualified(obj)
    elif kind == enums.ObjectType.OBJECT_SCHEMA:
        for _obj in objects:
            yield "drop_schema", None
    elif kind == enums.ObjectType.OBJECT_INDEX:
        if not node.concurrent:
            for obj in objects:
                yield "drop_index", _qualified(obj)
    elif node.behavior == enums.DropBehavior.DROP_CASCADE:
        yield "drop_cascade", None


def _alter_table_cmd(cmd: Any) -> Iterator[str]:
    if not isinstance(cmd, ast.AlterTableCmd):
        return
    t = enums.AlterTableType
    sub = cmd.subtype
    if sub == t.AT_DropColumn:
        yield "drop_column"
    elif sub == t.AT_AlterColumnType:
        yield "alter_column_type"
    elif sub == t.AT_SetNotNull:
        yield "set_not_null"
    elif sub in (t.AT_SetTableSpace, t.AT_SetLogged, t.AT_SetUnLogged):
        yield "rewrite_table"
    elif sub == t.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
        if _column_rewrites(cmd.def_):
            yield "add_column_rewrite"
    elif sub == t.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        kind = _constraint(cmd.def_)
        if kind:
            yield kind


def _constraint(con: ast.Constraint) -> str | None:
    c = enums.ConstrType
    if con.contype == c.CONSTR_FOREIGN and not con.skip_validation:
        return "add_foreign_key"
    if con.contype == c.CONSTR_CHECK and not con.skip_validation:
        return "add_check"
    if con.contype in (c.CONSTR_UNIQUE, c.CONSTR_PRIMARY, c.CONSTR_EXCLUSION) and not con.indexname:
        return "add_unique"
    return None


def _column_rewrites(col: ast.ColumnDef) -> bool:
    names = [n.sval for n in (col.typeName.names or ()) if isinstance(n, ast.String)] if col.typeName else []
    if names and names[-1] in SERIAL_TYPES:
        return True
    for con in col.constraints or ():
        if not isinstance(con, ast.Constraint):
            continue
        if con.contype == enums.ConstrType.CONSTR_IDENTITY:
            return True
        if con.contype == enums.ConstrType.CONSTR_GENERATED and con.generated_kind != "v":
            return True  # stored (PostgreSQL 18 adds virtual columns, which are not stored)
        default = con.raw_expr if con.contype == enums.ConstrType.CONSTR_DEFAULT else None
        if default is not None and _calls_volatile(default):
            return True
    return False


def _calls_volatile(expr: ast.Node) -> bool:
    for _anc, node in Visitor().iterate(expr):
        if isinstance(node, ast.FuncCall) and node.funcname:
            last = node.funcname[-1]
            if isinstance(last, ast.String) and last.sval in VOLATILE_FUNCTIONS:
                return True
    return False


def _rename(node: ast.RenameStmt) -> Iterator[tuple[str, RelName | None]]:
    o = enums.ObjectType
    column = node.renameType == o.OBJECT_COLUMN and node.relationType in (o.OBJECT_TABLE, o.OBJECT_MATVIEW)
    if node.renameType == o.OBJECT_TABLE or column:
        yield "rename", _rangevar(node.relation)
    elif node.renameType == o.OBJECT_SCHEMA:
        yield "rename", None


def _flag(option: Any, name: str) -> bool:
    """A VACUUM option given and not switched off (``FULL``, ``(FULL)``, ``(FULL true)``)."""
    if not isinstance(option, ast.DefElem) or option.defname != name:
        return False
    arg = option.arg
    if isinstance(arg, ast.String):
        return (arg.sval or "").lower() not in ("false", "off", "0", "no")
    if isinstance(arg, ast.Integer):
        return arg.ival != 0
    if isinstance(arg, ast.Boolean):
        return bool(arg.boolval)
    return True


def _do_block(node: ast.DoStmt, text: str, where: str, problems: list[str]) -> Iterator[Hit]:
    language = "plpgsql"
    for arg in node.args or ():
        if isinstance(arg, ast.DefElem) and arg.defname == "language" and isinstance(arg.arg, ast.String):
            language = (arg.arg.sval or "").lower()
    if language != "plpgsql":
        yield "dynamic_sql", None, text
        return
    try:
        tree = pglast.parse_plpgsql(text)
    except ParseError as exc:
        problems.append(_parse_problem(where, text, exc).replace("the SQL", "the DO block"))
        return
    for key, value in _walk_json(tree):
        if key in ("PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"):
            yield "dynamic_sql", None, text
        elif key == "PLpgSQL_stmt_execsql":
            query = value.get("sqlstmt", {}).get("PLpgSQL_expr", {}).get("query")
            if not isinstance(query, str):
                continue
            try:
                inner = pglast.parse_sql(query)
            except ParseError:
                yield "dynamic_sql", None, text  # PL/pgSQL variables can make it unparsable alone
                continue
            for raw in inner:
                if raw.stmt is not None:
                    yield from _classify(raw.stmt, query, where, problems)


def _walk_json(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from _walk_json(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_json(v)


def _rangevar(rv: Any) -> RelName:
    assert isinstance(rv, ast.RangeVar) and rv.relname is not None
    return (rv.schemaname or None, rv.relname)


def _qualified(obj: Any) -> RelName:
    """A DROP object name: a tuple of String nodes, ``[[catalog.]schema.]name``."""
    parts = [p.sval or "" for p in (obj if isinstance(obj, tuple) else (obj,)) if isinstance(p, ast.String)]
    return (parts[-2] if len(parts) >= 2 else None, parts[-1])


# --- Sizes -------------------------------------------------------------------------------------


def relation_names(findings: Iterable[Finding]) -> list[RelName]:
    """The relations whose sizes :func:`assess` needs, in first-seen order."""
    return list(dict.fromkeys(f.target for f in findings if f.target is not None))


def assess(
    findings: Iterable[Finding],
    found: Mapping[RelName, Relation],
    *,
    current_schema: str | None,
    large_table_bytes: int,
) -> list[RiskyStatement]:
    """Findings with their tables and sizes; large-only kinds below the threshold, or on a table
    that does not exist yet, are dropped (module docstring). ``found`` maps the names that exist."""
    out: list[RiskyStatement] = []
    for f in findings:
        table: str | None = None
        size: int | None = None
        if f.target is not None:
            rel = found.get(f.target)
            if rel is not None:
                table, size = (
                    quote_ident(rel.table_schema) + "." + quote_ident(rel.table_name),
                    rel.table_bytes,
                )
            else:
                schema = f.target[0] or current_schema
                name = quote_ident(f.target[1])
                table = f"{quote_ident(schema)}.{name}" if schema else name
        if KINDS[f.kind].large_only and f.target is not None and (size is None or size < large_table_bytes):
            continue
        out.append(RiskyStatement(f.migration, f.statement, f.kind, table, size))
    return out


_PLAIN_IDENT = re.compile(r"\A[a-z_][a-z0-9_$]*\Z")
_QUOTED_KEYWORDS = (
    frozenset(RESERVED_KEYWORDS) | frozenset(COL_NAME_KEYWORDS) | frozenset(TYPE_FUNC_NAME_KEYWORDS)
)


def quote_ident(name: str) -> str:
    """PostgreSQL's ``quote_ident``: bare when it can be, double-quoted otherwise."""
    if _PLAIN_IDENT.match(name) and name not in _QUOTED_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'
