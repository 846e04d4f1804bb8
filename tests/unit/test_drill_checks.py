"""The pure parts of restore drills: the SQL splitter for the user's checks, the comparisons of
schema fingerprints and row counts, the recovery check, and the drill's JSON result."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentflow_backupd.ops.drill.checks import (
    CheckLog,
    CheckResult,
    amcheck_result,
    check_reads,
    compare_counts,
    compare_schema,
    not_run,
    passed,
    run_checks,
)
from contentflow_backupd.ops.drill.physical import recovery_check
from contentflow_backupd.ops.drill.run import DrillResult
from contentflow_backupd.ops.restore.target import RecoveryTarget
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.drivers import PgDatabaseFacts
from contentflow_backupd.source.facts import MAX_OBJECTS, IndexCheck, ServerState, TableRead, fingerprint_of
from contentflow_backupd.sqltext import split_sql


# -- the user's checks file ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("-- only a comment\n", []),
        ("select true", [(1, "select true")]),
        ("select true;\nselect 1 = 1;", [(1, "select true"), (2, "select 1 = 1")]),
        (";;  ;\nselect true;;", [(2, "select true")]),
        ("select ';' = ';';", [(1, "select ';' = ';'")]),
        ("select 'it''s;' <> '';", [(1, "select 'it''s;' <> ''")]),
        ("select E'a\\';b' is not null;", [(1, "select E'a\\';b' is not null")]),
        ('select 1 as "a;b";', [(1, 'select 1 as "a;b"')]),
        ("select $$;$$ = ';';", [(1, "select $$;$$ = ';'")]),
        ("select $tag$ ; $x$ ; $tag$ is not null;", [(1, "select $tag$ ; $x$ ; $tag$ is not null")]),
        ("select $1;", [(1, "select $1")]),
        ("select a$b from t; select 2", [(1, "select a$b from t"), (1, "select 2")]),
        ("-- a; b\nselect true; -- c; d\n", [(2, "select true")]),
        ("/* x; /* nested; */ y; */ select true;", [(1, "select true")]),
        ("select /* ; */ true;", [(1, "select /* ; */ true")]),
        ("\n\n  select\n  true\n;\n\nselect false", [(3, "select\n  true"), (7, "select false")]),
    ],
)
def test_split_sql(text: str, expected: list[tuple[int, str]]) -> None:
    assert split_sql(text) == expected


@given(st.lists(st.sampled_from(["select 1", "select ';'", "select $$;$$", "select 'a''b'"]), max_size=6))
def test_split_sql_round_trips_joined_statements(statements: list[str]) -> None:
    text = ";\n".join(statements)
    assert [s for _, s in split_sql(text)] == statements


# -- schema ----------------------------------------------------------------------------------
ROWS = [
    ("", "extension plpgsql"),
    ("", "schema public"),
    ("public.a", "relation r"),
    ("public.a", "column 1 id integer not null"),
    ("public.a", "index CREATE UNIQUE INDEX a_pkey ON public.a USING btree (id)"),
    ("public.b", "relation r"),
    ("public.b", "column 1 x text"),
]


@given(st.permutations(ROWS))
def test_fingerprint_does_not_depend_on_row_order(rows: list[tuple[str, str]]) -> None:
    assert fingerprint_of(rows) == fingerprint_of(ROWS)


def test_fingerprint_changes_with_any_line_and_names_the_relation() -> None:
    base = fingerprint_of(ROWS)
    changed = fingerprint_of([*ROWS[:-1], ("public.b", "column 1 x varchar")])
    assert changed.digest != base.digest
    assert base.objects is not None and changed.objects is not None
    assert [k for k in base.objects if base.objects[k] != changed.objects[k]] == ["public.b"]
    # A line moved to another relation changes the fingerprint too.
    moved = fingerprint_of([*ROWS[:-1], ("public.a", "column 1 x text")])
    assert moved.digest != base.digest


def test_fingerprint_of_a_huge_schema_keeps_only_the_digest() -> None:
    rows = [(f"public.t{i}", "relation r") for i in range(MAX_OBJECTS + 1)]
    assert fingerprint_of(rows).objects is None
    assert fingerprint_of(rows[:-1]).objects is not None


def _expected(rows: list[tuple[str, str]]) -> dict[str, object]:
    return fingerprint_of(rows).to_details()


@pytest.mark.parametrize(
    ("recorded", "restored", "status", "words"),
    [
        (None, ROWS, "skipped", ["no schema fingerprint"]),
        (ROWS, ROWS, "passed", ["matches", "2 relations"]),
        (ROWS, ROWS[:5], "failed", ["missing public.b"]),
        (ROWS, [*ROWS, ("public.c", "relation r")], "failed", ["not in the backup public.c"]),
        (ROWS, [*ROWS[:6], ("public.b", "column 1 x int")], "failed", ["changed public.b"]),
        (ROWS, ROWS[1:], "failed", ["changed schemas or extensions"]),
    ],
)
def test_compare_schema(
    recorded: list[tuple[str, str]] | None, restored: list[tuple[str, str]], status: str, words: list[str]
) -> None:
    expected = {} if recorded is None else _expected(recorded)
    result = compare_schema(expected, fingerprint_of(restored))
    assert result.status == status
    for word in words:
        assert word in result.detail


def test_compare_schema_without_per_relation_digests_still_fails() -> None:
    expected = {"schema_fingerprint": fingerprint_of(ROWS).digest}
    result = compare_schema(expected, fingerprint_of(ROWS[:5]))
    assert result.status == "failed" and "recorded at backup time" in result.detail


# -- tables and counts -----------------------------------------------------------------------
def test_check_reads() -> None:
    good = [TableRead("public.a", rows=3, bytes=30), TableRead("public.b", rows=0)]
    assert check_reads(good).status == "passed"
    assert "3 rows" in check_reads(good).detail
    bad = [*good, TableRead("public.c", error="could not read block 7")]
    result = check_reads(bad)
    assert result.status == "failed"
    assert "public.c: could not read block 7" in result.detail and "1 of 3" in result.detail


@pytest.mark.parametrize(
    ("expected", "reads", "status", "words"),
    [
        ({}, [TableRead("public.a", rows=3)], "skipped", ["no row counts", "3 rows"]),
        ({"row_counts": {"public.a": 3}}, [TableRead("public.a", rows=3)], "passed", ["exactly", "3 rows"]),
        (
            {"row_counts": {"public.a": 3, "public.b": 5}},
            [TableRead("public.a", rows=3), TableRead("public.b", rows=4)],
            "failed",
            ["public.b: 5 recorded, 4 restored", "1 of 2"],
        ),
        (
            {"row_counts": {"public.a": 3}},
            [],
            "failed",
            ["public.a: 3 recorded, no such table restored"],
        ),
        (
            {"row_counts": {"public.a": 3}, "row_estimates": {"public.big": 1000}},
            [TableRead("public.a", rows=3), TableRead("public.big", rows=990)],
            "passed",
            ["1 tables were not counted at backup time", "990 rows restored"],
        ),
        (
            {"row_estimates": {"public.a": -1, "public.b": 10}},
            [TableRead("public.a", rows=7), TableRead("public.b", rows=12)],
            "passed",
            ["reported, not compared", "19 rows restored", "about 10 estimated"],
        ),
        # An unreadable table is the read check's failure, not a count mismatch.
        (
            {"row_counts": {"public.a": 3}},
            [TableRead("public.a", error="boom")],
            "passed",
            ["0 tables hold exactly"],
        ),
    ],
)
def test_compare_counts(
    expected: dict[str, object], reads: list[TableRead], status: str, words: list[str]
) -> None:
    result = compare_counts(expected, reads)
    assert result.status == status, result
    for word in words:
        assert word in result.detail


def test_amcheck_result() -> None:
    assert amcheck_result(IndexCheck(False, "not installed")).status == "skipped"
    assert amcheck_result(IndexCheck(True, checked=4)).detail.startswith("4 B-tree indexes")
    broken = amcheck_result(IndexCheck(True, checked=4, failures=[("public.a_pkey", "item order invariant")]))
    assert broken.status == "failed" and "public.a_pkey: item order invariant" in broken.detail


# -- recovery --------------------------------------------------------------------------------
T = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)


def _state(
    *, in_recovery: bool = False, lsn: str | None = "0/3000138", commit: datetime | None = T
) -> ServerState:
    return ServerState(in_recovery, lsn, commit, 2, 150000)


@pytest.mark.parametrize(
    ("target", "state", "status"),
    [
        (RecoveryTarget(), _state(), "passed"),
        (RecoveryTarget(), _state(in_recovery=True), "failed"),
        (RecoveryTarget.parse(lsn="0/3000000", action="promote"), _state(), "passed"),
        (RecoveryTarget.parse(lsn="0/3000138", action="promote"), _state(), "passed"),
        (RecoveryTarget.parse(lsn="0/4000000", action="promote"), _state(), "failed"),
        (RecoveryTarget.parse(lsn="0/3000000", action="promote"), _state(lsn=None), "failed"),
        (RecoveryTarget.parse(time="2026-11-25T04:00:00Z", action="promote"), _state(), "passed"),
        (RecoveryTarget.parse(time="2026-11-25T03:59:59Z", action="promote"), _state(), "failed"),
        (RecoveryTarget.parse(time="2026-11-25T03:59:59Z", action="promote"), _state(commit=None), "passed"),
    ],
)
def test_recovery_check(target: RecoveryTarget, state: ServerState, status: str) -> None:
    result = recovery_check(target, state, 12.5)
    assert result.status == status, result
    if status == "passed":
        assert "12.5s" in result.detail


# -- the result ------------------------------------------------------------------------------
def test_result_json_has_exactly_the_documented_keys_and_status() -> None:
    result = DrillResult("d", "main", "physical", T, backup_id="b", target="lsn 0/1", rto_seconds=1.23456)
    assert result.status == "failed"  # no check ran: nothing was proven
    result.checks = [CheckResult("restore", "passed", "ok"), CheckResult("user_checks", "skipped", "none")]
    out = result.to_json()
    assert list(out) == ["status", "backup_id", "target", "rto_seconds", "restored_bytes", "checks"]
    assert out["status"] == "succeeded" and out["rto_seconds"] == 1.235
    assert out["checks"][1] == {"name": "user_checks", "status": "skipped", "detail": "none"}
    result.checks.append(CheckResult("schema", "failed", "differs"))
    assert result.to_json()["status"] == "failed"
    assert result.error == "schema: differs"
    assert result.record().status == "failed"
    assert not passed(result.checks)


def test_throughput_is_restored_bytes_over_rto() -> None:
    result = DrillResult("d", "main", "logical", T, rto_seconds=4.0, restored_bytes=1000)
    assert result.throughput_bytes_per_s == 250.0
    assert DrillResult("d", "main", "logical", T).throughput_bytes_per_s is None


# -- three values: a check that could not run is never a pass ---------------------------------
@pytest.mark.parametrize(
    ("statuses", "lenient", "strict"),
    [
        (["passed", "skipped"], True, True),
        (["passed", "not_run"], True, False),
        (["passed", "failed"], False, False),
        (["not_run", "failed"], False, False),
        ([], True, True),
    ],
)
def test_not_run_fails_only_strictly(statuses: list[str], lenient: bool, strict: bool) -> None:
    checks = [CheckResult(f"c{i}", s, "") for i, s in enumerate(statuses)]  # type: ignore[arg-type]
    assert passed(checks) is lenient
    assert passed(checks, strict=True) is strict
    assert [c.name for c in not_run(checks)] == [f"c{i}" for i, s in enumerate(statuses) if s == "not_run"]


def test_checks_after_a_refused_connection_are_not_run_not_skipped() -> None:
    """No server answers on this socket directory: ``connect`` fails, and the checks that need a
    connection could not run (they are not reported as passed, nor as not applying)."""
    info = ConnInfo(
        params={"host": "/nonexistent-backupd-socket-dir", "port": "1", "dbname": "x", "user": "x"}
    )
    results = run_checks(PgDatabaseFacts(), info, {}, None)
    assert (results[0].name, results[0].status) == ("connect", "failed")
    assert {r.status for r in results[1:]} == {"not_run"}
    assert [r.name for r in results[1:]] == ["schema", "read_tables", "row_counts", "amcheck", "user_checks"]


# -- the restore step, as both modes report it ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "detail"),
    [
        (
            ("b1", "10 bytes, 2 files", 3.04),
            {"then": "; recovery to the end of the backup on timeline 1"},
            "backup b1 restored (10 bytes, 2 files) in 3.0s; recovery to the end of the backup on timeline 1",
        ),
        (
            ("b2", "7 bytes of pg_dump archive", 0.26),
            {"into": "db@host:5432"},
            "backup b2 restored into db@host:5432 (7 bytes of pg_dump archive) in 0.3s",
        ),
    ],
)
def test_restore_step_reads_the_same_for_both_modes(
    args: tuple[str, str, float], kwargs: dict[str, str], detail: str
) -> None:
    checks: list[CheckResult] = []
    CheckLog(checks).restore_passed(*args, **kwargs)
    assert checks == [CheckResult("restore", "passed", detail)]
