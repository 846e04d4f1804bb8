"""Timelines: a ``.history`` file as the spans of WAL positions each timeline on the path to the
target timeline owns (``docs/pitr.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from contentflow_backupd.wal import parse_lsn

log = structlog.get_logger(__name__)


# -- timelines -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    """One timeline on the history of the recovery target timeline: WAL positions
    ``[begin, end)`` belong to it (``end`` None: the target timeline itself)."""

    timeline: int
    begin: int
    end: int | None


def parse_history(text: str, timeline: int) -> list[Span]:
    """A ``<tli>.history`` file (``parent-tli  switch-lsn  reason`` lines) as spans, oldest first."""
    spans: list[Span] = []
    begin = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        parent, switch = int(fields[0]), parse_lsn(fields[1])
        spans.append(Span(parent, begin, switch))
        begin = switch
    spans.append(Span(timeline, begin, None))
    return spans


def span_of(path: Sequence[Span], timeline: int) -> Span | None:
    return next((s for s in path if s.timeline == timeline), None)


def timeline_at(path: Sequence[Span], segno: int, segment_size: int) -> int:
    """The timeline recovery reads segment ``segno`` from: the newest one begun by then (the
    segment where a timeline begins is read from the new timeline, as PostgreSQL does)."""
    for span in reversed(path):
        if span.begin // segment_size <= segno:
            return span.timeline
    return path[0].timeline
