"""``run_backup``: take a logical or physical backup into the repository, record it in the catalog.

Both modes share one path: plan the generation, record the attempt as ``running``, stream the
source through the chunk pipeline, then commit by writing the manifest last. A physical backup is
committed only once the WAL from its start to its stop LSN is in the archive.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd import __version__
from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.errors import BackupdError, SourceError, UsageError
from contentflow_backupd.model import BackupKind, BackupRecord, RunTrigger, new_backup_id, utcnow
from contentflow_backupd.ops.generations import GenerationPlan, plan_generation
from contentflow_backupd.ops.locks import exclusive, pid_alive
from contentflow_backupd.repository.manifest import Manifest, StreamEntry
from contentflow_backupd.repository.pipeline import ChunkWriter
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.source.base import LogicalSource, PhysicalSource
from contentflow_backupd.wal import format_lsn, segments_between

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
    archive_timeout: float = 300.0


@dataclass
class _Streams:
    entries: list[StreamEntry]
    details: dict[str, Any] = field(default_factory=dict)


def reap_interrupted(catalog: Catalog) -> list[str]:
    """Mark runs and backups left ``running`` by dead processes as ``interrupted``."""
    host = socket.gethostname()
    changed = catalog.mark_interrupted(lambda pid, h: pid_alive(pid, h, host))
    for bid in changed:
        log.warning("backup_marked_interrupted", backup_id=bid)
    return changed


def run_backup(
    repo: Repository,
    catalog: Catalog,
    opts: BackupOptions,
    *,
    logical: LogicalSource | None = None,
    physical: PhysicalSource | None = None,
    archive: WalArchive | None = None,
) -> BackupRecord:
    if opts.mode not in ("logical", "physical"):
        raise UsageError(f"unknown backup mode {opts.mode!r}")
    if opts.lock_dir is None:
        return _dispatch(repo, catalog, opts, logical, physical, archive)
    with exclusive(opts.lock_dir, f"backup-{opts.cluster}", what=f"a backup of cluster {opts.cluster!r}"):
        return _dispatch(repo, catalog, opts, logical, physical, archive)


def _dispatch(
    repo: Repository,
    catalog: Catalog,
    opts: BackupOptions,
    logical: LogicalSource | None,
    physical: PhysicalSource | None,
    archive: WalArchive | None,
) -> BackupRecord:
    reap_interrupted(catalog)
    if opts.mode == "logical":
        assert logical is not None
        db = logical.describe()  # fails early and clearly when the database is unreachable
        details: dict[str, Any] = {"pg_version": db.server_version, "requested_kind": opts.kind}

        def dump(writer: ChunkWriter) -> _Streams:
            with logical.dump() as stream:
                return _Streams([writer.write_stream("dump", "pg_dump-custom", stream)])

        return _execute(repo, catalog, opts, db.database, details, dump)

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

    def basebackup(writer: ChunkWriter) -> _Streams:
        label = f"contentflow-backupd {writer.generation}"
        with physical.basebackup(label, archive_timeout=opts.archive_timeout, server_major=info.major) as bb:
            entry = writer.write_stream("base.tar", "pg_basebackup-tar", bb.stream)
        needed = segments_between(bb.start_lsn, bb.stop_lsn, bb.timeline, info.wal_segment_size)
        names = [s.name(info.wal_segment_size) for s in needed]
        _wait_for_wal(archive, physical, names, opts.archive_timeout)
        return _Streams(
            [entry],
            {
                "start_lsn": format_lsn(bb.start_lsn),
                "stop_lsn": format_lsn(bb.stop_lsn),
                "timeline": bb.timeline,
                "wal_first": names[0],
                "wal_last": names[-1],
            },
        )

    return _execute(repo, catalog, opts, info.database, details, basebackup)


def _wait_for_wal(archive: WalArchive, source: PhysicalSource, names: list[str], timeout: float) -> None:
    """Every segment from the backup's start to its stop must be in the archive."""
    deadline = time.monotonic() + timeout
    missing = list(names)
    switched = False
    while True:
        missing = [n for n in missing if not archive.exists(n)]
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
    catalog: Catalog,
    opts: BackupOptions,
    database: str,
    details: dict[str, Any],
    produce: Callable[[ChunkWriter], _Streams],
) -> BackupRecord:
    plan: GenerationPlan = plan_generation(repo, opts.cluster, opts.kind, opts.mode)
    if plan.note:
        log.warning("incremental_runs_as_full", reason=plan.note)
    started = utcnow()
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
    )
    if plan.note:
        record.details["note"] = plan.note
    catalog.upsert_backup(record)
    run = catalog.start_run(f"backup-{plan.kind}", opts.trigger, pid=record.pid, host=record.host)
    structlog.contextvars.bind_contextvars(backup_id=backup_id, kind=plan.kind, run_id=run.id)
    log.info("backup_started", mode=opts.mode, generation=generation, known_chunks=len(plan.known_chunks))
    try:
        writer = ChunkWriter(repo, opts.cluster, generation, plan.known_chunks, concurrency=opts.concurrency)
        streams = produce(writer)
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
        done.pid, done.host = record.pid, record.host
        done.stored_bytes += repo.storage.stat(manifest_key).size
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
            catalog, record, run.id, "interrupted", "interrupted by a signal before the manifest was written"
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
