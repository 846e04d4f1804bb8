"""WAL naming rules as tables (the cases of PostgreSQL's xlog_internal.h)."""

from __future__ import annotations

import pytest

from contentflow_backupd.wal import (
    Segment,
    classify,
    format_lsn,
    parse_lsn,
    parse_segment,
    segment_of_lsn,
    segments_between,
    timeline_of,
)

MB16 = 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("000000010000000000000001", "segment"),
        ("0000000A00000001000000FF", "segment"),
        ("00000002.history", "history"),
        ("000000010000000000000002.00000028.backup", "backup"),
        ("000000010000000000000003.partial", "partial"),
        ("00000001000000000000000", None),
        ("000000010000000000000001.gz", None),
        ("../000000010000000000000001", None),
        ("0000000100000000000000g1", None),
    ],
)
def test_classify(name: str, kind: str | None) -> None:
    assert classify(name) == kind


@pytest.mark.parametrize(
    ("name", "tli", "number"),
    [
        ("000000010000000000000001", 1, 1),
        ("000000010000000100000000", 1, 256),
        ("0000000300000002000000FF", 3, 2 * 256 + 255),
    ],
)
def test_parse_and_format_segments(name: str, tli: int, number: int) -> None:
    seg = parse_segment(name)
    assert seg == Segment(tli, number)
    assert seg.name() == name


def test_segment_numbers_roll_over_into_the_next_log() -> None:
    assert parse_segment("0000000100000000000000FF").next().name() == "000000010000000100000000"


@pytest.mark.parametrize("bad", ["000000000000000000000001", "000000010000000000000100"])
def test_invalid_segments(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_segment(bad)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0/0", 0), ("0/16B3748", 0x16B3748), ("1/0", 1 << 32), ("AB/CDEF0123", (0xAB << 32) | 0xCDEF0123)],
)
def test_lsn_round_trip(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == text.upper().replace("0X", "")


def test_segment_of_lsn() -> None:
    assert segment_of_lsn(parse_lsn("0/2000028"), 1).name() == "000000010000000000000002"
    assert segment_of_lsn(parse_lsn("1/0"), 2).name() == "000000020000000100000000"


@pytest.mark.parametrize(
    ("start", "end", "names"),
    [
        ("0/2000028", "0/2000100", ["000000010000000000000002"]),
        ("0/2000028", "0/4000000", ["000000010000000000000002", "000000010000000000000003"]),
        (
            "0/2000028",
            "0/4000001",
            ["000000010000000000000002", "000000010000000000000003", "000000010000000000000004"],
        ),
    ],
)
def test_segments_between(start: str, end: str, names: list[str]) -> None:
    assert [s.name() for s in segments_between(parse_lsn(start), parse_lsn(end), 1)] == names


def test_timeline_of_every_kind() -> None:
    assert timeline_of("0000000200000000000000AA") == 2
    assert timeline_of("0000000C.history") == 12
    assert timeline_of("000000030000000000000002.00000028.backup") == 3
    assert timeline_of("000000040000000000000002.partial") == 4
