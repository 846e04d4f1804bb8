"""The pure rules of ``migrate batch`` as tables and properties: placeholders, names, the
checkpoint, settling a batch left in flight, the throttle decision, progress."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentflow_backupd.errors import UsageError
from contentflow_backupd.migrate.batch_rules import (
    InFlight,
    JobState,
    Lag,
    archive_lag,
    check_key_support,
    eta_seconds,
    in_flight_action,
    job_id,
    parse_bytes,
    parse_statement,
    parse_table_name,
    progress_line,
)

MB16 = 16 * 1024 * 1024


def _rebuild(text: str) -> str:
    t = parse_statement(text).template
    out = t.chunks[0]
    for param, chunk in zip(t.params, t.chunks[1:], strict=True):
        out += ":" + param + chunk
    return out


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("UPDATE post SET n = n + 1 WHERE id >= :lo AND id < :hi", ("lo", "hi")),
        ("UPDATE post SET n = 1 WHERE id>=:lo AND id<:hi;", ("lo", "hi")),
        ("UPDATE t SET s = ':lo' || $$ :hi $$ || $x$ :lo $x$ WHERE k >= :lo AND k < :hi", ("lo", "hi")),
        ('UPDATE "a:lo" SET c = c::hi WHERE k >= :lo AND k < :hi -- :lo\n', ("lo", "hi")),
        ("UPDATE t SET c = E'\\' :lo' WHERE k >= :lo /* :hi /* nested :hi */ */ AND k < :hi", ("lo", "hi")),
        ("UPDATE t SET c = c WHERE (k >= :lo AND k < :hi) OR k = :lo", ("lo", "hi", "lo")),
        ("UPDATE t SET tag = 'x%' WHERE k >= :lo AND k < :hi AND :lower = 1", ("lo", "hi")),
    ],
)
def test_placeholders_outside_literals_comments_and_casts(sql: str, params: tuple[str, ...]) -> None:
    assert parse_statement(sql).template.params == params
    assert _rebuild(sql) == sql.removesuffix(";")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE t SET n = 1 WHERE k >= :lo", "no :hi placeholder"),
        ("UPDATE t SET n = 1 WHERE k < :hi", "no :lo placeholder"),
        ("UPDATE t SET n = ':lo :hi'", "no :lo and :hi placeholder"),
        ("UPDATE t SET n = 1 WHERE k >= :lo AND k < :hi; DELETE FROM t", "more than one statement"),
        ("UPDATE t SET n = 1 WHERE k >= :lo; UPDATE t SET n = 2 WHERE k < :hi", "more than one statement"),
        ("   \n-- nothing\n", "no :lo and :hi"),
    ],
)
def test_bad_statements(sql: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_statement(sql)


def test_trailing_semicolon_and_comment_are_one_statement() -> None:
    t = parse_statement("UPDATE t SET n = 1 WHERE k >= :lo AND k < :hi;  -- done\n").template
    assert t.chunks[-1] == ""


@given(
    st.lists(st.sampled_from(["a", " ", "1", "'x'", "::int", "(", ")", ":lo", ":hi", "=", "\n"]), max_size=30)
)
def test_splitting_keeps_the_text(parts: list[str]) -> None:
    text = "SELECT :lo, :hi " + "".join(parts)
    assert _rebuild(text) == text


@pytest.mark.parametrize(
    ("sql", "handles"),
    [
        ("UPDATE t SET n = 1 WHERE k >= :lo AND (:hi IS NULL OR k < :hi)", True),
        ("UPDATE t SET n = 1 WHERE k >= :lo AND (:hi::uuid is  null OR k < :hi)", True),
        ("UPDATE t SET n = 1 WHERE k >= :lo AND ((:hi) IS NULL OR k < :hi)", True),
        ("UPDATE t SET n = 1 WHERE k >= :lo AND k < :hi", False),
        ("UPDATE t SET n = 1 WHERE k >= :lo AND k < :hi AND ':hi IS NULL' <> ''", False),
        ("UPDATE t SET n = 1 WHERE k >= :lo AND (:hi IS NOT NULL AND k < :hi)", False),
    ],
)
def test_null_last_bound_is_required_for_non_integer_keys(sql: str, handles: bool) -> None:
    stmt = parse_statement(sql)
    assert stmt.handles_null_hi is handles
    check_key_support(stmt, integer_key=True, key="k")
    if handles:
        check_key_support(stmt, integer_key=False, key="k")
    else:
        with pytest.raises(UsageError, match=r"\(:hi IS NULL OR k < :hi\)"):
            check_key_support(stmt, integer_key=False, key="k")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("post", (None, "post")),
        ("Post", (None, "Post")),
        ("public.Post", ("public", "Post")),
        ('public."Post"', ("public", "Post")),
        ('"my.schema"."a""b"', ("my.schema", 'a"b')),
    ],
)
def test_table_names(value: str, parsed: tuple[str | None, str]) -> None:
    assert parse_table_name(value) == parsed


@pytest.mark.parametrize("value", ["", "a.b.c", ".post", "post.", '"unclosed', '""', "x" * 64, '"a"b'])
def test_bad_table_names(value: str) -> None:
    with pytest.raises(UsageError):
        parse_table_name(value)


@pytest.mark.parametrize(
    ("status", "resolve", "action"),
    [
        ("committed", None, "done"),
        ("aborted", None, "redo"),
        ("future", None, "redo"),
        ("in progress", None, "wait"),
        ("in progress", "aborted", "wait"),
        ("unknown", None, "ask"),
        ("unknown", "committed", "done"),
        ("unknown", "aborted", "redo"),
        ("committed", "aborted", "done"),  # the server's answer wins over the user's guess
    ],
)
def test_in_flight_action(status: str, resolve: str | None, action: str) -> None:
    assert in_flight_action(status, resolve) == action  # type: ignore[arg-type]


def test_checkpoint_round_trip_and_commit() -> None:
    state = JobState(key_type="bigint", start=7, last=1507, batches=3, rows=1500)
    state.in_flight = InFlight(1507, 2007, "1234", 500, False)
    again = JobState.from_details(state.to_details())
    assert again == state
    assert again.commit_in_flight() is False
    assert (again.last, again.batches, again.rows, again.in_flight) == (2007, 4, 2000, None)
    last = JobState(key_type="text", last="m")
    last.in_flight = InFlight("m", None, "99", 3, True)
    assert last.commit_in_flight() is True
    assert last.last == "m"


@pytest.mark.parametrize(
    ("lag", "max_lag", "over"),
    [
        (Lag(None, None), 0, False),
        (Lag(10, None), None, False),
        (Lag(10, None), 10, False),
        (Lag(11, None), 10, True),
        (Lag(None, 11), 10, True),
        (Lag(5, 11), 10, True),
        (Lag(11, 5), 10, True),
    ],
)
def test_throttle_decision(lag: Lag, max_lag: int | None, over: bool) -> None:
    assert lag.over(max_lag) is over


@pytest.mark.parametrize(
    ("current", "mode", "last", "failed", "lag"),
    [
        (5 * MB16 + 100, "off", "000000010000000000000004", 0, None),
        (5 * MB16 + 100, "on", "000000010000000000000004", 0, 100),  # segment 4 ends at 5*16MiB
        (5 * MB16 + 100, "always", "000000010000000000000002", 3, 2 * MB16 + 100),
        (5 * MB16 + 100, "on", "000000010000000000000004.partial", 0, 100),
        (5 * MB16 + 100, "on", None, 0, 100),  # nothing archived, nothing failed: this segment
        (5 * MB16 + 100, "on", None, 2, 5 * MB16 + 100),  # every attempt failed: all of it
        (5 * MB16 + 100, "on", "00000002.history", 1, 5 * MB16 + 100),
    ],
)
def test_archive_lag(current: int, mode: str, last: str | None, failed: int, lag: int | None) -> None:
    assert archive_lag(current, mode, last, failed, MB16) == lag


@pytest.mark.parametrize(
    ("text", "value"),
    [("1024", 1024), ("512kB", 512 * 1024), ("16MB", 16 * 2**20), ("1GiB", 2**30), ("2 g", 2 * 2**30)],
)
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1.5MB", "ten", "16XB"])
def test_parse_bytes_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes(text)


def test_job_id_is_stable_and_depends_on_every_part() -> None:
    parts = ["main", "app", "public.post", "id", "ab" * 32]
    base = job_id(*parts)
    assert base == job_id(*parts) and base.startswith("batch-") and len(base) <= 128
    for i in range(len(parts)):
        changed = list(parts)
        changed[i] += "x"
        assert job_id(*changed) != base


def test_progress() -> None:
    assert eta_seconds(0, 100, 5.0) is None
    assert eta_seconds(50, 100, 5.0) == pytest.approx(5.0)
    assert eta_seconds(100, 100, 5.0) == 0.0
    line = progress_line(batches=12, covered=6000, total=50000, changed=5990, elapsed=2.5)
    assert line == "batch 12 | 6000/50000 rows (12%) | changed 5990 | 2400 rows/s | ETA 18s"


def test_progress_bar_on_a_terminal() -> None:
    import io

    from contentflow_backupd.migrate.batch_progress import BatchProgress

    stream = io.StringIO()
    bar = BatchProgress(1000, tty=True, stream=stream, interval=10)
    bar.update(batches=1, covered=500, changed=480, final=False)
    bar.update(batches=2, covered=500, changed=960, final=True)
    bar.close()
    shown = stream.getvalue()
    assert shown.startswith("\rbatch ") and shown.endswith("\n")
    assert "batch 2 | 1000/1000 rows (100%) | changed 960 |" in shown
