"""WAL archiving use cases: ``archive_command`` (push), ``restore_command`` (fetch), chain checks."""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd.errors import UsageError
from contentflow_backupd.repository.walarchive import PushStatus, WalArchive
from contentflow_backupd.wal import DEFAULT_SEGMENT_SIZE, Segment, classify, parse_segment

log = structlog.get_logger(__name__)


def push_wal_file(archive: WalArchive, path: Path) -> PushStatus:
    """Archive the file at ``path`` (``%p``: relative to the data directory, PostgreSQL's cwd)."""
    if classify(path.name) is None:
        raise UsageError(f"{path} is not a WAL file (segment, .history, .backup or .partial)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return push_wal_bytes(archive, path.name, data)


def push_wal_bytes(archive: WalArchive, name: str, data: bytes, *, via: str = "direct") -> PushStatus:
    """Archive ``data`` as WAL file ``name``: stored, a duplicate, or refused (``WalArchive.push``).
    ``via``: ``direct`` (the command pushed) or ``socket`` (the daemon pushed for it)."""
    if classify(name) is None:
        raise UsageError(f"{name} is not a WAL file (segment, .history, .backup or .partial)")
    status = archive.push(name, data)
    log.info("wal_pushed" if status == "stored" else "wal_push_duplicate", wal=name, bytes=len(data), via=via)
    return status


def fetch_wal_file(archive: WalArchive, name: str, dest: Path) -> int:
    """Write archived ``name`` to ``dest`` atomically (``%f %p`` of ``restore_command``).

    ``ObjectNotFound`` propagates (exit 1: PostgreSQL ends recovery there); a damaged object
    raises ``IntegrityError`` (the caller exits above 125 so that recovery stops).
    """
    data = archive.fetch(name)
    dest = dest if dest.is_absolute() else Path.cwd() / dest
    tmp = dest.with_name(f".{dest.name}.wal-fetch-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wal_fetched", wal=name, bytes=len(data))
    return len(data)


@dataclass
class WalGap:
    timeline: int
    after: str | None
    missing_from: str
    missing_to: str

    def to_json(self) -> dict[str, Any]:
        return {
            "timeline": self.timeline,
            "after": self.after,
            "missing_from": self.missing_from,
            "missing_to": self.missing_to,
        }


@dataclass
class WalReport:
    timelines: dict[int, dict[str, Any]] = field(default_factory=dict)
    gaps: list[WalGap] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.gaps

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "gaps",
            "timelines": [{"timeline": t, **v} for t, v in sorted(self.timelines.items())],
            "gaps": [g.to_json() for g in self.gaps],
        }


def check_wal_chain(
    archive: WalArchive, start: Segment | None = None, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> WalReport:
    """Find gaps in the archived segments, per timeline, from ``start`` (the oldest backup's
    first segment) to the newest segment of each timeline."""
    per_tli: dict[int, list[Segment]] = defaultdict(list)
    for name in archive.names():
        if classify(name) == "segment":
            seg = parse_segment(name, segment_size)
            per_tli[seg.timeline].append(seg)
    report = WalReport()
    for tli, segs in sorted(per_tli.items()):
        segs.sort()
        first = segs[0]
        if start is not None and start.timeline == tli and start.number < first.number:
            report.gaps.append(
                WalGap(tli, None, start.name(segment_size), Segment(tli, first.number - 1).name(segment_size))
            )
        for prev, cur in itertools.pairwise(segs):
            if cur.number != prev.number + 1:
                report.gaps.append(
                    WalGap(
                        tli,
                        prev.name(segment_size),
                        Segment(tli, prev.number + 1).name(segment_size),
                        Segment(tli, cur.number - 1).name(segment_size),
                    )
                )
        report.timelines[tli] = {
            "first": first.name(segment_size),
            "last": segs[-1].name(segment_size),
            "segments": len(segs),
        }
    return report
