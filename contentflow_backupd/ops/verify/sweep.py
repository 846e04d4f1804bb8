"""Continuous verification: ``verify_since_last`` (``verify --since-last``, the daemon's ``verify``
job), and the quick check the daemon runs right after each backup.

One run of ``verify_since_last``:

1. lists the cluster once and reads (authenticates) every manifest; every object a manifest
   names must exist with the stored size the manifest says (from the listing: cheap);
2. reads back every object of the backups that the last completed run did not read (new
   backups: their chunks and, for physical backups, the WAL they need to become consistent);
3. re-reads every object with an open corrupt record (a repaired object is resolved);
4. reads a rotating share of all other objects (chunks, WAL, anything under the cluster), sized
   by ``ops.verify.sweep_plan`` so that the whole repository is read at least once per ``full_sweep``;
5. records every bad object that a committed backup needs as corrupt (key, the backups that need
   it, the problem), and resolves open records whose object no kept backup needs any more
   ("no kept backup needs it") or that now reads fine ("reads fine again");
6. saves the state (cursor, pass start, the backups read, ``last_deep_success_at`` = the run's
   start) only when it got this far: a crash repeats work, it never skips any.

"Read back" means: fetched, authenticated (AES-GCM under the object's own key name), decompressed,
and for a chunk its keyed hash equal to its id; see ``ops.verify.sweep_index.check_object``. Bad objects
that no backup needs (chunks of crashed or expired backups awaiting garbage collection) are
reported as ``ignored``, not recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd.catalog.base import CorruptObject, SweepCatalog, VerificationCatalog, VerifyState
from contentflow_backupd.model import Scope, iso, utcnow
from contentflow_backupd.observability import progress
from contentflow_backupd.ops.audit import audited
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.ops.verify.backups import Fault, ordered_map, verify_backup
from contentflow_backupd.ops.verify.repo_check import check_metadata
from contentflow_backupd.ops.verify.sweep_index import (
    ClusterIndex,
    build_index,
    check_object,
    describe,
    is_fault,
)
from contentflow_backupd.ops.verify.sweep_plan import SweepPlan, estimated_pass_end, plan_sweep
from contentflow_backupd.repository.repository import Repository

log = structlog.get_logger(__name__)

UNNEEDED = "no kept backup needs it"
REPAIRED = "reads fine again (repaired)"


@dataclass(frozen=True)
class Finding:
    """A bad object found by a run: ``backup_ids`` are the committed backups that need it."""

    key: str
    backup_ids: tuple[str, ...]
    problem: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "backup_ids": list(self.backup_ids), "problem": self.problem}


@dataclass
class SweepResult:
    cluster: str
    started_at: datetime
    finished_at: datetime
    new_backups: list[str]
    """Backups committed since the last completed run, read in full this run."""
    manifests_read: int
    new_objects_read: int
    sweep_objects_read: int
    rechecked: int
    """Objects with an open corrupt record that were read again."""
    referenced_checked: int
    """Objects named by manifests whose presence and stored size were checked in the listing."""
    bytes_read: int
    found: list[Finding]
    """Bad objects a committed backup needs (recorded as corrupt)."""
    ignored: list[Finding]
    """Bad objects no committed backup needs (not recorded)."""
    resolved: list[CorruptObject]
    open_corrupt: list[CorruptObject]
    """Every open corrupt record after the run (also ones from earlier runs)."""
    plan: SweepPlan
    state: VerifyState
    interval_s: float
    full_sweep_s: float

    @property
    def ok(self) -> bool:
        """No corrupt object is open."""
        return not self.open_corrupt

    @property
    def estimated_pass_end(self) -> datetime:
        return estimated_pass_end(self.plan, self.started_at, interval_s=self.interval_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "corrupt",
            "cluster": self.cluster,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "read": {
                "new_backups": list(self.new_backups),
                "manifests": self.manifests_read,
                "new_objects": self.new_objects_read,
                "sweep_objects": self.sweep_objects_read,
                "rechecked": self.rechecked,
                "referenced_checked": self.referenced_checked,
                "bytes": self.bytes_read,
            },
            "found": [f.to_json() for f in self.found],
            "ignored": [f.to_json() for f in self.ignored],
            "resolved": [r.to_json() for r in self.resolved],
            "open_corrupt": [r.to_json() for r in self.open_corrupt],
            "sweep": {
                "cursor": self.plan.cursor,
                "share": self.plan.share,
                "objects_total": self.state.sweep_objects_total,
                "remaining_in_pass": self.plan.remaining,
                "pass_started_at": iso(self.plan.pass_started_at),
                "passes_completed": self.plan.passes_completed,
                "estimated_pass_end": iso(self.estimated_pass_end),
                "interval_seconds": self.interval_s,
                "full_sweep_seconds": self.full_sweep_s,
            },
        }


def verify_since_last(
    repo: Repository,
    catalog: SweepCatalog,
    cluster: str,
    *,
    full_sweep_s: float,
    interval_s: float,
    now: datetime | None = None,
    concurrency: int = 8,
    lock_dir: Path | None = None,
) -> SweepResult:
    """One run of continuous verification (see the module docstring). ``interval_s``: how often
    runs come (the ``verify`` schedule's period); ``now``: the run's start (default: the clock).
    With ``lock_dir``, holds the local lock ``verify-<cluster>`` (``LockedError`` when another
    run of the cluster holds it). Storage and catalog errors propagate; nothing is saved then."""
    lock = (
        exclusive(lock_dir, f"verify-{cluster}", what=f"verification of cluster {cluster!r}")
        if lock_dir is not None
        else contextlib.nullcontext()
    )
    details = {"cluster": cluster, "mode": "since-last"}
    with lock, audited(catalog, "verify", details=details, repo=repo) as recorded:
        result = _run(repo, catalog, cluster, full_sweep_s, interval_s, now or utcnow(), max(1, concurrency))
        recorded.details.update(
            new_backups=list(result.new_backups),
            found=[f"{f.key}: {f.problem}" for f in result.found[:20]],
            open_corrupt=len(result.open_corrupt),
        )
        if not result.ok:
            recorded.outcome = "failed"
    return result


def _run(
    repo: Repository,
    catalog: SweepCatalog,
    cluster: str,
    full_sweep_s: float,
    interval_s: float,
    started: datetime,
    concurrency: int,
) -> SweepResult:
    scope = Scope(repo.id, cluster)
    state = catalog.get_verify_state(scope)
    open_before = catalog.list_corrupt(scope)
    index = build_index(repo, cluster)
    problems = index.referenced_problems()

    # New: committed backups the last completed run did not read (no clocks involved: a manifest
    # that appeared while that run was listing is new to this one).
    verified = set(state.verified_backups)
    new_ids = [b for b in index.manifests if b not in verified]
    new_keys = {k for b in new_ids for k in index.backup_keys(b) if k in index.listing}
    recheck = {r.key for r in open_before if r.key in index.listing} - new_keys
    skip = index.manifest_keys | new_keys | recheck  # manifests are read on every run
    plan = plan_sweep(
        sorted(k for k in index.listing if k not in skip),
        state.sweep_cursor,
        state.sweep_started_at,
        started,
        interval_s=interval_s,
        full_sweep_s=full_sweep_s,
        total=len(index.listing),
    )
    to_read = [*sorted(new_keys), *sorted(recheck), *plan.keys]
    read_fine, failed, bytes_read = _read_all(repo, index, to_read, concurrency)
    problems.update(failed)
    # Every run also reads the small kinds in full (repo.json, its seal, keys, keyset, audit),
    # checks the WAL archive's shape and the catalog against the manifests (ops/verify/repo_check.py).
    metadata = check_metadata(repo, cluster, index, catalog)
    outside = {f.key: f.problem for f in metadata.faults}

    found: list[Finding] = []
    ignored: list[Finding] = []
    for key, problem in sorted(problems.items()):
        needed, ids = index.needed_by(key)
        (found if needed else ignored).append(Finding(key, ids, problem))
    for key, problem in sorted(outside.items()):
        if key not in problems:
            found.append(Finding(key, index.needed_by(key)[1], problem))
    for f in found:
        log.error(
            "corrupt_object_found",
            cluster=cluster,
            key=f.key,
            backup_ids=list(f.backup_ids),
            problem=f.problem,
        )
        catalog.record_corrupt(scope, f.key, f.backup_ids, f.problem, detected_at=started)
    for f in ignored:
        log.warning("unneeded_object_bad", cluster=cluster, key=f.key, problem=f.problem)
    metadata_keys = {r.key for r in open_before if _is_metadata(cluster, r.key)}
    resolved = _resolve(
        catalog,
        scope,
        index,
        open_before,
        {f.key for f in found},
        read_fine | (metadata_keys - set(outside)),
    )

    new_state = VerifyState(
        cluster=cluster,
        last_deep_success_at=started,
        sweep_cursor=plan.cursor,
        sweep_started_at=plan.pass_started_at,
        sweep_objects_total=len(index.listing),
        verified_backups=tuple(index.manifests),
    )
    catalog.set_verify_state(scope, new_state)
    result = SweepResult(
        cluster=cluster,
        started_at=started,
        finished_at=utcnow(),
        new_backups=new_ids,
        manifests_read=len(index.manifest_keys),
        new_objects_read=len(new_keys) + len(new_ids),
        sweep_objects_read=len(plan.keys),
        rechecked=len(recheck),
        referenced_checked=len(index.chunk_refs) + len(index.consistency),
        bytes_read=bytes_read,
        found=found,
        ignored=ignored,
        resolved=resolved,
        open_corrupt=catalog.list_corrupt(scope),
        plan=plan,
        state=new_state,
        interval_s=interval_s,
        full_sweep_s=full_sweep_s,
    )
    log.info(
        "verification_completed",
        cluster=cluster,
        new_backups=len(new_ids),
        objects_read=len(to_read) + result.manifests_read,
        bytes_read=bytes_read,
        found=len(found),
        resolved=len(resolved),
        open_corrupt=len(result.open_corrupt),
        sweep_cursor=plan.cursor,
        sweep_share=plan.share,
    )
    return result


def _read_all(
    repo: Repository, index: ClusterIndex, keys: Sequence[str], concurrency: int
) -> tuple[set[str], dict[str, str], int]:
    """Check every key in parallel: (keys that read fine, key -> problem, stored bytes read)."""
    fine: set[str] = set()
    failed: dict[str, str] = {}
    total = 0
    progress.phase("reading objects", total=len(keys), unit="objects")
    with ThreadPoolExecutor(concurrency, thread_name_prefix="sweep") as pool:
        results = ordered_map(pool, lambda k: check_object(repo, index, k), keys, concurrency * 2)
        for key, outcome in results:
            progress.advance(1)
            if isinstance(outcome, BaseException):
                if not is_fault(outcome):
                    raise outcome  # storage unreachable: abort, save nothing, the next run redoes it
                failed[key] = describe(outcome)
            else:
                fine.add(key)
                total += outcome
    return fine, failed, total


def _resolve(
    catalog: VerificationCatalog,
    scope: Scope,
    index: ClusterIndex,
    open_before: Iterable[CorruptObject],
    still_bad: set[str],
    read_fine: set[str],
) -> list[CorruptObject]:
    resolved: list[CorruptObject] = []
    for record in open_before:
        if record.key in still_bad:
            continue
        needed, _ids = index.needed_by(record.key)
        needed = needed or _is_metadata(scope.cluster, record.key)
        resolution = UNNEEDED if not needed else REPAIRED if record.key in read_fine else None
        if resolution is None:
            continue
        at = utcnow()
        if catalog.resolve_corrupt(scope, record.key, resolution, resolved_at=at):
            log.info("corrupt_object_resolved", cluster=scope.cluster, key=record.key, resolution=resolution)
            resolved.append(dataclasses.replace(record, resolved_at=at, resolution=resolution))
    return resolved


def _is_metadata(cluster: str, key: str) -> bool:
    """Keys outside ``<cluster>/`` (repo.json, its seal, keys, audit): the repository and its
    keys and audit trail need them, and every run reads them in full."""
    return not key.startswith(f"{cluster}/")


# -- for the daemon ------------------------------------------------------------------------
def quick_check_backup(repo: Repository, cluster: str, backup_id: str, concurrency: int = 8) -> list[Fault]:
    """Right after a backup: its manifest opens, and every object it names (chunks, and for a
    physical backup the WAL it needs to become consistent) exists with its stored size. Reads no
    data. Returns the faults (empty: all good)."""
    return verify_backup(repo, cluster, backup_id, quick=True, concurrency=concurrency).faults


def record_faults(
    catalog: VerificationCatalog,
    scope: Scope,
    faults: Iterable[Fault],
    *,
    detected_at: datetime | None = None,
) -> list[CorruptObject]:
    """Record faults (of ``quick_check_backup`` or ``verify``) as corrupt objects, one record per
    key with every backup the faults name; the next ``verify_since_last`` run re-reads them and
    completes the list of backups that need them."""
    by_key: dict[str, list[Fault]] = {}
    for fault in faults:
        by_key.setdefault(fault.key, []).append(fault)
    return [
        catalog.record_corrupt(
            scope, key, sorted({f.backup_id for f in group}), group[0].problem, detected_at=detected_at
        )
        for key, group in by_key.items()
    ]


def open_corrupt_count(catalog: VerificationCatalog, scope: Scope) -> int:
    """How many corrupt objects of ``scope`` are open (``backupd_verify_corrupt_objects``)."""
    return len(catalog.list_corrupt(scope))


def needed_by_nobackup(key: str) -> str:
    """Who needs a bad object that no backup names: the WAL archive (WAL, ``identity.json``),
    the audit trail, or the repository itself (``repo.json``, its seal, keys, a lost manifest)."""
    if "/wal/" in key or key.endswith("/identity.json"):
        return "the WAL archive"
    if key.startswith("audit/"):
        return "the audit trail"
    return "the repository"


def open_corrupt_summary(records: Sequence[CorruptObject], limit: int = 5) -> Iterator[str]:
    """One line per open record: the object, what is wrong, and the backups that need it."""
    for r in records[:limit]:
        needs = ", ".join(r.backup_ids) if r.backup_ids else needed_by_nobackup(r.key)
        yield f"{r.key} ({r.problem}; needed by {needs})"
    if len(records) > limit:
        yield f"... and {len(records) - limit} more"
