"""Recovery objectives: the recovery window, the recovery point age (RPO if the server died now),
and the recovery time estimate (RTO) at a measured restore throughput.

Pure rules first (``recovery_window``, ``recovery_point_age``, ``rto_estimate``,
``rto_objective_met``, ``max_database_bytes``, ``evaluate_objectives``), then
``collect_objectives``, which reads their inputs from the catalog and one LIST of the WAL archive.

**The recovery window** is the interval of moments the repository can restore to, without a gap:

- physical: ``newest`` is the stored time (object modified time) of the newest WAL segment on the
  archived chain that a restorable backup reaches without a gap, following the history of the
  newest timeline; ``oldest`` is the finish time of the oldest backup whose chain reaches that same
  segment. The stored time is used rather than commit timestamps (which would need the newest
  segment fetched, decrypted and its records parsed on every call): a segment is stored after it
  was closed, so it holds no commit later than its stored time. It is also exactly the rule
  ``restore --target-time`` applies (a target time is reachable when a segment of the chain was
  stored at or after it), so every moment of the window is a target that ``restore`` and
  ``recover`` accept. ``oldest`` is a backup's finish time for the same reason: ``restore`` takes
  a backup only for targets after it finished.
- logical: from the finish of the oldest to the finish of the newest committed logical backup
  (a logical repository restores to backup moments only).

Backups with an open corrupt object (``excluded``) are left out; backups that cannot reach the
newest moment (a WAL gap, or the WAL they need to be consistent is missing) are named in
``notes``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contentflow_backupd.catalog.base import DrillCatalog, HealthCatalog, VerificationCatalog
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import BackupMode, BackupRecord, Scope, iso
from contentflow_backupd.ops.restore.timeline import Span, parse_history, span_of, timeline_at
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.wal import (
    DEFAULT_SEGMENT_SIZE,
    Segment,
    classify,
    history_name,
    parse_lsn,
    parse_segment,
    timeline_of,
)

RTO_OBJECTIVE_S = 2 * 3600.0
RPO_OBJECTIVE_S = 15 * 60.0


# -- inputs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackupPoint:
    """A committed backup as the window needs it (physical ones carry their WAL range)."""

    id: str
    finished_at: datetime
    timeline: int | None = None
    stop_lsn: int | None = None
    wal_first: str | None = None
    wal_last: str | None = None
    segment_size: int = DEFAULT_SEGMENT_SIZE

    @classmethod
    def from_record(cls, r: BackupRecord) -> BackupPoint:
        d = r.details
        return cls(
            id=r.id,
            finished_at=r.finished_at or r.started_at,
            timeline=int(d["timeline"]) if "timeline" in d else None,
            stop_lsn=parse_lsn(d["stop_lsn"]) if "stop_lsn" in d else None,
            wal_first=d.get("wal_first"),
            wal_last=d.get("wal_last"),
            segment_size=int(d.get("wal_segment_size", DEFAULT_SEGMENT_SIZE)),
        )


@dataclass(frozen=True)
class RecoveryWindow:
    mode: BackupMode
    oldest: datetime | None
    newest: datetime | None
    oldest_backup_id: str | None = None
    newest_backup_id: str | None = None
    """The newest backup inside the window (the one ``recover`` starts from for the newest moment)."""
    newest_wal: str | None = None
    """Physical: the newest segment of the chain."""
    backups: int = 0
    """Backups inside the window."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Backups left out of the window, and why."""

    @property
    def empty(self) -> bool:
        return self.newest is None

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "oldest": iso(self.oldest),
            "newest": iso(self.newest),
            "oldest_backup_id": self.oldest_backup_id,
            "newest_backup_id": self.newest_backup_id,
            "newest_wal": self.newest_wal,
            "backups": self.backups,
            "notes": list(self.notes),
        }


# -- the window (pure) -------------------------------------------------------------------------
def recovery_window(
    backups: Sequence[BackupPoint],
    mode: BackupMode,
    *,
    wal: Mapping[str, datetime | None] | None = None,
    histories: Mapping[int, Sequence[Span]] | None = None,
    excluded: Mapping[str, str] | None = None,
) -> RecoveryWindow:
    """The recovery window of ``backups`` (committed backups of one cluster, any order).

    ``wal``: archived WAL file names (any kind; only segments count) and their stored times.
    ``histories``: the parsed history of timelines above 1 (``parse_history``); a timeline
    without one is taken as beginning at 0. ``excluded``: backup id -> why it may not be used.
    """
    excluded = excluded or {}
    notes = [f"backup {b}: {why}" for b, why in sorted(excluded.items()) if any(p.id == b for p in backups)]
    usable = sorted((b for b in backups if b.id not in excluded), key=lambda b: (b.finished_at, b.id))
    if mode == "logical":
        if not usable:
            return RecoveryWindow(mode, None, None, notes=tuple(notes))
        return RecoveryWindow(
            mode,
            usable[0].finished_at,
            usable[-1].finished_at,
            oldest_backup_id=usable[0].id,
            newest_backup_id=usable[-1].id,
            backups=len(usable),
            notes=tuple(notes),
        )
    return _physical_window(usable, wal or {}, histories or {}, notes)


@dataclass(frozen=True)
class _Chain:
    backup: BackupPoint
    end: int
    """Segment number of the last segment of the gap-free chain."""
    end_name: str
    newest: datetime | None


def _physical_window(
    usable: Sequence[BackupPoint],
    wal: Mapping[str, datetime | None],
    histories: Mapping[int, Sequence[Span]],
    notes: list[str],
) -> RecoveryWindow:
    physical = [b for b in usable if b.timeline is not None and b.wal_first and b.wal_last]
    size = physical[0].segment_size if physical else DEFAULT_SEGMENT_SIZE
    segments: dict[int, dict[int, datetime | None]] = {}
    for name, modified in wal.items():
        if classify(name) == "segment":
            seg = parse_segment(name, size)
            segments.setdefault(seg.timeline, {})[seg.number] = modified
    head = max([1, *segments, *histories, *(b.timeline or 1 for b in physical)])
    path = list(histories.get(head) or [Span(head, 0, None)])
    chains: list[_Chain] = []
    for b in physical:
        chain = _chain(b, path, segments, size, head)
        if isinstance(chain, str):
            notes.append(f"backup {b.id}: {chain}")
        else:
            chains.append(chain)
    if not chains:
        return RecoveryWindow("physical", None, None, notes=tuple(notes))
    end = max(c.end for c in chains)
    reaching = [c for c in chains if c.end == end]
    for c in chains:
        if c.end < end:
            notes.append(
                f"backup {c.backup.id}: its WAL chain ends at {c.end_name} (the next segment is missing), "
                "before the newest archived WAL"
            )
    times = [c.newest for c in reaching if c.newest is not None]
    first, last = reaching[0].backup, reaching[-1].backup
    newest = max(times) if times else max(c.backup.finished_at for c in reaching)
    return RecoveryWindow(
        "physical",
        first.finished_at,
        max(newest, last.finished_at),
        oldest_backup_id=first.id,
        newest_backup_id=last.id,
        newest_wal=reaching[0].end_name,
        backups=len(reaching),
        notes=tuple(notes),
    )


def _chain(
    b: BackupPoint,
    path: Sequence[Span],
    segments: Mapping[int, Mapping[int, datetime | None]],
    size: int,
    head: int,
) -> _Chain | str:
    """The gap-free chain of archived segments from ``b``'s first one along ``path``, or why
    ``b`` cannot be restored."""
    assert b.timeline is not None and b.wal_first and b.wal_last
    span = span_of(path, b.timeline)
    if span is None or (span.end is not None and b.stop_lsn is not None and b.stop_lsn > span.end):
        return f"it is on timeline {b.timeline}, which the history of the newest timeline {head} leaves"
    segno = parse_segment(b.wal_first, size).number
    needed = parse_segment(b.wal_last, size).number
    newest: datetime | None = None
    while segno in segments.get(timeline_at(path, segno, size), {}):
        modified = segments[timeline_at(path, segno, size)][segno]
        if modified is not None and (newest is None or modified > newest):
            newest = modified
        segno += 1
    missing = Segment(timeline_at(path, segno, size), segno).name(size)
    if segno <= needed:
        return f"WAL segment {missing}, which it needs to be consistent, is not archived"
    last = Segment(timeline_at(path, segno - 1, size), segno - 1).name(size)
    return _Chain(b, segno - 1, last, newest)


# -- RPO and RTO (pure) --------------------------------------------------------------------------
def recovery_point_age(window: RecoveryWindow, now: datetime) -> float | None:
    """Seconds from the newest restorable moment to ``now``: the data lost if the server died
    now. None when nothing can be restored. Never negative (clocks may differ slightly)."""
    if window.newest is None:
        return None
    return max(0.0, (now - window.newest).total_seconds())


def rto_estimate(database_bytes: int | None, throughput_bytes_per_s: float | None) -> float | None:
    """Seconds to restore ``database_bytes`` at the measured throughput (end to end: a drill's
    restored bytes over its RTO); None when either is unknown. A logical drill's restored bytes are
    the dump's, smaller than the database on disk (indexes are rebuilt, not copied), so for a
    logical repository the estimate errs long: conservative."""
    if database_bytes is None or not throughput_bytes_per_s or throughput_bytes_per_s <= 0:
        return None
    return max(0, database_bytes) / throughput_bytes_per_s


def rto_objective_met(
    database_bytes: int | None, throughput_bytes_per_s: float | None, objective_s: float = RTO_OBJECTIVE_S
) -> bool | None:
    """Whether the estimate is within the objective; None when it cannot be estimated."""
    estimate = rto_estimate(database_bytes, throughput_bytes_per_s)
    return None if estimate is None else estimate <= objective_s


def max_database_bytes(throughput_bytes_per_s: float, objective_s: float = RTO_OBJECTIVE_S) -> int:
    """The largest database that restores within ``objective_s`` at this throughput."""
    if throughput_bytes_per_s <= 0 or objective_s <= 0:
        return 0
    n = math.floor(throughput_bytes_per_s * objective_s)
    while n > 0 and n / throughput_bytes_per_s > objective_s:  # float rounding: stay within it
        n -= 1
    return n


@dataclass(frozen=True)
class DrillFigures:
    """What the objectives need from the last successful restore drill."""

    finished_at: datetime | None
    rto_seconds: float | None
    restored_bytes: int | None
    throughput_bytes_per_s: float | None = None

    @property
    def throughput(self) -> float | None:
        if self.throughput_bytes_per_s:
            return self.throughput_bytes_per_s
        if self.restored_bytes and self.rto_seconds and self.rto_seconds > 0:
            return self.restored_bytes / self.rto_seconds
        return None


def evaluate_objectives(
    window: RecoveryWindow,
    now: datetime,
    *,
    database_bytes: int | None,
    drill: DrillFigures | None,
    rto_objective_s: float = RTO_OBJECTIVE_S,
    rpo_objective_s: float = RPO_OBJECTIVE_S,
) -> dict[str, Any]:
    """The objectives report (``status``, ``/healthz``, metrics). ``rpo_met`` / ``rto_met`` are
    None when unknown (nothing restorable, no drill yet, no database size)."""
    age = recovery_point_age(window, now)
    throughput = drill.throughput if drill else None
    estimate = rto_estimate(database_bytes, throughput)
    return {
        "window": window.to_json(),
        "recovery_point_age_seconds": None if age is None else round(age, 3),
        "rpo_objective_seconds": rpo_objective_s,
        "rpo_met": None if age is None else age <= rpo_objective_s,
        "last_drill": None
        if drill is None
        else {
            "finished_at": iso(drill.finished_at),
            "rto_seconds": drill.rto_seconds,
            "restored_bytes": drill.restored_bytes,
        },
        "restore_throughput_bytes_per_second": None if throughput is None else round(throughput, 1),
        "database_bytes": database_bytes,
        "rto_estimate_seconds": None if estimate is None else round(estimate, 1),
        "rto_objective_seconds": rto_objective_s,
        "rto_met": None if estimate is None else estimate <= rto_objective_s,
        "max_database_bytes_for_rto": None
        if throughput is None
        else max_database_bytes(throughput, rto_objective_s),
    }


# -- collection --------------------------------------------------------------------------------
def open_corrupt_backups(catalog: VerificationCatalog, scope: Scope) -> dict[str, str]:
    """Backup id -> the open corrupt object that rules it out (the first one recorded), from the
    catalog's verification records."""
    out: dict[str, str] = {}
    for rec in catalog.list_corrupt(scope, open_only=True):
        for backup_id in rec.backup_ids:
            out.setdefault(backup_id, f"open corrupt object {rec.key} ({rec.problem})")
    return out


def last_drill_figures(catalog: DrillCatalog, scope: Scope) -> DrillFigures | None:
    """The newest successful restore drill of ``scope`` from the catalog, or None."""
    drills = catalog.list_drills(scope, limit=1, status="succeeded")
    if not drills:
        return None
    d = drills[-1]
    return DrillFigures(
        finished_at=d.finished_at,
        rto_seconds=d.rto_seconds,
        restored_bytes=d.restored_bytes,
        throughput_bytes_per_s=d.throughput_bytes_per_s,
    )


def read_archive(archive: WalArchive) -> tuple[dict[str, datetime | None], dict[int, list[Span]]]:
    """Every archived WAL file with its stored time (one LIST), and the parsed history files of
    timelines above 1. A history file that cannot be read is left out."""
    wal: dict[str, datetime | None] = {}
    for info in archive.repo.storage.list(archive.prefix()):
        name = info.key.rsplit("/", 1)[-1]
        if classify(name) is not None:
            wal[name] = info.modified
    histories: dict[int, list[Span]] = {}
    for name in wal:
        if classify(name) == "history":
            tli = timeline_of(name)
            try:
                text = archive.fetch(history_name(tli)).decode("utf-8", "replace")
                histories[tli] = parse_history(text, tli)
            except BackupdError:  # unreadable: the timeline is taken as beginning at 0
                continue
    return wal, histories


def physical_points(records: Iterable[BackupRecord]) -> list[BackupPoint]:
    return [BackupPoint.from_record(r) for r in records if r.mode == "physical"]


def collect_objectives(
    repo: Repository,
    catalog: HealthCatalog,
    cluster: str,
    mode: BackupMode,
    database_bytes: int | None,
    *,
    now: datetime | None = None,
    rto_objective_s: float = RTO_OBJECTIVE_S,
    rpo_objective_s: float = RPO_OBJECTIVE_S,
) -> dict[str, Any]:
    """``evaluate_objectives`` on inputs read now: the catalog's succeeded backups of ``mode``
    (no manifest is opened), its open corrupt objects and newest successful drill (when the
    catalog records them) and, in physical mode, one LIST of the WAL archive plus its history
    files. Storage and catalog errors propagate (``StorageError``, ``CatalogError``)."""
    now = now or datetime.now(UTC)
    scope = Scope(repo.id, cluster)
    records = [r for r in catalog.list_backups(scope, ["succeeded"]) if r.mode == mode]
    points = [BackupPoint.from_record(r) for r in records]
    excluded = open_corrupt_backups(catalog, scope)
    if mode == "physical":
        wal, histories = read_archive(WalArchive(repo, cluster))
        window = recovery_window(points, mode, wal=wal, histories=histories, excluded=excluded)
    else:
        window = recovery_window(points, mode, excluded=excluded)
    return evaluate_objectives(
        window,
        now,
        database_bytes=database_bytes,
        drill=last_drill_figures(catalog, scope),
        rto_objective_s=rto_objective_s,
        rpo_objective_s=rpo_objective_s,
    )


def recovery_objectives(
    repo: Repository,
    catalog: HealthCatalog,
    cluster: str,
    mode: BackupMode,
    *,
    rto_objective_s: float = RTO_OBJECTIVE_S,
    rpo_objective_s: float = RPO_OBJECTIVE_S,
) -> dict[str, Any]:
    """The recovery window, the RPO now and the RTO estimate (``collect_objectives``). The
    database size is the newest backup's source size: the unit drills measure their throughput in."""
    done = [b for b in catalog.list_backups(Scope(repo.id, cluster), ["succeeded"]) if b.mode == mode]
    size = done[-1].source_bytes if done else None
    return collect_objectives(
        repo, catalog, cluster, mode, size, rto_objective_s=rto_objective_s, rpo_objective_s=rpo_objective_s
    )
