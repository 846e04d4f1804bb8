"""WAL file naming as pure functions (the rules of PostgreSQL's xlog_internal.h).

A segment name is 24 hex digits: timeline (8), log (8) and segment (8) numbers, where with the
default 16 MiB segments each "log" holds 256 segments. History files are ``<tli>.history``,
backup history files ``<segment>.<offset>.backup``, partial segments ``<segment>.partial``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")
_BACKUP = re.compile(r"^([0-9A-F]{24})\.([0-9A-F]{8})\.backup$")
_PARTIAL = re.compile(r"^([0-9A-F]{24})\.partial$")
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")

WalKind = Literal["segment", "history", "backup", "partial"]


@dataclass(frozen=True, order=True)
class Segment:
    timeline: int
    number: int
    """Absolute segment number: ``log * segments_per_log + seg``."""

    def name(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
        per_log = segments_per_log(segment_size)
        return f"{self.timeline:08X}{self.number // per_log:08X}{self.number % per_log:08X}"

    def next(self) -> Segment:
        return Segment(self.timeline, self.number + 1)

    def start_lsn(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
        return self.number * segment_size


def segments_per_log(segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return 0x100000000 // segment_size


def classify(name: str) -> WalKind | None:
    """What kind of WAL archive file ``name`` is, or None when it is none of them."""
    if _SEGMENT.match(name):
        return "segment"
    if _HISTORY.match(name):
        return "history"
    if _BACKUP.match(name):
        return "backup"
    if _PARTIAL.match(name):
        return "partial"
    return None


def parse_segment(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    m = _SEGMENT.match(name)
    if not m:
        raise ValueError(f"{name!r} is not a WAL segment name")
    tli, log, seg = (int(g, 16) for g in m.groups())
    per_log = segments_per_log(segment_size)
    if seg >= per_log:
        raise ValueError(
            f"{name!r}: segment number {seg:#x} is out of range for {segment_size}-byte segments"
        )
    if tli == 0:
        raise ValueError(f"{name!r}: timeline 0 does not exist")
    return Segment(tli, log * per_log + seg)


def timeline_of(name: str) -> int:
    """The timeline a WAL archive file belongs to (segments, history, backup and partial files)."""
    for pattern in (_SEGMENT, _HISTORY):
        m = pattern.match(name)
        if m:
            return int(m.group(1), 16)
    m = _BACKUP.match(name) or _PARTIAL.match(name)
    if m:
        return int(m.group(1)[:8], 16)
    raise ValueError(f"{name!r} is not a WAL archive file name")


def parse_lsn(text: str) -> int:
    m = _LSN.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not an LSN (expected e.g. 0/16B3748)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_of_lsn(lsn: int, timeline: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    return Segment(timeline, lsn // segment_size)


def segments_between(
    start_lsn: int, end_lsn: int, timeline: int, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> list[Segment]:
    """Every segment that holds WAL from ``start_lsn`` up to (and including) ``end_lsn``.

    An ``end_lsn`` exactly on a segment boundary needs no byte of the segment that starts there.
    """
    if end_lsn < start_lsn:
        raise ValueError("end before start")
    first = start_lsn // segment_size
    last = (
        (end_lsn - 1) // segment_size
        if end_lsn > start_lsn and end_lsn % segment_size == 0
        else end_lsn // segment_size
    )
    return [Segment(timeline, n) for n in range(first, max(first, last) + 1)]


def history_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


LONG_PAGE_HEADER = 40
"""Bytes at the start of every segment (its long page header), there even when no record was
written in it: right after a switch the write position can sit just past them."""


def written_after(current_lsn: int, segment: Segment, segment_size: int = DEFAULT_SEGMENT_SIZE) -> bool:
    """Whether the server wrote WAL records after the end of ``segment`` (a write position past
    the next segment's page header)."""
    return current_lsn > segment.next().start_lsn(segment_size) + LONG_PAGE_HEADER
