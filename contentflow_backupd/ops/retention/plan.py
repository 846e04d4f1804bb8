"""Retention as a pure function: which backups, generations and WAL files to delete, and why.

``plan_expiry`` sees the repository as plain data (what ``ops.retention.apply.collect_inventory`` read
from storage: storage is the truth) and returns an :class:`ExpiryPlan`. No I/O, no clock: the
same inputs always give the same plan. The rules (docs/retention.md explains them to users):

Backups (every committed backup, i.e. every manifest; all modes of the cluster together):

- Per mode (logical, physical), the newest full backup and the ``min_full`` newest full backups
  (by ``finished_at``) are kept, whatever their age; so is the full with the greatest id (ids sort
  by start second: it is the full whose generation new incrementals join; it differs from the
  newest only when two fulls started within one second).
- Any other full backup whose ``finished_at`` is more than ``retention.full`` ago is deleted; an
  incremental more than ``retention.incremental`` ago likewise. An incremental's manifest lists
  every chunk it needs, so it depends only on its generation's chunks, never on its full's
  manifest: deleting a full keeps its generation alive while one of its incrementals is kept.
- A native incremental (``pg_basebackup --incremental``, PostgreSQL 17+) is useless without
  its parents: restore combines it with every backup back to its base (``ops.backup.native``). When one
  is kept, so is its parent, and that parent's parent, up to the base, whatever their ages.
- A backup whose manifest cannot be read is kept (and warned about): its generation is unknown,
  so a damaged full holds its own generation (named after its id) and a damaged incremental holds
  every generation that sorts before it; and no WAL is deleted while it stays unreadable.

Generations (the chunk directories ``<cluster>/chunks/<generation>/``):

- A generation that a kept backup uses is kept, with every chunk in it (chunks that only expired
  incrementals or failed attempts uploaded stay until the whole generation goes).
- A generation no kept backup uses is deleted only when its newest chunk object is older than
  ``retention.gc_grace``: a backup still being written has no manifest yet, and must not lose its
  chunks.

WAL (``<cluster>/wal/<timeline>/<file>``, ages from the objects' modified time):

- ``.history`` files are always kept (recovery follows timeline switches through them).
- Every file from ``wal_first`` to ``wal_last`` of every kept physical backup is kept (the WAL it
  needs to become consistent), and every file at or after the ``wal_first`` of the newest kept
  physical backup, by ``finished_at`` (so the newest backup can always be rolled forward to the
  latest WAL; later timelines sort after earlier ones, and are kept too).
- Any other file more than ``retention.wal`` old is deleted.

Object lock (``policy.lock_margin_s`` set): an object the rules above would delete is kept while
its retain-until date (``ops.retention.lock_rule``, from the object's modified time) is in the future: the
backup, generation or WAL file is planned "keep" with the date in the reason, and deleted by a
later run.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from contentflow_backupd.model import BackupKind, BackupMode, iso
from contentflow_backupd.ops.retention.lock_rule import chunk_until, manifest_until, wal_until
from contentflow_backupd.timespec import format_duration
from contentflow_backupd.wal import classify

Action = Literal["keep", "delete"]

# WAL reasons are categories (there may be thousands of files): counted in the JSON report.
WAL_HISTORY = "timeline history files are always kept"
WAL_NEEDED = "needed by a kept physical backup to reach consistency"
WAL_ROLL_FORWARD = "at or after the start of the newest kept physical backup"
WAL_YOUNG = "within retention.wal"
WAL_OLD = "older than retention.wal"
WAL_UNKNOWN_AGE = "modified time unknown"
WAL_HELD = "kept while a backup manifest is unreadable"
WAL_NOT_WAL = "not a WAL archive file name"
WAL_LOCKED = "older than retention.wal, but kept: object lock until its retain-until date"


@dataclass(frozen=True)
class RetentionPolicy:
    """Retention settings in seconds (``wiring.retention_policy`` builds it from settings)."""

    full_s: float
    incremental_s: float
    wal_s: float
    min_full: int = 1
    gc_grace_s: float = 86400.0
    lock_margin_s: float | None = None
    """Set when objects are written under S3 Object Lock (``BACKUPD_S3__OBJECT_LOCK``): the
    margin added to retain-until dates (``ops.retention.lock_rule``); None: no object lock."""

    def __post_init__(self) -> None:
        if self.lock_margin_s is not None and self.lock_margin_s < 0:
            raise ValueError("lock_margin_s must not be negative")
        if self.min_full < 1:
            raise ValueError("min_full must be at least 1: the newest full backup is always kept")
        for name in ("full_s", "incremental_s", "wal_s", "gc_grace_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be greater than zero")


@dataclass(frozen=True)
class StoredBackup:
    """A committed backup as its manifest describes it (``error`` set: the manifest could not be
    read, and only the id, its kind and the key are known)."""

    id: str
    kind: BackupKind
    manifest_key: str
    manifest_bytes: int
    mode: BackupMode | None = None
    generation: str | None = None
    finished_at: datetime | None = None
    wal_first: str | None = None
    wal_last: str | None = None
    error: str | None = None
    manifest_modified: datetime | None = None
    """When the manifest object was written (its modified time in storage)."""
    parent_id: str | None = None
    native: bool = False
    """A native incremental: restoring it needs ``parent_id`` (and that one's chain)."""

    @property
    def readable(self) -> bool:
        return self.error is None and self.mode is not None and self.finished_at is not None


@dataclass(frozen=True)
class StoredGeneration:
    """The chunk objects under ``<cluster>/chunks/<generation>/``."""

    generation: str
    objects: int
    bytes: int
    newest_modified: datetime | None


@dataclass(frozen=True)
class StoredWal:
    key: str
    name: str
    size: int
    modified: datetime | None


@dataclass(frozen=True)
class BackupDecision:
    backup: StoredBackup
    action: Action
    reason: str


@dataclass(frozen=True)
class GenerationDecision:
    generation: StoredGeneration
    action: Action
    reason: str


@dataclass(frozen=True)
class WalDecision:
    wal: StoredWal
    action: Action
    reason: str


@dataclass(frozen=True)
class ExpiryPlan:
    """What retention keeps and deletes, with reasons. Backups, generations and WAL files are in
    key order (oldest first)."""

    cluster: str
    now: datetime
    policy: RetentionPolicy
    backups: tuple[BackupDecision, ...]
    generations: tuple[GenerationDecision, ...]
    wal: tuple[WalDecision, ...]
    stored_bytes: int
    """Bytes of every object under the cluster when the plan was made."""
    warnings: tuple[str, ...] = field(default=())

    @property
    def backups_to_delete(self) -> list[StoredBackup]:
        return [d.backup for d in self.backups if d.action == "delete"]

    @property
    def generations_to_delete(self) -> list[StoredGeneration]:
        return [d.generation for d in self.generations if d.action == "delete"]

    @property
    def wal_to_delete(self) -> list[StoredWal]:
        return [d.wal for d in self.wal if d.action == "delete"]

    @property
    def delete_bytes(self) -> int:
        return (
            sum(b.manifest_bytes for b in self.backups_to_delete)
            + sum(g.bytes for g in self.generations_to_delete)
            + sum(w.size for w in self.wal_to_delete)
        )

    @property
    def empty(self) -> bool:
        """Nothing to delete."""
        return not (self.backups_to_delete or self.generations_to_delete or self.wal_to_delete)

    def to_json(self) -> dict[str, Any]:
        """``backups``, ``generations`` and ``wal`` of the ``expire --json`` report."""
        deleted = self.wal_to_delete
        kept = [d for d in self.wal if d.action == "keep"]
        return {
            "cluster": self.cluster,
            "now": iso(self.now),
            "backups": [
                {
                    "id": d.backup.id,
                    "kind": d.backup.kind,
                    "mode": d.backup.mode,
                    "finished_at": iso(d.backup.finished_at),
                    "action": d.action,
                    "reason": d.reason,
                }
                for d in self.backups
            ],
            "generations": [
                {
                    "generation": d.generation.generation,
                    "objects": d.generation.objects,
                    "bytes": d.generation.bytes,
                    "action": d.action,
                    "reason": d.reason,
                }
                for d in self.generations
            ],
            "wal": {
                "delete_segments": len(deleted),
                "delete_bytes": sum(w.size for w in deleted),
                "first": deleted[0].name if deleted else None,
                "last": deleted[-1].name if deleted else None,
                "kept_segments": len(kept),
                "kept_reasons": dict(sorted(Counter(d.reason for d in kept).items())),
            },
            "plan_delete_bytes": self.delete_bytes,
            "stored_bytes": self.stored_bytes,
            "warnings": list(self.warnings),
        }


def plan_expiry(
    backups: list[StoredBackup],
    chunk_generations: list[StoredGeneration],
    wal_objects: list[StoredWal],
    policy: RetentionPolicy,
    now: datetime,
    *,
    cluster: str = "main",
    other_bytes: int = 0,
) -> ExpiryPlan:
    """The retention plan of one cluster (see the module docstring for the rules).

    ``other_bytes``: stored bytes of the cluster's objects that are neither manifests, chunks nor
    WAL (they count in ``stored_bytes``). Input order does not matter."""
    ordered = sorted(backups, key=lambda b: b.id)
    decisions = _decide_backups(ordered, policy, now)
    kept = [d.backup for d in decisions if d.action == "keep"]
    unreadable = [b for b in ordered if not b.readable]
    generations = _decide_generations(
        sorted(chunk_generations, key=lambda g: g.generation), kept, policy, now
    )
    wal = _decide_wal(sorted(wal_objects, key=lambda w: w.key), kept, bool(unreadable), policy, now)
    warnings = tuple(
        f"backup {b.id}: manifest {b.manifest_key} is unreadable ({b.error}); it is kept, and so are "
        "the chunks it may use and all WAL, until it is repaired or removed by hand"
        for b in unreadable
    )
    stored = (
        other_bytes
        + sum(b.manifest_bytes for b in backups)
        + sum(g.bytes for g in chunk_generations)
        + sum(w.size for w in wal_objects)
    )
    return ExpiryPlan(
        cluster=cluster,
        now=now,
        policy=policy,
        backups=tuple(decisions),
        generations=tuple(generations),
        wal=tuple(wal),
        stored_bytes=stored,
        warnings=warnings,
    )


def _age(now: datetime, then: datetime) -> float:
    return (now - then).total_seconds()


def _fmt(seconds: float) -> str:
    return format_duration(max(0, round(seconds)))


def _decide_backups(
    ordered: list[StoredBackup], policy: RetentionPolicy, now: datetime
) -> list[BackupDecision]:
    protected: dict[str, str] = {}
    readable = [b for b in ordered if b.readable]
    for mode in sorted({b.mode for b in readable if b.mode is not None}):
        fulls = [b for b in readable if b.kind == "full" and b.mode == mode]
        for rank, b in enumerate(sorted(fulls, key=_newness, reverse=True)[: policy.min_full]):
            protected[b.id] = (
                f"newest {mode} full backup: always kept"
                if rank == 0
                else f"one of the {policy.min_full} newest {mode} full backups (retention.min_full)"
            )
        if fulls:
            joined = max(b.id for b in fulls)
            protected.setdefault(joined, f"the {mode} full backup new incrementals join (greatest id)")
    out: list[BackupDecision] = []
    for b in ordered:
        if not b.readable or b.finished_at is None:
            out.append(BackupDecision(b, "keep", f"manifest unreadable, kept: {b.error}"))
            continue
        if b.id in protected:
            out.append(BackupDecision(b, "keep", protected[b.id]))
            continue
        limit = policy.full_s if b.kind == "full" else policy.incremental_s
        age = _age(now, b.finished_at)
        if age > limit:
            reason = f"finished {_fmt(age)} ago, older than retention.{b.kind} ({_fmt(limit)})"
            until = manifest_until(policy, b.id, b.manifest_modified or b.finished_at)
            if until is not None and until > now:
                out.append(BackupDecision(b, "keep", f"{reason}, but kept: {_locked(until)}"))
            else:
                out.append(BackupDecision(b, "delete", reason))
        else:
            out.append(BackupDecision(b, "keep", f"within retention.{b.kind} ({_fmt(limit)})"))
    return _keep_native_chains(out)


def _keep_native_chains(decisions: list[BackupDecision]) -> list[BackupDecision]:
    """Keep every parent of a kept native incremental (newest first, so whole chains follow)."""
    by_id = {d.backup.id: i for i, d in enumerate(decisions)}
    for i in sorted(range(len(decisions)), key=lambda i: decisions[i].backup.id, reverse=True):
        d = decisions[i]
        if d.action != "keep" or not d.backup.native or d.backup.parent_id not in by_id:
            continue
        j = by_id[d.backup.parent_id or ""]
        parent = decisions[j]
        if parent.action == "delete":
            decisions[j] = BackupDecision(
                parent.backup,
                "keep",
                f"{parent.reason}, but kept: kept native incremental {d.backup.id} needs it",
            )
    return decisions


def _locked(until: datetime) -> str:
    return f"object lock until {iso(until)}"


def _newness(b: StoredBackup) -> tuple[datetime, str]:
    assert b.finished_at is not None
    return b.finished_at, b.id


def _decide_generations(
    ordered: list[StoredGeneration], kept: list[StoredBackup], policy: RetentionPolicy, now: datetime
) -> list[GenerationDecision]:
    users: dict[str, list[str]] = defaultdict(list)
    for b in kept:
        if b.readable and b.generation is not None:
            users[b.generation].append(b.id)
    held_full = {b.id for b in kept if not b.readable and b.kind == "full"}
    held_before = max((b.id for b in kept if not b.readable and b.kind == "incremental"), default=None)
    out: list[GenerationDecision] = []
    for g in ordered:
        name = g.generation
        if name in users:
            ids = users[name]
            more = f" and {len(ids) - 1} more" if len(ids) > 1 else ""
            out.append(GenerationDecision(g, "keep", f"used by kept backup {ids[-1]}{more}"))
        elif name in held_full or (held_before is not None and name < held_before):
            out.append(GenerationDecision(g, "keep", "may be used by a backup whose manifest is unreadable"))
        elif g.newest_modified is None:
            out.append(GenerationDecision(g, "keep", "no kept backup uses it, but its age is unknown"))
        else:
            age = _age(now, g.newest_modified)
            until = chunk_until(policy, name, g.newest_modified)
            if age > policy.gc_grace_s:
                reason = (
                    f"no kept backup uses it; newest chunk {_fmt(age)} old, older than "
                    f"retention.gc_grace ({_fmt(policy.gc_grace_s)})"
                )
                if until is not None and until > now:
                    out.append(GenerationDecision(g, "keep", f"{reason}, but kept: {_locked(until)}"))
                else:
                    out.append(GenerationDecision(g, "delete", reason))
            else:
                reason = (
                    f"no kept backup uses it, but its newest chunk is within retention.gc_grace "
                    f"({_fmt(policy.gc_grace_s)}): a backup may still be writing it"
                )
                out.append(GenerationDecision(g, "keep", reason))
    return out


def _decide_wal(
    ordered: list[StoredWal],
    kept: list[StoredBackup],
    held: bool,
    policy: RetentionPolicy,
    now: datetime,
) -> list[WalDecision]:
    physical = [
        b for b in kept if b.readable and b.mode == "physical" and b.wal_first is not None and b.wal_last
    ]
    ranges = [(b.wal_first or "", b.wal_last or "") for b in physical]
    floor = max(physical, key=_newness).wal_first if physical else None
    out: list[WalDecision] = []
    for w in ordered:
        reason = _wal_reason(w, ranges, floor, held, policy, now)
        out.append(WalDecision(w, "delete" if reason == WAL_OLD else "keep", reason))
    return out


def _wal_reason(
    w: StoredWal,
    ranges: list[tuple[str, str]],
    floor: str | None,
    held: bool,
    policy: RetentionPolicy,
    now: datetime,
) -> str:
    kind = classify(w.name)
    segment = w.name[:24]  # .backup and .partial files sort with their segment
    if kind is None:
        return WAL_NOT_WAL
    if kind == "history":
        return WAL_HISTORY
    if held:
        return WAL_HELD
    # Names of one timeline sort like their positions, and both ends of a range share a timeline.
    if any(first <= segment <= last for first, last in ranges):
        return WAL_NEEDED
    if floor is not None and segment >= floor:
        return WAL_ROLL_FORWARD
    if w.modified is None:
        return WAL_UNKNOWN_AGE
    if _age(now, w.modified) <= policy.wal_s:
        return WAL_YOUNG
    until = wal_until(policy, w.modified)
    return WAL_LOCKED if until is not None and until > now else WAL_OLD
