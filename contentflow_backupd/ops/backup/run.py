"""``run_backup``: take a logical or physical backup into the repository, record it in the catalog.

Both modes share one path: plan the generation, record the attempt as ``running``, stream the
source through the chunk pipeline, then commit by writing the manifest last. A physical backup is
committed only once the WAL from its start to its stop LSN is in the archive.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd import __version__
from contentflow_backupd.catalog.base import AuditCatalog, BackupCatalog, BackupJobCatalog, RunCatalog
from contentflow_backupd.errors import BackupdError, LockedError, SourceError, UsageError
from contentflow_backupd.model import (
    BackupKind,
    BackupRecord,
    RunTrigger,
    Scope,
    cancel_failure,
    new_backup_id,
    utcnow,
)
from contentflow_backupd.observability import progress
from contentflow_backupd.ops.audit import record_event
from contentflow_backupd.ops.backup.generations import GenerationPlan, generation_chunk_size, plan_generation
from contentflow_backupd.ops.backup.native import IncrementalMethod, native_base, store_backup_manifest
from contentflow_backupd.ops.locks import exclusive, pid_alive
from contentflow_backupd.repository.manifest import Manifest, StreamEntry
from contentflow_backupd.repository.pipeline import ChunkWriter
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.signals import Interrupted
from contentflow_backupd.source.base import LogicalSource, PhysicalSource
from contentflow_backupd.wal import format_lsn, segments_between

log = structlog.get_logger(__name__)


@dataclass
class BackupOptions:
    cluster: str
    kind: BackupKind
    mode: str = "logical"
    concurrency: int = 8
    lock_dir: Path | None = None
    trigger: RunTrigger = "manual"
    archive_timeout: float = 300.0
    packs: bool = True
    """``BACKUPD_CHUNKING__PACKS``: a logical full may choose small chunks, in packs."""
    cancel: threading.Event | None = None
    """Set by the daemon when it stops a run at shutdown: a failure then counts as
    ``interrupted`` (stopping the children is what made it fail); by the stall watchdog
    (``model.JobCancel.fail``): ``failed``, with its reason."""


@dataclass
class _Streams:
    entries: list[StreamEntry]
    details: dict[str, Any] = field(default_factory=dict)


def reap_interrupted(catalog: RunCatalog) -> list[str]:
    """Mark runs and backups left ``running`` by dead processes as ``interrupted``."""
    host = socket.gethostname()
    changed = catalog.mark_interrupted(lambda pid, h: pid_alive(pid, h, host))
    for bid in changed:
        log.warning("backup_marked_interrupted", backup_id=bid)
    return changed


def run_backup(
    repo: Repository,
    catalog: BackupJobCatalog,
    opts: BackupOptions,
    *,
    logical: LogicalSource | None = None,
    physical: PhysicalSource | None = None,
    archive: WalArchive | None = None,
) -> BackupRecord:
    """Take one backup and record it, and its run (job ``full`` or ``incremental``, the kind
    asked for), in the catalog. The run is recorded from the start, so a backup that fails before
    any data moves (database down) is a failed run too; one refused because another backup of the
    cluster is running is ``skipped`` (and raises ``LockedError``)."""
    if opts.mode not in ("logical", "physical"):
        raise UsageError(f"unknown backup mode {opts.mode!r}")
    reap_interrupted(catalog)
    scope = Scope(repo.id, opts.cluster)
    run = catalog.start_run(scope, opts.kind, opts.trigger, pid=os.getpid(), host=socket.gethostname())
    attempt: list[BackupRecord] = []
    with structlog.contextvars.bound_contextvars(run_id=run.id, job=opts.kind):
        try:
            if opts.lock_dir is None:
                done = _dispatch(repo, catalog, opts, logical, physical, archive, attempt)
            else:
                what = f"a backup of cluster {opts.cluster!r}"
                with exclusive(opts.lock_dir, f"backup-{opts.cluster}", what=what):
                    done = _dispatch(repo, catalog, opts, logical, physical, archive, attempt)
        except LockedError as exc:
            log.warning("backup_skipped", reason=exc.message)
            _finish_run(catalog, run.id, "skipped", None, exc.message)
            _audit(repo, catalog, opts, run.id, "skipped", attempt, exc.message)
            raise
        except (Interrupted, KeyboardInterrupt):
            _fail(
                catalog,
                attempt,
                run.id,
                "interrupted",
                "interrupted by a signal before the manifest was written",
                _no_attempt(repo, opts, run.started_at),
            )
            _audit(repo, catalog, opts, run.id, "interrupted", attempt, "interrupted by a signal")
            raise
        except BaseException as exc:
            error = exc.message if isinstance(exc, BackupdError) else f"{type(exc).__name__}: {exc}"
            unrecorded = _no_attempt(repo, opts, run.started_at)
            failure = cancel_failure(opts.cancel)
            if failure is not None:  # the stall watchdog stopped it: a failure, with its reason
                _fail(catalog, attempt, run.id, "failed", f"{failure}: {error}", unrecorded)
            elif opts.cancel is not None and opts.cancel.is_set():
                _fail(catalog, attempt, run.id, "interrupted", f"stopped at shutdown: {error}", unrecorded)
            else:
                _fail(catalog, attempt, run.id, "failed", error, unrecorded)
            _audit(repo, catalog, opts, run.id, "failed", attempt, error)
            raise
        _finish_run(catalog, run.id, "succeeded", done.id, None)
        _audit(repo, catalog, opts, run.id, "succeeded", [done], None)
        return done


def _audit(
    repo: Repository,
    catalog: AuditCatalog,
    opts: BackupOptions,
    run_id: int,
    outcome: str,
    attempt: list[BackupRecord],
    error: str | None,
) -> None:
    record = attempt[-1] if attempt else None
    details: dict[str, Any] = {
        "cluster": opts.cluster,
        "kind": opts.kind,
        "mode": opts.mode,
        "trigger": opts.trigger,
        "run_id": run_id,
    }
    if record is not None and outcome == "succeeded":
        details["stored_bytes"] = record.stored_bytes
    if error is not None:
        details["error"] = error
    objects = [record.id] if record is not None else []
    record_event(catalog, action="backup", outcome=outcome, objects=objects, details=details, repo=repo)


def _dispatch(
    repo: Repository,
    catalog: BackupCatalog,
    opts: BackupOptions,
    logical: LogicalSource | None,
    physical: PhysicalSource | None,
    archive: WalArchive | None,
    attempt: list[BackupRecord],
) -> BackupRecord:
    if opts.mode == "logical":
        assert logical is not None
        db = logical.describe()  # fails early and clearly when the database is unreachable
        details: dict[str, Any] = {"pg_version": db.server_version, "requested_kind": opts.kind}

        def dump(writer: ChunkWriter, plan: GenerationPlan) -> _Streams:
            if plan.kind == "incremental":
                size = plan.chunk_size  # the full's: to dedup against it
            elif opts.packs:
                size = generation_chunk_size(db.size, repo.config.chunker.avg_size)
            else:
                size = None
            with logical.dump() as stream:
                entry = writer.write_stream("dump", "pg_dump-custom", stream, chunk_size=size)
            method = "chunks" if plan.kind == "incremental" else None
            return _Streams([entry], {**logical.dump_facts(), "incremental_method": method})

        return _execute(repo, catalog, opts, db.database, details, dump, attempt)

    assert physical is not None and archive is not None
    info = physical.describe()
    if info.extra_tablespaces:
        raise UsageError(
            f"the cluster has tablespaces ({', '.join(info.extra_tablespaces)}); physical backups "
            "of clusters with tablespaces are not supported yet",
            hint="use --mode logical for this cluster",
        )
    if not info.can_replicate:
        raise SourceError(
            f"role {info.user!r} may not replicate: physical backups need the REPLICATION attribute",
            hint=f"ALTER ROLE {info.user} REPLICATION; and allow it in pg_hba.conf (replication)",
        )
    archive.ensure_identity(info.system_identifier, info.wal_segment_size, info.server_version_num)
    details = {
        "pg_version": info.server_version,
        "pg_version_num": info.server_version_num,
        "system_identifier": info.system_identifier,
        "wal_segment_size": info.wal_segment_size,
        "requested_kind": opts.kind,
    }

    def basebackup(writer: ChunkWriter, plan: GenerationPlan) -> _Streams:
        schema = physical.schema_facts()  # at the start: what restore drills compare against
        label = f"contentflow-backupd {writer.generation}"
        method: IncrementalMethod | None = None
        base: bytes | None = None
        extra: dict[str, Any] = {}
        if plan.kind == "incremental":
            base, why = native_base(repo, opts.cluster, plan.parent_id, physical, info.major)
            method = "native" if base is not None else "chunks"
            if base is None:
                log.warning("incremental_uses_chunks", reason=why)
                extra["incremental_note"] = why
            else:
                log.info("incremental_native", parent_id=plan.parent_id)
        with physical.basebackup(
            label, archive_timeout=opts.archive_timeout, server_major=info.major, incremental_from=base
        ) as bb:
            entry = writer.write_stream("base.tar", "pg_basebackup-tar", bb.stream)
        manifest_entry = store_backup_manifest(writer, bb.manifest_raw)
        needed = segments_between(bb.start_lsn, bb.stop_lsn, bb.timeline, info.wal_segment_size)
        names = [s.name(info.wal_segment_size) for s in needed]
        _wait_for_wal(archive, physical, names, opts.archive_timeout)
        return _Streams(
            [entry, manifest_entry],
            {
                **schema,
                **extra,
                "start_lsn": format_lsn(bb.start_lsn),
                "stop_lsn": format_lsn(bb.stop_lsn),
                "timeline": bb.timeline,
                "wal_first": names[0],
                "wal_last": names[-1],
                "incremental_method": method,
            },
        )

    return _execute(repo, catalog, opts, info.database, details, basebackup, attempt)


def _expected_size(catalog: BackupCatalog, scope: Scope, mode: str) -> int | None:
    """The progress total of a backup: what the newest successful backup of this mode read
    (a database grows slowly); None for the first one."""
    try:
        done = [b for b in catalog.list_backups(scope, ["succeeded"]) if b.mode == mode]
    except BackupdError:
        return None
    return done[-1].source_bytes if done and done[-1].source_bytes else None


def _wait_for_wal(archive: WalArchive, source: PhysicalSource, names: list[str], timeout: float) -> None:
    """Every segment from the backup's start to its stop must be in the archive."""
    deadline = time.monotonic() + timeout
    missing = list(names)
    switched = False
    # bounded by its own timeout: the stall watchdog leaves the wait to it
    progress.phase("waiting for WAL", total=len(names), unit="segments", quiet_s=timeout)
    while True:
        arrived = len(missing)
        missing = [n for n in missing if not archive.exists(n)]
        progress.advance(arrived - len(missing))
        if not missing:
            log.info("backup_wal_archived", first=names[0], last=names[-1], segments=len(names))
            return
        if time.monotonic() > deadline:
            raise SourceError(
                f"the WAL this backup needs was not archived within {timeout:.0f}s "
                f"(BACKUPD_WAL__ARCHIVE_TIMEOUT): missing {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}; the backup is not consistent and was not committed",
                hint="check archive_command (wal-push) or wal-stream, and pg_stat_archiver",
            )
        if not switched:
            source.switch_wal()  # the stop segment may still be open (idle server)
            switched = True
        time.sleep(0.5)


def _execute(
    repo: Repository,
    catalog: BackupCatalog,
    opts: BackupOptions,
    database: str,
    details: dict[str, Any],
    produce: Callable[[ChunkWriter, GenerationPlan], _Streams],
    attempt: list[BackupRecord],
) -> BackupRecord:
    plan: GenerationPlan = plan_generation(repo, opts.cluster, opts.kind, opts.mode)
    if plan.note:
        log.warning("incremental_runs_as_full", reason=plan.note)
    started = _after_newest_backup(repo, opts.cluster)
    backup_id = new_backup_id(plan.kind, started)
    generation = plan.generation or backup_id
    record = BackupRecord(
        id=backup_id,
        cluster=opts.cluster,
        kind=plan.kind,
        mode=opts.mode,  # type: ignore[arg-type]
        status="running",
        generation=generation,
        started_at=started,
        parent_id=plan.parent_id,
        database=database,
        pid=os.getpid(),
        host=socket.gethostname(),
        details=dict(details),
        repository_id=repo.id,
    )
    if plan.note:
        record.details["note"] = plan.note
    catalog.upsert_backup(record)
    attempt.append(record)
    structlog.contextvars.bind_contextvars(backup_id=backup_id, kind=plan.kind)
    log.info("backup_started", mode=opts.mode, generation=generation, known_chunks=len(plan.known_chunks))
    try:
        writer = ChunkWriter(
            repo,
            opts.cluster,
            generation,
            plan.known_chunks,
            known_packs=plan.known_packs,
            concurrency=opts.concurrency,
        )
        progress.phase(
            "dumping" if opts.mode == "logical" else "copying",
            total=_expected_size(catalog, Scope(repo.id, opts.cluster), opts.mode),
        )
        try:
            streams = produce(writer, plan)
        except BaseException:
            # What the attempt stored before it stopped: chunks without a manifest, which
            # retention collects once they are older than gc_grace.
            attempt[-1] = record.copy(
                stored_bytes=writer.stats.stored_bytes,
                chunks_total=writer.stats.chunks_total,
                chunks_new=writer.stats.chunks_new,
            )
            raise
        record.details.update(streams.details)
        manifest = Manifest(
            id=backup_id,
            cluster=opts.cluster,
            kind=plan.kind,
            mode=record.mode,
            generation=generation,
            parent_id=plan.parent_id,
            database=database,
            started_at=started,
            finished_at=utcnow(),
            source_bytes=sum(e.size for e in streams.entries),
            stored_bytes=writer.stats.stored_bytes,
            chunks_total=writer.stats.chunks_total,
            chunks_new=writer.stats.chunks_new,
            streams=streams.entries,
            details=dict(record.details),
            tool_version=__version__,
        )
        manifest_key = repo.write_manifest(manifest)  # the commit point
        done = manifest.to_record(manifest_key)
        done.pid, done.host, done.repository_id = record.pid, record.host, repo.id
        done.stored_bytes += repo.storage.stat(manifest_key).size
        attempt[-1] = done
        catalog.upsert_backup(done)
        log.info(
            "backup_completed",
            source_bytes=done.source_bytes,
            stored_bytes=done.stored_bytes,
            chunks_total=done.chunks_total,
            chunks_new=done.chunks_new,
            duration_seconds=done.duration_seconds,
        )
        return done
    finally:
        structlog.contextvars.unbind_contextvars("backup_id", "kind")


def _after_newest_backup(repo: Repository, cluster: str) -> datetime:
    """Now, but in a later second than the newest backup id: ids have one-second resolution and
    "newest" (generations, ``latest``, retention) is decided by id, so two backups must never
    share a second (a random suffix would order them by chance)."""
    newest = max(repo.iter_backup_ids(cluster), default=None)
    now = utcnow()
    for _ in range(3):  # a newest id further ahead is another clock's: say so, do not wait for it
        if newest is None or new_backup_id("full", now)[:16] > newest[:16]:
            return now
        time.sleep(1.0 - now.microsecond / 1e6 + 0.001)
        now = utcnow()
    log.warning("backup_id_clock_behind", newest_backup=newest, now=now.isoformat())
    return now


def _no_attempt(repo: Repository, opts: BackupOptions, started_at: datetime) -> BackupRecord:
    """The record of an attempt that failed before its own was made (the database could not be
    reached, a role lacks a privilege): ``list --all`` shows every attempt of the cluster. It
    stored nothing and has no generation."""
    return BackupRecord(
        id=new_backup_id(opts.kind, started_at),
        cluster=opts.cluster,
        kind=opts.kind,
        mode=opts.mode,  # type: ignore[arg-type]
        status="running",
        generation="",
        started_at=started_at,
        pid=os.getpid(),
        host=socket.gethostname(),
        details={"requested_kind": opts.kind, "before_connecting": True},
        repository_id=repo.id,
    )


def _fail(
    catalog: BackupJobCatalog,
    attempt: list[BackupRecord],
    run_id: int,
    status: str,
    error: str,
    unrecorded: BackupRecord | None = None,
) -> None:
    """Record a failed or interrupted run, and its backup attempt if one was recorded and not
    committed (a failure after the manifest was written leaves the committed backup alone). An
    attempt that failed before its record was made is recorded as ``unrecorded``."""
    log.error("backup_failed" if status == "failed" else "backup_interrupted", error=error)
    if not attempt and unrecorded is not None:
        attempt.append(unrecorded)
    record = attempt[-1] if attempt else None
    if record is not None and record.status == "running":
        try:
            catalog.upsert_backup(record.copy(status=status, finished_at=utcnow(), error=error))
        except BackupdError as exc:  # the catalog is down too: the backup is uncommitted anyway
            log.error("catalog_update_failed", error=str(exc))
    _finish_run(catalog, run_id, status, record.id if record else None, error)


def _finish_run(
    catalog: RunCatalog, run_id: int, status: str, backup_id: str | None, error: str | None
) -> None:
    try:
        catalog.finish_run(run_id, status, backup_id=backup_id, error=error)  # type: ignore[arg-type]
    except BackupdError as exc:
        log.error("catalog_update_failed", error=str(exc))
