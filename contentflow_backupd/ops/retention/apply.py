"""Retention: read the repository, plan with ``plan_expiry`` (pure), apply the plan.

``expire`` is what the ``expire`` command and the daemon's ``retention`` job both call. Applying
holds the same local lock as backups of the cluster (``backup-<cluster>``), so retention never
runs while a backup of the cluster is being written on this host; planning and applying happen
under one hold of the lock.

Order of deletion (each step is idempotent, so an interrupted run is finished by the next one):

1. each expired backup: its manifest first (the backup no longer exists), then its catalog row;
2. the chunk objects of each collected generation;
3. expired WAL files.

Every deletion is logged (``backup_expired``, ``generation_collected``, ``wal_expired``) and
recorded in the catalog's ``deletions`` table, after the storage delete succeeded.

A delete that S3 Object Lock refuses (``ObjectLocked``: the plan expected the lock to be over,
but the object was written with a later date, e.g. before the retention settings were shortened)
is not retried: it is logged (``deletion_refused``), counted in ``ExpiryResult.refused``, the
object stays (a refused manifest keeps its backup and catalog row), and the next run plans again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd.catalog.base import AuditCatalog, DeletionRecord, DeletionWhat, RetentionCatalog
from contentflow_backupd.errors import BackupdError, ObjectLocked
from contentflow_backupd.model import BackupKind, RunStatus, RunTrigger, Scope, this_host, this_pid, utcnow
from contentflow_backupd.observability import progress
from contentflow_backupd.ops.audit import record_event
from contentflow_backupd.ops.backup.native import is_native
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.ops.retention.plan import (
    WAL_OLD,
    ExpiryPlan,
    RetentionPolicy,
    StoredBackup,
    StoredGeneration,
    StoredWal,
    plan_expiry,
)
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.storage.base import ObjectInfo

log = structlog.get_logger(__name__)

_RECORD_BATCH = 500


@dataclass
class Inventory:
    """What the cluster's part of the repository holds, as ``plan_expiry`` wants it."""

    backups: list[StoredBackup] = field(default_factory=list)
    generations: list[StoredGeneration] = field(default_factory=list)
    wal: list[StoredWal] = field(default_factory=list)
    other_bytes: int = 0


@dataclass
class ExpiryResult:
    """What ``apply_expiry`` deleted, and what the cluster stores afterwards."""

    deleted_backups: dict[BackupKind, int] = field(default_factory=lambda: {"full": 0, "incremental": 0})
    deleted_generations: int = 0
    deleted_chunk_objects: int = 0
    deleted_wal_files: int = 0
    deleted_bytes: int = 0
    stored_bytes_after: int = 0
    """Bytes of every object under the cluster after the deletions (for
    ``backupd_repository_stored_bytes``)."""
    refused: list[str] = field(default_factory=list)
    """Keys whose delete object lock refused (they stay; the next run plans again)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "deleted_backups": dict(self.deleted_backups),
            "deleted_generations": self.deleted_generations,
            "deleted_chunk_objects": self.deleted_chunk_objects,
            "deleted_wal_files": self.deleted_wal_files,
            "deleted_bytes": self.deleted_bytes,
            "stored_bytes": self.stored_bytes_after,
            "refused_objects": len(self.refused),
            "refused_keys": self.refused[:20],
        }


def collect_inventory(repo: Repository, cluster: str) -> Inventory:
    """One listing of ``<cluster>/`` plus every manifest. An unreadable manifest is reported
    (``manifest_unreadable``) and kept as a :class:`StoredBackup` with ``error`` set."""
    inv = Inventory()
    prefix = f"{layout.check_cluster(cluster)}/"
    manifests: list[tuple[str, ObjectInfo]] = []
    chunks: dict[str, list[ObjectInfo]] = {}
    progress.phase("listing the repository", unit="objects")
    for info in repo.storage.list(prefix):
        progress.advance(1)
        parts = info.key[len(prefix) :].split("/")
        bid = layout.backup_id_from_manifest_key(cluster, info.key)
        if bid is not None:
            manifests.append((bid, info))
        elif parts[0] == "chunks" and len(parts) > 2:
            chunks.setdefault(parts[1], []).append(info)
        elif parts[0] == "wal" and len(parts) > 2:
            inv.wal.append(StoredWal(key=info.key, name=parts[-1], size=info.size, modified=info.modified))
        else:
            inv.other_bytes += info.size
    for name, infos in chunks.items():
        times = [i.modified for i in infos]
        newest = None if any(t is None for t in times) else max(t for t in times if t is not None)
        inv.generations.append(StoredGeneration(name, len(infos), sum(i.size for i in infos), newest))
    for bid, info in manifests:
        inv.backups.append(_stored_backup(repo, cluster, bid, info))
    return inv


def _stored_backup(repo: Repository, cluster: str, bid: str, info: ObjectInfo) -> StoredBackup:
    kind: BackupKind = "full" if "-full-" in bid else "incremental"
    try:
        m = repo.read_manifest(cluster, bid)
    except BackupdError as exc:
        log.warning("manifest_unreadable", backup_id=bid, key=info.key, error=exc.message)
        return StoredBackup(bid, kind, info.key, info.size, error=exc.message)
    first, last = m.details.get("wal_first"), m.details.get("wal_last")
    return StoredBackup(
        id=bid,
        kind=m.kind,
        manifest_key=info.key,
        manifest_bytes=info.size,
        mode=m.mode,
        generation=m.generation,
        finished_at=m.finished_at,
        wal_first=first if isinstance(first, str) else None,
        wal_last=last if isinstance(last, str) else None,
        manifest_modified=info.modified,
        parent_id=m.parent_id,
        native=is_native(m),
    )


def plan_for(repo: Repository, cluster: str, policy: RetentionPolicy, now: datetime) -> ExpiryPlan:
    """Read the repository and plan (no deletion)."""
    inv = collect_inventory(repo, cluster)
    plan = plan_expiry(
        inv.backups, inv.generations, inv.wal, policy, now, cluster=cluster, other_bytes=inv.other_bytes
    )
    for warning in plan.warnings:
        log.warning("retention_kept_unreadable_backup", detail=warning)
    return plan


def apply_expiry(
    plan: ExpiryPlan,
    repo: Repository,
    catalog: RetentionCatalog,
    *,
    run_id: int | None = None,
    concurrency: int = 8,
) -> ExpiryResult:
    """Delete what ``plan`` says, in the order of the module docstring. Storage errors propagate
    (after the storage wrapper's retries); what was deleted before stays deleted and recorded."""
    storage = repo.storage
    cluster = plan.cluster
    result = ExpiryResult()

    def record(what: DeletionWhat, name: str, size: int, reason: str) -> DeletionRecord:
        return DeletionRecord(utcnow(), cluster, what, name, size, reason, run_id, repository_id=repo.id)

    def refused(key: str, exc: ObjectLocked) -> None:
        result.refused.append(key)
        log.warning("deletion_refused", key=key, error=exc.message)

    def delete(key: str) -> bool:
        try:
            storage.delete(key)
        except ObjectLocked as exc:
            refused(key, exc)
            return False
        return True

    reasons = {d.backup.id: d.reason for d in plan.backups}
    progress.phase("deleting", unit="objects")
    for b in plan.backups_to_delete:
        progress.advance(1)
        if not delete(b.manifest_key):
            continue
        catalog.delete_backup(b.id)
        catalog.add_deletions([record("backup", b.id, b.manifest_bytes, reasons[b.id])])
        result.deleted_backups[b.kind] += 1
        result.deleted_bytes += b.manifest_bytes
        log.info("backup_expired", backup_id=b.id, kind=b.kind, mode=b.mode, reason=reasons[b.id])

    gen_reasons = {d.generation.generation: d.reason for d in plan.generations}
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="expire") as pool:
        for g in plan.generations_to_delete:
            # The generation is listed again: every object under it goes, also one listed late.
            listed = list(storage.list(layout.chunks_prefix(cluster, g.generation)))
            gone = set(_delete_all(pool, delete, (i.key for i in listed)))
            infos = [i for i in listed if i.key in gone]
            size = sum(i.size for i in infos)
            reason = gen_reasons[g.generation]
            if len(infos) < len(listed):
                reason += f" (partly: object lock refused {len(listed) - len(infos)} objects)"
            catalog.add_deletions([record("generation", g.generation, size, reason)])
            result.deleted_generations += 1
            result.deleted_chunk_objects += len(infos)
            result.deleted_bytes += size
            log.info(
                "generation_collected",
                generation=g.generation,
                objects=len(infos),
                bytes=size,
                reason=reason,
            )

        wal = plan.wal_to_delete
        for start in range(0, len(wal), _RECORD_BATCH):
            gone = set(_delete_all(pool, delete, (w.key for w in wal[start : start + _RECORD_BATCH])))
            batch = [w for w in wal[start : start + _RECORD_BATCH] if w.key in gone]
            if not batch:
                continue
            catalog.add_deletions([record("wal", w.name, w.size, WAL_OLD) for w in batch])
            result.deleted_wal_files += len(batch)
            result.deleted_bytes += sum(w.size for w in batch)
            for timeline, files in _by_timeline(batch):
                log.info(
                    "wal_expired",
                    timeline=timeline,
                    first=files[0].name,
                    last=files[-1].name,
                    files=len(files),
                    bytes=sum(w.size for w in files),
                )
    result.stored_bytes_after = max(0, plan.stored_bytes - result.deleted_bytes)
    log.info(
        "retention_applied",
        deleted_full=result.deleted_backups["full"],
        deleted_incremental=result.deleted_backups["incremental"],
        deleted_generations=result.deleted_generations,
        deleted_wal_files=result.deleted_wal_files,
        deleted_bytes=result.deleted_bytes,
        stored_bytes=result.stored_bytes_after,
        refused=len(result.refused),
    )
    return result


def _delete_all(pool: ThreadPoolExecutor, delete: Callable[[str], bool], keys: Iterable[str]) -> list[str]:
    """Delete ``keys`` in parallel; the keys actually deleted (``delete`` returned True)."""
    futures = [(key, pool.submit(delete, key)) for key in keys]
    deleted = []
    for key, future in futures:
        if future.result():
            deleted.append(key)
        progress.advance(1)  # on this thread: the operation's tracker is this thread's
    return deleted


def _by_timeline(files: list[StoredWal]) -> Iterator[tuple[str, list[StoredWal]]]:
    groups: dict[str, list[StoredWal]] = {}
    for w in files:
        groups.setdefault(w.name[:8], []).append(w)
    yield from groups.items()


def expire(
    repo: Repository,
    catalog: RetentionCatalog,
    cluster: str,
    policy: RetentionPolicy,
    now: datetime,
    *,
    apply: bool,
    lock_dir: Path | None = None,
    run_id: int | None = None,
    trigger: RunTrigger | None = None,
    concurrency: int = 8,
) -> tuple[ExpiryPlan, ExpiryResult | None]:
    """Plan retention for ``cluster``; with ``apply``, also carry the plan out.

    Applying holds the cluster's backup lock in ``lock_dir`` (``LockedError`` while a backup or
    another retention run holds it) across planning and deleting. With ``trigger`` and no
    ``run_id``, an applying call records its own ``retention`` run in the catalog (the command
    line does; the daemon records its runs itself and passes ``run_id``)."""
    if not apply:
        return plan_for(repo, cluster, policy, now), None
    held = (
        exclusive(lock_dir, f"backup-{cluster}", what=f"a backup or retention run of cluster {cluster!r}")
        if lock_dir is not None
        else contextlib.nullcontext()
    )
    with held:
        own_run = None
        if run_id is None and trigger is not None:
            scope = Scope(repo.id, cluster)
            own_run = catalog.start_run(scope, "retention", trigger, pid=this_pid(), host=this_host())
            run_id = own_run.id
        planned: list[ExpiryPlan] = []
        try:
            plan = plan_for(repo, cluster, policy, now)
            planned.append(plan)
            result = apply_expiry(plan, repo, catalog, run_id=run_id, concurrency=concurrency)
            _audit_expiry(repo, catalog, plan, result, run_id, None)
            from contentflow_backupd.ops.repo.keys import retire_after_retention

            retire_after_retention(repo, catalog)  # data keys no retained object needs; never raises
        except BaseException as exc:
            _audit_expiry(repo, catalog, planned[0] if planned else None, None, run_id, exc)
            if own_run is not None:
                error = exc.message if isinstance(exc, BackupdError) else f"{type(exc).__name__}: {exc}"
                status: RunStatus = "failed" if isinstance(exc, Exception) else "interrupted"
                with contextlib.suppress(BackupdError):
                    catalog.finish_run(own_run.id, status, error=error)
            raise
        if own_run is not None:
            catalog.finish_run(own_run.id, "succeeded")
        return plan, result


def _audit_expiry(
    repo: Repository,
    catalog: AuditCatalog,
    plan: ExpiryPlan | None,
    result: ExpiryResult | None,
    run_id: int | None,
    exc: BaseException | None,
) -> None:
    """Record an applied retention run (ops/audit.py) with what it deleted: backup ids,
    ``generation:<id>``, ``wal:<name>``. A failed run lists what it planned (the ``deletions``
    table has what went before the failure); a run that deleted nothing is not recorded."""
    refused = set(result.refused) if result is not None else set()
    objects: list[str] = []
    if plan is not None:
        objects += [b.id for b in plan.backups_to_delete if b.manifest_key not in refused]
        objects += [f"generation:{g.generation}" for g in plan.generations_to_delete]
        objects += [f"wal:{w.name}" for w in plan.wal_to_delete if w.key not in refused]
    if exc is None and not objects:
        return
    details: dict[str, Any] = {"cluster": plan.cluster if plan is not None else None, "run_id": run_id}
    if result is not None:
        details.update(result.to_json())
    if exc is not None:
        details["error"] = exc.message if isinstance(exc, BackupdError) else f"{type(exc).__name__}: {exc}"
        details["objects_are"] = "planned: the run stopped part-way"
    outcome = "succeeded" if exc is None else "failed" if isinstance(exc, Exception) else "interrupted"
    record_event(catalog, action="expire", outcome=outcome, objects=objects, details=details, repo=repo)


def expiry_report(plan: ExpiryPlan, result: ExpiryResult | None) -> dict[str, Any]:
    """The ``expire --json`` document: the plan, ``applied`` and what was deleted."""
    out = plan.to_json()
    out["applied"] = result is not None
    out["deleted_bytes"] = result.deleted_bytes if result is not None else 0
    if result is not None:
        out["result"] = result.to_json()
        out["stored_bytes"] = result.stored_bytes_after
    return out
