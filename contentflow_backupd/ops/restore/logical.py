"""``restore_backup``: stream a logical backup into a database with pg_restore, or to a file.

Order of work, so that nothing is touched when the backup cannot be read: resolve the backup,
open its manifest (authenticated), check that every object exists with its stored size, check the
target, then stream: every chunk is authenticated and hash-checked before pg_restore sees it. The
streaming restore is one transaction: a fault mid-way rolls the target back.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd.catalog.base import AuditCatalog, BackupCatalog
from contentflow_backupd.errors import BackupdError, BackupNotFound, IntegrityError, UsageError
from contentflow_backupd.observability import progress
from contentflow_backupd.ops.audit import audited
from contentflow_backupd.ops.verify.backups import missing_objects
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.manifest import Manifest
from contentflow_backupd.repository.pipeline import ChunkReader
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.signals import deferred
from contentflow_backupd.source.base import LogicalTarget

log = structlog.get_logger(__name__)


@dataclass
class RestoreResult:
    backup_id: str
    target: str
    restored_bytes: int
    duration_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "succeeded",
            "backup_id": self.backup_id,
            "target": self.target,
            "restored_bytes": self.restored_bytes,
            "duration_seconds": round(self.duration_seconds, 3),
        }


def resolve_backup_id(repo: Repository, catalog: BackupCatalog | None, cluster: str, ref: str) -> str:
    """``latest`` is the newest committed backup in the repository; an id must exist there."""
    if ref == "latest":
        ids = list(repo.iter_backup_ids(cluster))
        if not ids:
            raise BackupNotFound(
                f"there are no backups of cluster {cluster!r} in {repo.storage.url}",
                hint="take one with `contentflow-backupd backup --kind full`",
            )
        return ids[-1]
    layout.check_backup_id(ref)
    return ref


def open_for_restore(repo: Repository, cluster: str, backup_id: str, concurrency: int) -> Manifest:
    manifest = repo.read_manifest(cluster, backup_id)
    if manifest.mode != "logical":
        raise UsageError(
            f"backup {backup_id} is a {manifest.mode} backup; this command restores logical backups"
        )
    faults = missing_objects(repo, manifest, concurrency)
    if faults:
        details = "; ".join(f"{f.key}: {f.problem}" for f in faults[:10])
        more = f" (and {len(faults) - 10} more)" if len(faults) > 10 else ""
        raise IntegrityError(
            f"backup {backup_id} cannot be restored: {len(faults)} object(s) missing or damaged: "
            f"{details}{more}; nothing was restored",
            key=faults[0].key,
            hint="run `contentflow-backupd verify` and restore an older backup",
        )
    return manifest


def _stream(repo: Repository, manifest: Manifest, concurrency: int) -> ChunkReader:
    return ChunkReader(repo, manifest.cluster, manifest.generation, concurrency=concurrency)


def dump_major(manifest: Manifest) -> int | None:
    """The major of the pg_dump that made a logical backup: recorded in the manifest, or for a
    backup that predates that record, the server's major (pg_dump was at least as new)."""
    recorded = manifest.details.get("pg_dump_major")
    if isinstance(recorded, int):
        return recorded
    m = re.match(r"(\d+)", str(manifest.details.get("pg_version", "")))
    return int(m.group(1)) if m else None


def restore_to_database(
    repo: Repository,
    cluster: str,
    backup_id: str,
    target: LogicalTarget,
    *,
    create: bool,
    clean: bool,
    jobs: int = 1,
    no_owner: bool = False,
    concurrency: int = 8,
    audit: AuditCatalog | None = None,
) -> RestoreResult:
    """``audit``: the catalog to record the restore in (ops/audit.py); None records nothing."""
    t0 = time.monotonic()
    details = {"cluster": cluster, "mode": "logical", "target": target.describe()}
    with audited(audit, "restore", objects=[backup_id], details=details, repo=repo) as recorded:
        manifest = open_for_restore(repo, cluster, backup_id, concurrency)
        created = target.prepare(create=create, clean=clean, dump_major=dump_major(manifest))
        entry = manifest.streams[0]
        reader = _stream(repo, manifest, concurrency)
        log.info("restore_started", backup_id=backup_id, target=target.describe(), bytes=entry.size)
        with dropped_unless_done(target, created):
            chunks = reader.iter_stream(entry, manifest_key=layout.manifest_key(cluster, backup_id))
            target.restore(
                _then_unmeasured(chunks),
                clean=clean,
                jobs=jobs,
                no_owner=no_owner,
            )
        result = RestoreResult(backup_id, target.describe(), entry.size, time.monotonic() - t0)
        recorded.details["restored_bytes"] = entry.size
    log.info("restore_completed", backup_id=backup_id, duration_seconds=round(result.duration_seconds, 3))
    return result


def _then_unmeasured(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks``, then a phase without progress: pg_restore, given the last byte, still builds
    indexes and constraints (or, with ``--jobs``, restores the whole file) and says nothing."""
    yield from chunks
    progress.phase("pg_restore finishing", quiet_s=progress.UNMEASURED)


@contextmanager
def dropped_unless_done(target: LogicalTarget, created: bool) -> Iterator[None]:
    """A restore into a database it created that does not finish (a failure, Ctrl-C, SIGTERM)
    drops that database again; if it cannot, the exception carries a note that says what is left
    and how to remove it. A second signal meanwhile waits for the (bounded) drop."""
    try:
        yield
    except BaseException as exc:
        if not created:
            raise
        with deferred():
            try:
                target.drop_created()
            except BackupdError as drop_exc:
                log.error("restore_database_left", target=target.describe(), error=drop_exc.message)
                exc.add_note(
                    f"the database {target.describe()} this restore created is left behind, empty or "
                    f"partly restored: dropping it failed ({drop_exc.message}); remove it with: "
                    f"{target.drop_hint()}"
                )
            else:
                log.info("restore_database_dropped", target=target.describe())
                exc.add_note(f"the database {target.describe()} this restore created was dropped again")
        raise


def restore_to_file(
    repo: Repository,
    cluster: str,
    backup_id: str,
    path: Path,
    *,
    concurrency: int = 8,
    audit: AuditCatalog | None = None,
) -> RestoreResult:
    """Write the pg_dump archive to ``path`` (atomically; refuses to overwrite). ``audit``: the
    catalog to record the restore in; None records nothing."""
    details = {"cluster": cluster, "mode": "logical", "target": str(path)}
    with audited(audit, "restore", objects=[backup_id], details=details, repo=repo):
        return _restore_to_file(repo, cluster, backup_id, path, concurrency)


def _restore_to_file(
    repo: Repository, cluster: str, backup_id: str, path: Path, concurrency: int
) -> RestoreResult:
    t0 = time.monotonic()
    if path.exists():
        raise UsageError(f"{path} already exists; refusing to overwrite it")
    manifest = open_for_restore(repo, cluster, backup_id, concurrency)
    entry = manifest.streams[0]
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            for data in _stream(repo, manifest, concurrency).iter_stream(
                entry, manifest_key=layout.manifest_key(cluster, backup_id)
            ):
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails if path appeared meanwhile: never overwrite
    finally:
        tmp.unlink(missing_ok=True)
    log.info("restore_completed", backup_id=backup_id, file=str(path))
    return RestoreResult(backup_id, str(path), entry.size, time.monotonic() - t0)
