"""``run_backup``: take a logical backup into the repository and record it in the catalog."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import structlog

from contentflow_backupd import __version__
from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.errors import BackupdError, UsageError
from contentflow_backupd.model import BackupKind, BackupRecord, RunTrigger, new_backup_id, utcnow
from contentflow_backupd.ops.generations import plan_generation
from contentflow_backupd.ops.locks import exclusive, pid_alive
from contentflow_backupd.repository.manifest import Manifest
from contentflow_backupd.repository.pipeline import ChunkWriter
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.source.base import LogicalSource

log = structlog.get_logger(__name__)


class Interrupted(BaseException):
    """Raised by a signal handler: the run is recorded as ``interrupted``."""


@dataclass
class BackupOptions:
    cluster: str
    kind: BackupKind
    mode: str = "logical"
    concurrency: int = 8
    lock_dir: Path | None = None
    trigger: RunTrigger = "manual"


def reap_interrupted(catalog: Catalog) -> list[str]:
    """Mark runs and backups left ``running`` by dead processes as ``interrupted``."""
    host = socket.gethostname()
    changed = catalog.mark_interrupted(lambda pid, h: pid_alive(pid, h, host))
    for bid in changed:
        log.warning("backup_marked_interrupted", backup_id=bid)
    return changed


def run_backup(
    repo: Repository, catalog: Catalog, source: LogicalSource, opts: BackupOptions
) -> BackupRecord:
    if opts.mode != "logical":
        raise UsageError(
            "physical backups are not available yet in this version",
            hint="use --mode logical (BACKUPD_MODE=logical)",
        )
    if opts.lock_dir is not None:
        with exclusive(opts.lock_dir, f"backup-{opts.cluster}", what=f"a backup of cluster {opts.cluster!r}"):
            return _run_backup(repo, catalog, source, opts)
    return _run_backup(repo, catalog, source, opts)


def _run_backup(
    repo: Repository, catalog: Catalog, source: LogicalSource, opts: BackupOptions
) -> BackupRecord:
    reap_interrupted(catalog)
    db = source.describe()  # fails early and clearly when the database is unreachable
    plan = plan_generation(repo, opts.cluster, opts.kind, opts.mode)
    if plan.note:
        log.warning("incremental_runs_as_full", reason=plan.note)
    started = utcnow()
    backup_id = new_backup_id(plan.kind, started)
    generation = plan.generation or backup_id
    record = BackupRecord(
        id=backup_id,
        cluster=opts.cluster,
        kind=plan.kind,
        mode="logical",
        status="running",
        generation=generation,
        started_at=started,
        parent_id=plan.parent_id,
        database=db.database,
        pid=_pid(),
        host=socket.gethostname(),
        details={"pg_version": db.server_version, "requested_kind": opts.kind},
    )
    if plan.note:
        record.details["note"] = plan.note
    catalog.upsert_backup(record)
    run = catalog.start_run(f"backup-{plan.kind}", opts.trigger, pid=record.pid, host=record.host)
    structlog.contextvars.bind_contextvars(backup_id=backup_id, kind=plan.kind, run_id=run.id)
    log.info(
        "backup_started",
        generation=generation,
        database=db.database,
        known_chunks=len(plan.known_chunks),
    )
    try:
        writer = ChunkWriter(repo, opts.cluster, generation, plan.known_chunks, concurrency=opts.concurrency)
        with source.dump() as stream:
            entry = writer.write_stream("dump", "pg_dump-custom", stream)
        finished = utcnow()
        manifest = Manifest(
            id=backup_id,
            cluster=opts.cluster,
            kind=plan.kind,
            mode="logical",
            generation=generation,
            parent_id=plan.parent_id,
            database=db.database,
            started_at=started,
            finished_at=finished,
            source_bytes=entry.size,
            stored_bytes=writer.stats.stored_bytes,
            chunks_total=writer.stats.chunks_total,
            chunks_new=writer.stats.chunks_new,
            streams=[entry],
            details=dict(record.details),
            tool_version=__version__,
        )
        manifest_key = repo.write_manifest(manifest)  # the commit point
        done = manifest.to_record(manifest_key)
        done.pid, done.host = record.pid, record.host
        manifest_bytes = repo.storage.stat(manifest_key).size
        done.stored_bytes += manifest_bytes
        catalog.upsert_backup(done)
        catalog.finish_run(run.id, "succeeded", backup_id=backup_id)
        log.info(
            "backup_completed",
            source_bytes=done.source_bytes,
            stored_bytes=done.stored_bytes,
            chunks_total=done.chunks_total,
            chunks_new=done.chunks_new,
            duration_seconds=done.duration_seconds,
        )
        return done
    except (Interrupted, KeyboardInterrupt):
        _fail(
            catalog,
            record,
            run.id,
            "interrupted",
            "interrupted by a signal before the manifest was written",
        )
        raise
    except BackupdError as exc:
        _fail(catalog, record, run.id, "failed", exc.message)
        raise
    except Exception as exc:
        _fail(catalog, record, run.id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        structlog.contextvars.unbind_contextvars("backup_id", "kind", "run_id")


def _fail(catalog: Catalog, record: BackupRecord, run_id: int, status: str, error: str) -> None:
    log.error("backup_failed" if status == "failed" else "backup_interrupted", error=error)
    try:
        catalog.upsert_backup(record.copy(status=status, finished_at=utcnow(), error=error))
        catalog.finish_run(run_id, status, backup_id=record.id, error=error)  # type: ignore[arg-type]
    except BackupdError as exc:  # the catalog is down too: the backup is uncommitted anyway
        log.error("catalog_update_failed", error=str(exc))


def _pid() -> int:
    import os

    return os.getpid()
