"""Which backup a physical restore starts from and whether the archive reaches the target: the
newest backup that ended before the target on the target timeline's history, with every WAL
segment from it to the target in the archive (``docs/pitr.md``). Nothing is written here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from contentflow_backupd.errors import (
    BackupdError,
    BackupNotFound,
    IntegrityError,
    ObjectNotFound,
    UsageError,
)
from contentflow_backupd.model import RestorePoint, iso
from contentflow_backupd.ops.restore.target import RecoveryTarget
from contentflow_backupd.ops.restore.timeline import Span, parse_history, span_of, timeline_at
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.manifest import Manifest
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.wal import Segment, classify, format_lsn, history_name, parse_lsn, parse_segment

log = structlog.get_logger(__name__)


class ArchiveView:
    """What the WAL archive holds, listed once per timeline."""

    def __init__(self, archive: WalArchive) -> None:
        self.archive = archive
        self._listings: dict[int, dict[str, datetime | None]] = {}
        self._paths: dict[int, list[Span] | None] = {}

    def listing(self, timeline: int) -> dict[str, datetime | None]:
        if timeline not in self._listings:
            prefix = self.archive.prefix(timeline)
            self._listings[timeline] = {
                info.key[len(prefix) :]: info.modified
                for info in self.archive.repo.storage.list(prefix)
                if classify(info.key[len(prefix) :]) == "segment"
            }
        return self._listings[timeline]

    def path(self, timeline: int) -> list[Span] | None:
        """The history of ``timeline``; None when the archive has no history file for it."""
        if timeline not in self._paths:
            if timeline == 1:
                self._paths[timeline] = [Span(1, 0, None)]
            else:
                try:
                    text = self.archive.fetch(history_name(timeline)).decode("utf-8", "replace")
                    self._paths[timeline] = parse_history(text, timeline)
                except ObjectNotFound:
                    self._paths[timeline] = None
        return self._paths[timeline]

    def newest_timeline(self, start: int) -> int:
        """``latest`` as PostgreSQL resolves it: the highest consecutive history file after
        ``start``."""
        newest = start
        while self.archive.exists(history_name(newest + 1)):
            newest += 1
        return newest


# -- choosing the backup -------------------------------------------------------------------
@dataclass
class RestorePlan:
    manifest: Manifest
    timeline: int
    """The recovery target timeline."""
    wal_first: str
    wal_last: str
    """The last segment checked: the target's, or the end of the archived chain."""
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Misfit:
    reason: str
    too_late: bool = False


def _candidates(repo: Repository, cluster: str, ref: str, warnings: list[str]) -> Iterator[Manifest]:
    """Physical backups, newest first (one, when ``ref`` is a backup id)."""
    if ref != "latest":
        manifest = repo.read_manifest(cluster, layout.check_backup_id(ref))
        if manifest.mode != "physical":
            raise UsageError(
                f"backup {ref} is a logical backup; --pgdata needs a physical one",
                hint="restore logical backups with --to-database or --to-file",
            )
        yield manifest
        return
    for backup_id in reversed(list(repo.iter_backup_ids(cluster))):
        try:
            manifest = repo.read_manifest(cluster, backup_id)
        except BackupdError as exc:
            warnings.append(f"backup {backup_id} was skipped: its manifest cannot be read ({exc.message})")
            log.warning("manifest_unreadable", backup_id=backup_id, error=exc.message)
            continue
        if manifest.mode == "physical":
            yield manifest


def _fit(
    view: ArchiveView, m: Manifest, target: RecoveryTarget, point: RestorePoint | None
) -> tuple[int, list[Span]] | _Misfit:
    tli = int(m.details["timeline"])
    stop = parse_lsn(m.details["stop_lsn"])
    if target.timeline == "latest":
        want = view.newest_timeline(tli)
    else:
        want = tli if target.timeline == "current" else int(target.timeline)
    path = view.path(want)
    if path is None:
        return _Misfit(f"timeline {want} has no history file ({history_name(want)}) in the archive")
    span = span_of(path, tli)
    if span is None:
        return _Misfit(f"it is on timeline {tli}, which is not in the history of timeline {want}")
    if span.end is not None and stop > span.end:
        return _Misfit(
            f"timeline {want} branched off its timeline {tli} at {format_lsn(span.end)}, before the "
            f"backup ended at {format_lsn(stop)}"
        )
    if target.kind == "time" and target.time is not None and m.finished_at >= target.time:
        return _Misfit(f"it finished at {iso(m.finished_at)}, not before the target time", too_late=True)
    if target.kind == "lsn" and target.lsn is not None and stop > target.lsn:
        return _Misfit(f"it ends at {format_lsn(stop)}, after the target LSN", too_late=True)
    if point is not None:
        at = parse_lsn(point.lsn)
        on = span_of(path, point.timeline)
        if on is None or at < on.begin or (on.end is not None and at > on.end):
            return _Misfit(
                f"restore point {point.name!r} (timeline {point.timeline}, {point.lsn}) is not in the "
                f"history of timeline {want}"
            )
        if stop > at:
            return _Misfit(
                f"it ends at {format_lsn(stop)}, after the restore point ({point.lsn})", too_late=True
            )
    return want, path


def plan_physical_restore(
    repo: Repository,
    archive: WalArchive,
    cluster: str,
    ref: str,
    target: RecoveryTarget,
    point: RestorePoint | None,
) -> RestorePlan:
    """Choose the backup and check that the archive reaches the target. Writes nothing."""
    view = ArchiveView(archive)
    warnings: list[str] = []
    misfits: list[tuple[Manifest, _Misfit]] = []
    for m in _candidates(repo, cluster, ref, warnings):
        fit = _fit(view, m, target, point)
        if isinstance(fit, _Misfit):
            misfits.append((m, fit))
            continue
        tli, path = fit
        first, last, more = _check_wal(view, m, path, target, point)
        if target.kind == "xid":
            more.append(
                f"recovery_target_xid: whether xid {target.value} is in the archived WAL after backup "
                f"{m.id} is known only during recovery (see docs/pitr.md)"
            )
        return RestorePlan(m, tli, first, last, warnings + more)
    if not misfits:
        raise BackupNotFound(
            f"there are no physical backups of cluster {cluster!r} in {repo.storage.url}",
            hint="take one with `contentflow-backupd backup --kind full --mode physical`",
        )
    oldest, why = misfits[-1]
    if all(f.too_late for _, f in misfits):
        what = (
            "before the oldest physical backup ended"
            if ref == "latest"
            else "before backup " + ref + " ended"
        )
        raise UsageError(
            f"the target ({target.describe()}) is {what}: {oldest.id}: {why.reason}. A backup can only "
            "recover forward, to a point after it ended; nothing was written",
            hint="choose a later target, or an older backup" if ref != "latest" else None,
        )
    reasons = "; ".join(f"{m.id}: {f.reason}" for m, f in misfits[:5])
    raise UsageError(
        f"no physical backup of cluster {cluster!r} can be recovered to {target.describe()} on timeline "
        f"{target.timeline}: {reasons}; nothing was written",
        hint="--target-timeline current follows the backup's own timeline",
    )


def _check_wal(
    view: ArchiveView, m: Manifest, path: list[Span], target: RecoveryTarget, point: RestorePoint | None
) -> tuple[str, str, list[str]]:
    """Walk the archived segments from the backup's first one along ``path``; refuse when the
    target is beyond the archived chain. Returns the first and last segments and warnings."""
    size = int(m.details["wal_segment_size"])
    first = parse_segment(m.details["wal_first"], size).number
    backup_last = parse_segment(m.details["wal_last"], size).number
    need = backup_last
    if target.lsn is not None:
        need = max(need, target.lsn // size)
    if point is not None:
        need = max(need, (parse_lsn(point.lsn) - 1) // size)
    newest: tuple[datetime, str] | None = None
    segno = first
    while True:
        name = Segment(timeline_at(path, segno, size), segno).name(size)
        listing = view.listing(timeline_at(path, segno, size))
        if name not in listing:
            break
        modified = listing[name]
        if modified is not None and (newest is None or modified > newest[0]):
            newest = (modified, name)
        done = segno >= need
        if target.kind == "time":
            done = done and modified is not None and target.time is not None and modified >= target.time
        if done and target.kind in ("time", "lsn", "name"):
            return Segment(int(m.details["timeline"]), first).name(size), name, []
        segno += 1
    last = Segment(timeline_at(path, segno - 1, size), segno - 1).name(size) if segno > first else None
    later = _segments_after(view, path, segno, size)
    if segno <= backup_last:
        raise IntegrityError(
            f"backup {m.id} cannot be restored: WAL segment {name}, which it needs to be consistent, is "
            "not in the archive; nothing was written",
            key=view.archive.key(name),
            hint="run `contentflow-backupd wal verify`; restore another backup",
        )
    gap = f"WAL segment {name} is missing from the archive ({later} later segments exist beyond the gap)"
    if target.kind in ("lsn", "name") or (target.kind == "time" and later):
        raise UsageError(
            f"the target ({target.describe()}) is not reachable from backup {m.id}: "
            + (gap if later else f"the archive ends at {last}; WAL segment {name} is not archived (yet)")
            + "; nothing was written",
            hint="wait for archiving (SELECT pg_switch_wal() on the server closes the current segment)",
        )
    if target.kind == "time":
        when = f"{newest[1]} was stored at {iso(newest[0])}" if newest else "no segment has a stored time"
        raise UsageError(
            f"the target time {iso(target.time)} is not reachable: no archived WAL was stored at or after "
            f"it (the newest, {when}); nothing was written",
            hint="wait for archiving (SELECT pg_switch_wal() on the server closes the current segment)",
        )
    warnings = [f"{gap}: recovery will end at {last}"] if later else []
    assert last is not None
    return Segment(int(m.details["timeline"]), first).name(size), last, warnings


def _segments_after(view: ArchiveView, path: list[Span], segno: int, size: int) -> int:
    """Archived segments past ``segno`` on the timelines of ``path``."""
    return sum(1 for s in path for n in view.listing(s.timeline) if parse_segment(n, size).number > segno)
