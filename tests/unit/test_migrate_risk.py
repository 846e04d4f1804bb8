"""Risky statements of pending migrations (pglast), and the pure part of ``migrate check``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from contentflow_backupd.migrate.check import CheckReport, compare_history
from contentflow_backupd.migrate.prisma import MigrationDir, MigrationFile, prisma_checksum
from contentflow_backupd.migrate.risk import (
    KINDS,
    Finding,
    RiskyStatement,
    analyze_migration,
    assess,
    quote_ident,
    relation_names,
)
from contentflow_backupd.source.prisma_db import PrismaMigrationRow, Relation

MiB = 1024 * 1024


def kinds(sql: str) -> list[tuple[str, tuple[str | None, str] | None]]:
    a = analyze_migration("m", sql)
    assert a.problems == ()
    return [(f.kind, f.target) for f in a.findings]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ('DROP TABLE "User";', [("drop_table", (None, "User"))]),
        ("DROP TABLE IF EXISTS a, s.b CASCADE;", [("drop_table", (None, "a")), ("drop_table", ("s", "b"))]),
        ('ALTER TABLE "User" DROP COLUMN "bio";', [("drop_column", (None, "User"))]),
        ("TRUNCATE a, s.b;", [("truncate", (None, "a")), ("truncate", ("s", "b"))]),
        ("DROP SCHEMA old CASCADE;", [("drop_schema", None)]),
        ('DROP TYPE "Role" CASCADE;', [("drop_cascade", None)]),
        ('DROP TYPE "Role";', []),
        ("ALTER TABLE t ALTER COLUMN a TYPE bigint;", [("alter_column_type", (None, "t"))]),
        (
            "ALTER TABLE t ALTER COLUMN a SET DATA TYPE text USING a::text;",
            [("alter_column_type", (None, "t"))],
        ),
        (
            'ALTER TABLE "public"."User" ALTER COLUMN "name" SET NOT NULL;',
            [("set_not_null", ("public", "User"))],
        ),
        ('CREATE INDEX "i" ON "Post"("a");', [("create_index", (None, "Post"))]),
        ('CREATE UNIQUE INDEX "i" ON "Post"("a");', [("create_index", (None, "Post"))]),
        ("CREATE INDEX CONCURRENTLY i ON t (a);", []),
        ("DROP INDEX s.i;", [("drop_index", ("s", "i"))]),
        ("DROP INDEX CONCURRENTLY i;", []),
        ("ALTER TABLE t RENAME TO u;", [("rename", (None, "t"))]),
        ('ALTER TABLE "User" RENAME COLUMN "a" TO "b";', [("rename", (None, "User"))]),
        ("ALTER SCHEMA s RENAME TO t;", [("rename", None)]),
        ("ALTER INDEX i RENAME TO j;", []),
        ("DELETE FROM t;", [("delete_all", (None, "t"))]),
        ("DELETE FROM t WHERE id < 10;", []),
        ("UPDATE s.t SET a = 1;", [("update_all", ("s", "t"))]),
        ("UPDATE t SET a = 1 WHERE id = 2;", []),
        ("ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid();", [("add_column_rewrite", (None, "t"))]),
        ("ALTER TABLE t ADD COLUMN n bigserial;", [("add_column_rewrite", (None, "t"))]),
        (
            "ALTER TABLE t ADD COLUMN n int GENERATED ALWAYS AS IDENTITY;",
            [("add_column_rewrite", (None, "t"))],
        ),
        (
            "ALTER TABLE t ADD COLUMN d int GENERATED ALWAYS AS (a * 2) STORED;",
            [("add_column_rewrite", (None, "t"))],
        ),
        ("ALTER TABLE t ADD COLUMN c timestamptz NOT NULL DEFAULT now();", []),
        ("ALTER TABLE t ADD COLUMN c text DEFAULT 'x';", []),
        (
            'ALTER TABLE "Post" ADD CONSTRAINT "f" FOREIGN KEY ("u") REFERENCES "User"("id");',
            [("add_foreign_key", (None, "Post"))],
        ),
        ("ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES v (id) NOT VALID;", []),
        ("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0);", [("add_check", (None, "t"))]),
        ("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID;", []),
        ("ALTER TABLE t VALIDATE CONSTRAINT c;", []),
        ("ALTER TABLE t ADD CONSTRAINT u UNIQUE (a);", [("add_unique", (None, "t"))]),
        ("ALTER TABLE t ADD PRIMARY KEY (id);", [("add_unique", (None, "t"))]),
        ("ALTER TABLE t ADD CONSTRAINT p PRIMARY KEY USING INDEX i;", []),
        ("ALTER TABLE t SET TABLESPACE x;", [("rewrite_table", (None, "t"))]),
        ("ALTER TABLE t SET UNLOGGED;", [("rewrite_table", (None, "t"))]),
        ("VACUUM FULL t;", [("vacuum_full", (None, "t"))]),
        ("VACUUM (FULL, ANALYZE) a, b;", [("vacuum_full", (None, "a")), ("vacuum_full", (None, "b"))]),
        ("VACUUM (FULL false) t;", []),
        ("VACUUM FULL;", [("vacuum_full", None)]),
        ("VACUUM t;", []),
        ("CLUSTER t USING i;", [("cluster", (None, "t"))]),
        ("CLUSTER;", [("cluster", None)]),
        ("REFRESH MATERIALIZED VIEW mv;", [("refresh_matview", (None, "mv"))]),
        ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv;", []),
        ('CREATE TABLE "User" (id serial PRIMARY KEY, name text NOT NULL);', []),
        ('ALTER TABLE "User" ADD COLUMN "bio" TEXT;', []),
        ("INSERT INTO t (a) VALUES (1);", []),
        ("ALTER TABLE t ALTER COLUMN a SET DEFAULT 1, ALTER COLUMN b DROP NOT NULL;", []),
        ("CREATE TYPE r AS ENUM ('a'); ALTER TYPE r ADD VALUE 'b';", []),
    ],
)
def test_statement_kinds(sql: str, expected: list[tuple[str, tuple[str | None, str] | None]]) -> None:
    assert kinds(sql) == expected
    assert all(k in KINDS for k, _ in expected)


def test_several_commands_of_one_alter_table_each_count() -> None:
    sql = 'ALTER TABLE "User" DROP COLUMN "a",\n  ALTER COLUMN "b" SET NOT NULL,\n  ADD COLUMN "c" INTEGER;'
    a = analyze_migration("20240101000000_x", sql)
    assert [f.kind for f in a.findings] == ["drop_column", "set_not_null"]
    assert {f.statement for f in a.findings} == {
        'ALTER TABLE "User" DROP COLUMN "a", ALTER COLUMN "b" SET NOT NULL, ADD COLUMN "c" INTEGER'
    }
    assert {f.migration for f in a.findings} == {"20240101000000_x"}


def test_statement_text_skips_comments_and_is_cut_to_about_200_chars() -> None:
    cols = ", ".join(f"DROP COLUMN c{i}" for i in range(60))
    sql = f"-- AlterTable\nSELECT 1;\n\n-- Drop them all\nALTER TABLE wide {cols};\n"
    (f, *_rest) = analyze_migration("m", sql).findings
    assert f.statement.startswith("ALTER TABLE wide DROP COLUMN c0")
    assert len(f.statement) == 200 and f.statement.endswith("...")


def test_statements_inside_a_do_block_are_analysed() -> None:
    sql = """
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'old') THEN
    DROP TABLE old;
  END IF;
  ALTER TABLE "User" ALTER COLUMN email SET NOT NULL;
  UPDATE t SET a = 1 WHERE id = 1;
END $$;
"""
    a = analyze_migration("m", sql)
    assert [(f.kind, f.target, f.statement) for f in a.findings] == [
        ("drop_table", (None, "old"), "DROP TABLE old"),
        ("set_not_null", (None, "User"), 'ALTER TABLE "User" ALTER COLUMN email SET NOT NULL'),
    ]


@pytest.mark.parametrize(
    "sql",
    [
        "DO $$ BEGIN EXECUTE 'DROP TABLE ' || 'x'; END $$;",
        "DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'select 1' LOOP END LOOP; END $$;",
        "DO LANGUAGE plperl $$ 1; $$;",
    ],
)
def test_dynamic_sql_cannot_be_analysed_and_says_so(sql: str) -> None:
    assert [f.kind for f in analyze_migration("m", sql).findings] == ["dynamic_sql"]


def test_unparsable_sql_is_a_problem_with_file_line_and_column() -> None:
    a = analyze_migration("m", "SELECT 1;\nALTER TABLE x DROP COLUMN;\n", source="dir/m/migration.sql")
    assert a.findings == ()
    (problem,) = a.problems
    assert problem.startswith("dir/m/migration.sql: ")
    assert "line 2, column 26" in problem and 'syntax error at or near ";"' in problem


def test_unparsable_do_block_is_a_problem() -> None:
    a = analyze_migration("m", "DO $$ BEGIN ALTER TABLE; END $$;", source="f.sql")
    assert a.findings == () and len(a.problems) == 1 and a.problems[0].startswith("f.sql: ")


def _rel(schema: str, name: str, size: int, table: tuple[str, str] | None = None) -> Relation:
    ts, tn = table or (schema, name)
    return Relation(
        schema, name, "r" if table is None else "i", size, ts, tn, size if table is None else 7 * MiB
    )


def test_assess_sizes_thresholds_and_names() -> None:
    sql = """
ALTER TABLE "User" DROP COLUMN bio;
CREATE INDEX a ON "User" (email);
CREATE INDEX b ON small (x);
CREATE INDEX c ON brand_new (x);
ALTER TABLE brand_new DROP COLUMN y;
DROP INDEX "User_idx";
VACUUM FULL;
DROP SCHEMA s;
"""
    findings = analyze_migration("m", sql).findings
    assert relation_names(findings) == [
        (None, "User"),
        (None, "small"),
        (None, "brand_new"),
        (None, "User_idx"),
    ]
    found = {
        (None, "User"): _rel("public", "User", 5 * MiB),
        (None, "small"): _rel("app", "small", 1 * MiB - 1),
        (None, "User_idx"): _rel("public", "User_idx", 10, table=("public", "User")),
    }
    risky = assess(findings, found, current_schema="public", large_table_bytes=1 * MiB)
    assert [(r.kind, r.table, r.table_bytes) for r in risky] == [
        ("drop_column", 'public."User"', 5 * MiB),
        ("create_index", 'public."User"', 5 * MiB),
        # CREATE INDEX on small (below the threshold) and on brand_new (not there yet) are fine
        ("drop_column", "public.brand_new", None),
        ("drop_index", 'public."User"', 7 * MiB),  # the index's table and its size
        ("vacuum_full", None, None),
        ("drop_schema", None, None),
    ]
    assert risky[0] == RiskyStatement(
        "m", 'ALTER TABLE "User" DROP COLUMN bio', "drop_column", 'public."User"', 5 * MiB
    )
    assert risky[0].to_json() == {
        "migration": "m",
        "statement": 'ALTER TABLE "User" DROP COLUMN bio',
        "kind": "drop_column",
        "table": 'public."User"',
        "table_bytes": 5 * MiB,
    }
    none_large = assess(findings, found, current_schema="public", large_table_bytes=100 * MiB)
    assert "create_index" not in [r.kind for r in none_large]


def test_assess_without_a_current_schema_leaves_the_name_bare() -> None:
    f = Finding("m", "DROP TABLE x", "drop_table", (None, "X"))
    assert assess([f], {}, current_schema=None, large_table_bytes=0)[0].table == '"X"'


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("user_1", "user_1"),
        ("User", '"User"'),
        ("select", '"select"'),
        ("a b", '"a b"'),
        ('a"b', '"a""b"'),
        ("name", "name"),
        ("_x$", "_x$"),
        ("1a", '"1a"'),
    ],
)
def test_quote_ident_like_postgres(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted


# --- compare_history and the report -------------------------------------------------------------

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _file(name: str, sql: str = "SELECT 1;\n") -> MigrationFile:
    return MigrationFile(name, Path(name) / "migration.sql", sql, prisma_checksum(sql.encode()), None)


def _row(
    name: str, checksum: str, *, finished: bool = True, rolled_back: bool = False, n: int = 0
) -> PrismaMigrationRow:
    return PrismaMigrationRow(
        id=f"{name}-{n}",
        checksum=checksum,
        finished_at=T0 if finished else None,
        migration_name=name,
        logs=None,
        rolled_back_at=T0 if rolled_back else None,
        started_at=T0,
        applied_steps_count=1 if finished else 0,
    )


def test_compare_history_classifies_every_case() -> None:
    a, b, c, d, e = (_file(f"2024010100000{i}_{n}") for i, n in enumerate("abcde"))
    edited = MigrationFile(b.name, b.path, "SELECT 2;\n", prisma_checksum(b"SELECT 2;\n"), None)
    directory = MigrationDir(Path("m"), (a, edited, c, d, e), ())
    rows = [
        _row(a.name, a.checksum),
        _row(b.name, b.checksum),  # applied, then edited on disk
        _row(c.name, c.checksum, finished=False),  # failed
        _row(d.name, d.checksum, rolled_back=True),  # rolled back: pending again
        _row("20231231000000_gone", "x" * 64),  # applied, folder deleted
        _row(e.name, "0" * 64, finished=False, rolled_back=True, n=1),
    ]
    h = compare_history(directory, rows)
    assert h.applied == ["20231231000000_gone", a.name, b.name]
    assert [m.name for m in h.pending] == [c.name, d.name, e.name]
    assert h.modified == [b.name]
    assert h.missing == ["20231231000000_gone"]
    assert h.failed == [c.name]


def test_compare_history_uses_the_newest_applied_row_and_prismas_line_endings() -> None:
    a = _file("20240101000000_a", "SELECT 1;\r\n")
    rows = [
        _row(a.name, "f" * 64, n=0),
        _row(a.name, prisma_checksum(b"SELECT 1;\n"), n=1),  # an LF checkout recorded it
    ]
    h = compare_history(MigrationDir(Path("m"), (a,), ()), rows)
    assert h.applied == [a.name] and h.modified == [] and h.pending == []


def _report(**kw: object) -> CheckReport:
    base: dict[str, object] = {
        "applied": ["20240101000000_a"],
        "pending": [],
        "modified": [],
        "missing": [],
        "failed": [],
        "risky": [],
        "problems": [],
        "migrations": MigrationDir(Path("prisma/migrations"), (), ()),
    }
    base.update(kw)
    return CheckReport(**base)  # type: ignore[arg-type]


RISKY = RiskyStatement("20240102000000_b", "ALTER TABLE t DROP COLUMN c", "drop_column", "public.t", 3 * MiB)


@pytest.mark.parametrize(
    ("kw", "safe", "safe_allowing_risky"),
    [
        ({}, True, True),
        ({"pending": ["20240102000000_b"]}, True, True),
        ({"risky": [RISKY]}, False, True),
        ({"modified": ["x"]}, False, False),
        ({"missing": ["x"]}, False, False),
        ({"failed": ["x"]}, False, False),
        ({"problems": ["x"]}, False, False),
        ({"risky": [RISKY], "failed": ["x"]}, False, False),
    ],
)
def test_safe_and_safe_with(kw: dict[str, object], safe: bool, safe_allowing_risky: bool) -> None:
    r = _report(**kw)
    assert r.safe is safe
    assert r.safe_with(allow_risky=True) is safe_allowing_risky


def test_json_keys_and_render() -> None:
    r = _report(pending=["20240102000000_b"], risky=[RISKY], problems=["prisma/migrations/x: bad"])
    assert list(r.to_json()) == ["applied", "pending", "modified", "missing", "failed", "risky", "problems"]
    assert r.to_json()["risky"] == [RISKY.to_json()]
    text = r.render()
    assert "1 applied, 1 pending" in text
    assert "drop_column on public.t (3.0 MiB)" in text and "ALTER TABLE t DROP COLUMN c" in text
    assert "prisma/migrations/x: bad" in text
    assert text.splitlines()[-1] == "NOT safe to deploy"
    assert _report().render().splitlines()[-1] == "safe to deploy"
