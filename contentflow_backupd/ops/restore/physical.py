"""``restore_physical``: a new data directory from a physical backup, set up to recover to the end
of the WAL archive or to a target (time, LSN, xid or restore point name). PostgreSQL is not
started.

Order of work, so that nothing is written when the restore cannot succeed: parse the target;
choose the backup from the repository's manifests (the newest one that ended before the target
and lies on the history of the recovery target timeline); check that the archive holds every
WAL segment from the backup to the target; check every object of the backup; check the
directories. Only then extract, write the recovery settings and sync.

The rules for choosing a backup and for reachability are in ``docs/pitr.md``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import structlog

from contentflow_backupd.catalog.base import AuditCatalog, RestorePointCatalog
from contentflow_backupd.errors import (
    BackupdError,
    BackupNotFound,
    IntegrityError,
    ObjectNotFound,
    UsageError,
)
from contentflow_backupd.model import RestorePoint, Scope, iso
from contentflow_backupd.ops.audit import audited
from contentflow_backupd.ops.backup.native import native_chain
from contentflow_backupd.ops.verify.backups import missing_objects
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.manifest import Manifest, StreamEntry
from contentflow_backupd.repository.pipeline import ChunkReader
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.source.base import (
    DataDirectories,
    ExtractStats,
    NewDirectory,
    Owner,
    PostgresDrivers,
    RecoveryConfig,
)
from contentflow_backupd.wal import Segment, classify, format_lsn, history_name, parse_lsn, parse_segment

log = structlog.get_logger(__name__)

TargetKind = Literal["time", "lsn", "xid", "name"]
TargetAction = Literal["promote", "pause", "shutdown"]
MAX_RESTORE_POINT_NAME = 63  # PostgreSQL's MAXFNAMELEN - 1


# -- the target ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops (``kind`` None: at the end of the archive), what the server does
    there (``action``) and which timeline it follows (``latest``, ``current`` or a number)."""

    kind: TargetKind | None = None
    value: str = ""
    """The target as PostgreSQL gets it (times normalised to UTC, LSNs upper case)."""
    time: datetime | None = None
    lsn: int | None = None
    action: TargetAction = "pause"
    timeline: str = "latest"

    @classmethod
    def parse(
        cls,
        *,
        time: str | None = None,
        lsn: str | None = None,
        xid: str | None = None,
        name: str | None = None,
        action: str | None = None,
        timeline: str | None = None,
    ) -> RecoveryTarget:
        given = {
            k: v for k, v in (("time", time), ("lsn", lsn), ("xid", xid), ("name", name)) if v is not None
        }
        if len(given) > 1:
            raise UsageError(
                f"give at most one recovery target (got {', '.join('--target-' + k for k in given)})"
            )
        tl = (timeline or "latest").strip().lower()
        if tl not in ("latest", "current") and not (tl.isdigit() and int(tl) > 0):
            raise UsageError(
                f"--target-timeline: {timeline!r} is not 'latest', 'current' or a timeline number"
            )
        if action is not None and action not in ("promote", "pause", "shutdown"):
            raise UsageError(f"--target-action: {action!r} is not promote, pause or shutdown")
        act = cast(TargetAction, action or "pause")
        if not given:
            if action is not None:
                raise UsageError("--target-action needs a target (--target-time, -lsn, -xid or -name)")
            return cls(timeline=tl)
        kind, raw = next(iter(given.items()))
        if kind == "time":
            at = _parse_time(raw)
            return cls("time", at.isoformat(sep=" "), time=at, action=act, timeline=tl)
        if kind == "lsn":
            try:
                pos = parse_lsn(raw)
            except ValueError as exc:
                raise UsageError(f"--target-lsn: {exc}") from None
            return cls("lsn", format_lsn(pos), lsn=pos, action=act, timeline=tl)
        if kind == "xid":
            if not raw.strip().isdigit() or not 3 <= int(raw) < 2**64:
                raise UsageError(f"--target-xid: {raw!r} is not a transaction id (a number, 3 or more)")
            return cls("xid", str(int(raw)), action=act, timeline=tl)
        check_restore_point_name(raw, "--target-name")
        return cls("name", raw, action=act, timeline=tl)

    def describe(self) -> str:
        return "the end of the WAL archive" if self.kind is None else f"{self.kind} {self.value}"

    def settings(self) -> dict[str, str]:
        """The ``recovery_target_*`` settings."""
        out: dict[str, str] = {}
        if self.kind is not None:
            out[f"recovery_target_{self.kind}"] = self.value
            out["recovery_target_action"] = self.action
        out["recovery_target_timeline"] = self.timeline
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value or None,
            "action": self.action if self.kind else None,
            "timeline": self.timeline,
        }


def _parse_time(raw: str) -> datetime:
    try:
        at = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise UsageError(
            f"--target-time: {raw!r} is not an ISO 8601 time",
            hint="e.g. 2026-11-24T05:44:59Z or '2026-11-24 05:44:59.123+01'; without a zone, UTC",
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)


def check_restore_point_name(name: str, what: str = "restore point name") -> str:
    if not name or len(name) > MAX_RESTORE_POINT_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise UsageError(f"{what}: {name!r} must be 1 to {MAX_RESTORE_POINT_NAME} printable characters")
    return name


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


# -- restoring -----------------------------------------------------------------------------
@dataclass
class PhysicalRestoreOptions:
    cluster: str
    backup: str
    """A backup id or ``latest``."""
    pgdata: Path
    target: RecoveryTarget
    tool: Sequence[str]
    """How PostgreSQL runs this program (``restore_command``)."""
    recovery: RecoveryConfig
    owner: str | None = None
    keep_archiving: bool = False
    concurrency: int = 8
    pg_bin: Path | None = None
    """Where ``pg_combinebackup`` is (``BACKUPD_PG_BIN``); needed for native incrementals."""


@dataclass
class PhysicalRestoreResult:
    backup_id: str
    pgdata: Path
    target: RecoveryTarget
    timeline: int
    restored_bytes: int
    files: int
    duration_seconds: float
    restore_command: str
    wal: dict[str, str]
    recovery_dir: Path | None
    next_steps: list[str]
    warnings: list[str]
    chain: list[str] = field(default_factory=list)
    """A native incremental's chain (full first) that pg_combinebackup combined; else empty."""

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "succeeded",
            "backup_id": self.backup_id,
            "chain": self.chain,
            "pgdata": str(self.pgdata),
            "target": {**self.target.to_json(), "resolved_timeline": self.timeline},
            "restored_bytes": self.restored_bytes,
            "files": self.files,
            "duration_seconds": round(self.duration_seconds, 3),
            "restore_command": self.restore_command,
            "wal": self.wal,
            "recovery_dir": str(self.recovery_dir) if self.recovery_dir else None,
            "next_steps": self.next_steps,
            "warnings": self.warnings,
        }


def restore_physical(
    repo: Repository,
    archive: WalArchive,
    opts: PhysicalRestoreOptions,
    *,
    pg: PostgresDrivers,
    catalog: RestorePointCatalog | None = None,
    audit: AuditCatalog | None = None,
) -> PhysicalRestoreResult:
    """``pg``: the PostgreSQL side (``pg.datadir`` writes the data directory, ``pg.combiner``
    runs pg_combinebackup for a native chain); ``catalog``: where restore points are looked up;
    ``audit``: the catalog to record the restore in (ops/audit.py), None records nothing."""
    details = {"cluster": opts.cluster, "mode": "physical", "pgdata": str(opts.pgdata)}
    details["target"] = opts.target.describe()
    with audited(audit, "restore", objects=[opts.backup], details=details, repo=repo) as recorded:
        result = _restore_physical(repo, archive, opts, catalog, pg)
        recorded.details.update(backup_id=result.backup_id, restored_bytes=result.restored_bytes)
        return result


def _restore_physical(
    repo: Repository,
    archive: WalArchive,
    opts: PhysicalRestoreOptions,
    catalog: RestorePointCatalog | None,
    pg: PostgresDrivers,
) -> PhysicalRestoreResult:
    t0 = time.monotonic()
    files = pg.datadir
    pgdata = Path(os.path.abspath(opts.pgdata))
    owner = files.resolve_owner(opts.owner)
    point = _restore_point(catalog, Scope(repo.id, opts.cluster), opts.target)
    plan = plan_physical_restore(repo, archive, opts.cluster, opts.backup, opts.target, point)
    m = plan.manifest
    chain = native_chain(repo, m)
    entries = [_base_stream(repo, link, opts.concurrency, m) for link in chain]
    combine_tool = None
    if len(chain) > 1:
        major = int(m.details.get("pg_version_num", 0)) // 10000
        combine_tool = pg.combiner.find(major, opts.pg_bin)
    files.check_new_directory(pgdata, "--pgdata")
    rdir = None if opts.recovery.config_file else files.new_directory(files.recovery_dir_of(pgdata), owner)
    if rdir is not None:
        files.check_new_directory(rdir.path, "the recovery settings directory")
    warnings = plan.warnings + _access_warnings(files, opts.recovery, owner)
    restored_bytes = sum(e.size for e in entries)
    log.info(
        "restore_started",
        backup_id=m.id,
        pgdata=str(pgdata),
        target=opts.target.describe(),
        bytes=restored_bytes,
        chain=[link.id for link in chain] if len(chain) > 1 else None,
    )
    data = files.new_directory(pgdata, owner)
    made: list[NewDirectory] = []
    try:
        data.make()
        made.append(data)
        if combine_tool is None:
            stats = _extract(files, repo, m, entries[0], pgdata, owner, opts.concurrency)
        else:
            stats = _combine_chain(pg, repo, chain, entries, pgdata, owner, combine_tool, opts.concurrency)
        config = opts.recovery.config_file
        if rdir is not None:
            rdir.make()
            made.append(rdir)
            config = files.write_recovery_config(rdir.path, opts.recovery, owner)
        assert config is not None
        command = files.restore_command(opts.tool, config)
        settings = {"restore_command": command, **opts.target.settings()}
        if not opts.keep_archiving:
            settings["archive_mode"] = "off"
        header = (
            f"Recovery settings written by contentflow-backupd: backup {m.id}, restored "
            f"{iso(datetime.now(UTC))},\ntarget {opts.target.describe()}. "
            "PostgreSQL removes recovery.signal when recovery ends."
        )
        files.write_recovery_settings(pgdata, settings, owner, header=header)
    except BaseException:
        for directory in reversed(made):
            directory.discard()
        raise
    result = PhysicalRestoreResult(
        backup_id=m.id,
        pgdata=pgdata,
        target=opts.target,
        timeline=plan.timeline,
        restored_bytes=restored_bytes,
        files=stats.files,
        duration_seconds=time.monotonic() - t0,
        restore_command=command,
        wal={"first": plan.wal_first, "last": plan.wal_last},
        recovery_dir=rdir.path if rdir else None,
        next_steps=_next_steps(pgdata, owner, opts, rdir.path if rdir else None, stats.names),
        warnings=warnings,
        chain=[link.id for link in chain] if len(chain) > 1 else [],
    )
    log.info(
        "restore_completed",
        backup_id=m.id,
        pgdata=str(pgdata),
        duration_seconds=round(result.duration_seconds, 3),
    )
    return result


def _extract(
    files: DataDirectories,
    repo: Repository,
    m: Manifest,
    entry: StreamEntry,
    dest: Path,
    owner: Owner,
    concurrency: int,
) -> ExtractStats:
    reader = ChunkReader(repo, m.cluster, m.generation, concurrency=concurrency)
    stats = files.extract_tar(
        reader.iter_stream(entry, manifest_key=layout.manifest_key(m.cluster, m.id)), dest, owner
    )
    if "backup_label" not in stats.names:
        raise IntegrityError(
            f"backup {m.id} holds no backup_label: not a base backup",
            key=layout.manifest_key(m.cluster, m.id),
        )
    return stats


def _combine_chain(
    pg: PostgresDrivers,
    repo: Repository,
    chain: list[Manifest],
    entries: list[StreamEntry],
    pgdata: Path,
    owner: Owner,
    tool: Path,
    concurrency: int,
) -> ExtractStats:
    """Extract each backup of a native chain into a temporary directory next to ``pgdata`` (the
    same file system, so pg_combinebackup can link), combine them into ``pgdata``, remove them."""
    work = Path(tempfile.mkdtemp(prefix=f".{pgdata.name}.combine-", dir=pgdata.parent))
    try:
        inputs: list[Path] = []
        for i, (link, entry) in enumerate(zip(chain, entries, strict=True)):
            dest = work / f"{i:03d}-{link.id}"
            dest.mkdir(mode=0o700)
            log.info("restore_chain_extracting", backup_id=link.id, position=i + 1, of=len(chain))
            _extract(pg.datadir, repo, link, entry, dest, owner, concurrency)
            inputs.append(dest)
        major = int(chain[-1].details.get("pg_version_num", 0)) // 10000
        pg.combiner.combine(tool, inputs, pgdata, link=major >= 18)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pg.datadir.give_tree(pgdata, owner)
    stats = ExtractStats(names=set(os.listdir(pgdata)))
    for _top, dirs, files in os.walk(pgdata):
        stats.files += len(files)
        stats.directories += len(dirs)
    return stats


def _restore_point(
    catalog: RestorePointCatalog | None, scope: Scope, target: RecoveryTarget
) -> RestorePoint | None:
    if target.kind != "name":
        return None
    if catalog is None:
        raise UsageError("--target-name needs the catalog, where restore points are recorded")
    point = catalog.get_restore_point(scope, target.value)
    if point is None:
        raise UsageError(
            f"cluster {scope.cluster!r} has no restore point named {target.value!r} in the catalog; "
            "nothing was written",
            hint="list them with `contentflow-backupd restore-point list`",
        )
    return point


def _base_stream(
    repo: Repository, m: Manifest, concurrency: int, wanted: Manifest | None = None
) -> StreamEntry:
    """The tar stream of ``m``, whose objects must all be there (``wanted``: the backup being
    restored, when ``m`` is a link of its native chain)."""
    entry = next((s for s in m.streams if s.type == "pg_basebackup-tar"), None)
    if entry is None:
        raise IntegrityError(
            f"backup {m.id} has no pg_basebackup-tar stream", key=layout.manifest_key(m.cluster, m.id)
        )
    faults = missing_objects(repo, m, concurrency)
    if faults:
        details = "; ".join(f"{f.key}: {f.problem}" for f in faults[:10])
        who = f"backup {m.id}"
        if wanted is not None and wanted.id != m.id:
            who = f"backup {wanted.id} is a native incremental whose chain needs backup {m.id}, which"
        raise IntegrityError(
            f"{who} cannot be restored: {len(faults)} object(s) missing or damaged: {details}; "
            "nothing was written",
            key=faults[0].key,
            hint="run `contentflow-backupd verify` and restore an older backup",
        )
    return entry


def _access_warnings(files: DataDirectories, recovery: RecoveryConfig, owner: Owner) -> list[str]:
    paths = [recovery.config_file] if recovery.config_file else []
    if recovery.secret_file is not None:
        paths.append(recovery.secret_file)
    return [
        f"{path} is not readable by {owner.name}, who runs PostgreSQL and its restore_command: "
        "fix its permissions before starting the server"
        for path in paths
        if not files.readable_by(path, owner)
    ]


def _next_steps(
    pgdata: Path, owner: Owner, opts: PhysicalRestoreOptions, rdir: Path | None, names: set[str]
) -> list[str]:
    steps: list[str] = []
    if owner.uid == 0:
        steps.append(
            "the data directory belongs to root, and PostgreSQL refuses to run as root: "
            "restore again with --owner postgres"
        )
    if "postgresql.conf" not in names:
        steps.append(
            "the backup holds no postgresql.conf (the source keeps it outside its data directory): "
            f"provide one, e.g. start with -c config_file=..., or copy it to {pgdata}"
        )
    else:
        steps.append(
            f"{pgdata}/postgresql.conf is the source server's: change port, listen_addresses, "
            "unix_socket_directories and paths that would clash with a server running here"
        )
    who = "" if owner.is_me else f"as {owner.name} "
    steps.append(f"start it {who}with: pg_ctl -D {pgdata} -l <logfile> start")
    t = opts.target
    if t.kind is None:
        steps.append(
            "PostgreSQL replays all archived WAL, then ends recovery and opens for writes on a new timeline"
        )
    elif t.action == "promote":
        steps.append(
            f"at the target ({t.describe()}) recovery ends and the server opens for writes on a new timeline"
        )
    elif t.action == "pause":
        steps.append(
            f"at the target ({t.describe()}) recovery pauses and the server answers read-only queries: "
            "check the data, then SELECT pg_wal_replay_resume(); to end recovery and open for writes "
            "(new timeline)"
        )
    else:
        steps.append(
            f"at the target ({t.describe()}) the server shuts down; to open it, set recovery_target_action = "
            f"'promote' in {pgdata}/postgresql.auto.conf and start it again"
        )
    if opts.keep_archiving:
        steps.append(
            "archiving stays as configured: this server's new timeline goes into the same repository and "
            "cluster, and later restores with --target-timeline latest follow it"
        )
    else:
        steps.append(
            "archive_mode is off in postgresql.auto.conf, so this server pushes no WAL into the repository; "
            "archive it into another repository or BACKUPD_CLUSTER before turning archiving on"
        )
    steps.extend(opts.recovery.notes)
    if rdir is not None:
        steps.append(
            f"remove {rdir} once recovery has ended: it holds the settings (and secret) restore_command uses"
        )
    return steps
