"""``recover``: the disaster-recovery procedure of docs/disaster-recovery.md in one command.

Physical (``recover_physical``): choose the newest physical backup that reaches the target and is
not ruled out (an open corrupt object recorded by verification), check its objects (existence and
size), restore it into a new data directory set up to replay WAL to the target
(``restore_physical``); when any of that fails for a backup fault (missing or damaged object, WAL
it needs to be consistent is missing, the target is before it ended), fall back to the next older
backup and say why. With a ``start`` hook the server is then started and waited for until
recovery has reached the target, and the ``check`` hook (the drill checks) runs against it.

Logical (``recover_logical``): the same choice among logical backups, streamed into the target
database in one transaction (a damaged chunk rolls it back, and the next older backup is tried),
then the checks against that database.

Never overwritten: the data directory must be absent or empty, the database absent or without
tables (checked before anything is written). Errors that are not a fault of a backup (storage
unreachable, a wrong key, a refused connection) stop the procedure instead of falling back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import structlog

from contentflow_backupd.catalog.base import AuditCatalog, RecoverCatalog, RestorePointCatalog
from contentflow_backupd.errors import (
    BackupdError,
    BackupNotFound,
    IntegrityError,
    ObjectNotFound,
    UsageError,
)
from contentflow_backupd.model import Scope, iso
from contentflow_backupd.observability import progress
from contentflow_backupd.ops.restore.logical import dropped_unless_done, restore_to_database
from contentflow_backupd.ops.restore.physical import (
    PhysicalRestoreOptions,
    PhysicalRestoreResult,
    restore_physical,
)
from contentflow_backupd.ops.restore.recover_report import (
    CheckOutcome,
    RecoverResult,
    RunChecks,
    ServerState,
    Skipped,
    StartServer,
)
from contentflow_backupd.ops.restore.target import RecoveryTarget
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.manifest import Manifest
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.source.base import LogicalTarget, PostgresDrivers

log = structlog.get_logger(__name__)

BACKUP_FAULTS = (IntegrityError, ObjectNotFound, BackupNotFound)
"""Faults of one backup: the next older one may still be good."""


# -- choosing ----------------------------------------------------------------------------------
def _manifests(
    repo: Repository, cluster: str, ref: str, mode: str, skipped: list[Skipped]
) -> Iterator[Manifest]:
    """Backups of ``mode``, newest first by finish time (ids only sort to the second); only
    ``ref`` when it is a backup id."""
    if ref != "latest":
        manifest = repo.read_manifest(cluster, layout.check_backup_id(ref))
        if manifest.mode != mode:
            other = "--to-database URL" if manifest.mode == "logical" else "--pgdata DIR"
            raise UsageError(f"backup {ref} is a {manifest.mode} backup; recover it with {other}")
        yield manifest
        return
    found: list[Manifest] = []
    for backup_id in reversed(list(repo.iter_backup_ids(cluster))):
        try:
            manifest = repo.read_manifest(cluster, backup_id)
        except BACKUP_FAULTS as exc:
            _skip(skipped, backup_id, f"its manifest cannot be read: {exc.message}")
            continue
        if manifest.mode == mode:
            found.append(manifest)
    yield from sorted(found, key=lambda m: (m.finished_at, m.id), reverse=True)


def _skip(skipped: list[Skipped], backup_id: str, reason: str) -> None:
    skipped.append(Skipped(backup_id, reason))
    log.warning("recover_backup_skipped", backup_id=backup_id, reason=reason)


def _note_damage(damaged: dict[str, str], exc: BackupdError, backup_id: str) -> None:
    key = getattr(exc, "key", None)
    if isinstance(key, str):
        damaged.setdefault(key, backup_id)


def _needs_damaged(manifest: Manifest, damaged: Mapping[str, str]) -> str | None:
    """Backups of one generation share chunks: one found damaged rules out every backup that
    needs it, without another attempt."""
    if not damaged:
        return None
    for ref in manifest.chunk_refs():
        key = layout.object_key(manifest.cluster, manifest.generation, ref)
        if key in damaged:
            return f"it needs object {key}, found damaged while restoring backup {damaged[key]}"
    return None


def _nothing_left(cluster: str, mode: str, ref: str, skipped: list[Skipped], what: str) -> BackupdError:
    if not skipped:
        return BackupNotFound(
            f"there are no {mode} backups of cluster {cluster!r} in the repository",
            hint=f"take one with `contentflow-backupd backup --kind full --mode {mode}`",
        )
    reasons = "; ".join(f"{s.backup_id}: {s.reason}" for s in skipped[:8])
    more = f" (and {len(skipped) - 8} more)" if len(skipped) > 8 else ""
    hint = (
        "recover without --backup to fall back to older backups"
        if ref != "latest"
        else "see docs/disaster-recovery.md: when no backup is good"
    )
    return UsageError(
        f"no {mode} backup of cluster {cluster!r} could be recovered {what}: {reasons}{more}; "
        f"{'nothing was written' if mode == 'physical' else 'the target database holds nothing restored'}",
        hint=hint,
    )


# -- physical ----------------------------------------------------------------------------------
def recover_physical(
    repo: Repository,
    archive: WalArchive,
    opts: PhysicalRestoreOptions,
    *,
    catalog: RecoverCatalog | None,
    excluded: Mapping[str, str],
    pg: PostgresDrivers,
    start: StartServer | None = None,
    check: RunChecks | None = None,
) -> RecoverResult:
    """Restore the newest good physical backup that reaches ``opts.target`` into ``opts.pgdata``
    (``opts.backup``: ``latest`` to choose, or one backup id: no fallback); with ``start``, start
    it and wait for recovery, then run ``check``. ``excluded``: backup id -> why it must not be
    used (open corrupt objects). ``pg``: the PostgreSQL side (files of the data directory,
    ``pg_combinebackup``). Raises ``UsageError`` (exit 2) for a non-empty data directory
    or when no backup can be recovered, naming each one and why."""
    t0 = time.monotonic()
    pgdata = Path(os.path.abspath(opts.pgdata))
    pg.datadir.check_new_directory(pgdata, "--pgdata")
    pg.datadir.resolve_owner(opts.owner)
    _check_restore_point(catalog, Scope(repo.id, opts.cluster), opts.target)
    skipped: list[Skipped] = []
    result: PhysicalRestoreResult | None = None
    chosen: Manifest | None = None
    damaged: dict[str, str] = {}
    for manifest in _manifests(repo, opts.cluster, opts.backup, "physical", skipped):
        why = excluded.get(manifest.id) or _needs_damaged(manifest, damaged)
        if why:
            _skip(skipped, manifest.id, why)
            continue
        try:
            result = restore_physical(
                repo, archive, _with_backup(opts, manifest.id, pgdata), pg=pg, catalog=catalog, audit=catalog
            )
        except BACKUP_FAULTS as exc:
            _note_damage(damaged, exc, manifest.id)
            _skip(skipped, manifest.id, exc.message)
            continue
        except UsageError as exc:  # the target is before it ended, or beyond its WAL chain
            _skip(skipped, manifest.id, exc.message)
            continue
        chosen = manifest
        break
    if result is None or chosen is None:
        raise _nothing_left(opts.cluster, "physical", opts.backup, skipped, f"to {opts.target.describe()}")
    restore_s = time.monotonic() - t0
    log.info("recover_restored", backup_id=chosen.id, skipped=len(skipped), seconds=round(restore_s, 3))
    server: ServerState | None = None
    recovery_s: float | None = None
    checks: list[CheckOutcome] = []
    if start is not None:
        t1 = time.monotonic()
        progress.phase("replaying WAL")
        server = start(result)
        recovery_s = time.monotonic() - t1
        if check is not None and server.reached != "shut down":
            progress.phase("checking")
            checks = list(check(chosen))
    return RecoverResult(
        mode="physical",
        backup_id=chosen.id,
        backup_kind=chosen.kind,
        backup_finished_at=chosen.finished_at,
        destination=str(pgdata),
        target={**opts.target.to_json(), "resolved_timeline": result.timeline},
        recovered_to=_physical_moment(result, server),
        restored_bytes=result.restored_bytes,
        restore_seconds=restore_s,
        recovery_seconds=recovery_s,
        total_seconds=time.monotonic() - t0,
        started=server is not None,
        server=server,
        skipped=skipped,
        checks=checks,
        next_steps=_physical_next_steps(result, server, opts.keep_archiving),
        warnings=list(result.warnings),
    )


def _check_restore_point(catalog: RestorePointCatalog | None, scope: Scope, target: RecoveryTarget) -> None:
    """A named target must exist before any backup is tried (no backup could reach it)."""
    if target.kind != "name":
        return
    if catalog is None:
        raise UsageError("--target-name needs the catalog, where restore points are recorded")
    if catalog.get_restore_point(scope, target.value) is None:
        raise UsageError(
            f"cluster {scope.cluster!r} has no restore point named {target.value!r} in the catalog; "
            "nothing was written",
            hint="list them with `contentflow-backupd restore-point list`",
        )


def _with_backup(opts: PhysicalRestoreOptions, backup_id: str, pgdata: Path) -> PhysicalRestoreOptions:
    return PhysicalRestoreOptions(
        cluster=opts.cluster,
        backup=backup_id,
        pgdata=pgdata,
        target=opts.target,
        tool=opts.tool,
        recovery=opts.recovery,
        owner=opts.owner,
        keep_archiving=opts.keep_archiving,
        concurrency=opts.concurrency,
        pg_bin=opts.pg_bin,
    )


def _physical_moment(result: PhysicalRestoreResult, server: ServerState | None) -> str:
    target: RecoveryTarget = result.target
    where = (
        f"the end of the WAL archive (segment {result.wal['last']})"
        if target.kind is None
        else target.describe()
    )
    if server is not None and server.replayed_to is not None:
        return f"{where}; the last transaction replayed committed at {iso(server.replayed_to)}"
    return where


def _physical_next_steps(
    result: PhysicalRestoreResult, server: ServerState | None, keep_archiving: bool
) -> list[str]:
    if server is None:
        return list(result.next_steps)
    steps: list[str] = []
    if server.reached == "paused":
        steps.append(
            "recovery is paused at the target and the server answers read-only queries: check the data, "
            "then SELECT pg_wal_replay_resume(); to open it for writes (new timeline)"
        )
    elif server.reached == "shut down":
        steps.append(
            f"the server shut down at the target; set recovery_target_action = 'promote' in "
            f"{result.pgdata}/postgresql.auto.conf and start it to open it for writes"
        )
    else:
        steps.append("the server is open for writes on a new timeline")
    log_note = f" (log {server.logfile})" if server.logfile else ""
    steps.append(
        f"it runs under pg_ctl{log_note}: stop it with `pg_ctl -D {result.pgdata} stop -m fast` and start "
        "it with your service manager"
    )
    steps.append(
        "point the applications at this server (or move its address to this host) and resume service"
    )
    if keep_archiving:
        steps.append(
            "archiving stays on: the new timeline goes into this repository; take a full backup now: "
            "`contentflow-backupd backup --kind full --mode physical`"
        )
    else:
        steps.append(
            "archive_mode is off: once this server replaces the lost one for good, ALTER SYSTEM RESET "
            "archive_mode and restart it (its new timeline then goes into this repository), or first point "
            "BACKUPD_CLUSTER at a new name; then take a full backup: "
            "`contentflow-backupd backup --kind full --mode physical`"
        )
    if result.recovery_dir is not None:
        steps.append(
            f"once recovery has ended, remove {result.recovery_dir}: it holds the settings "
            "restore_command used"
        )
    return steps


# -- logical -----------------------------------------------------------------------------------
def recover_logical(
    repo: Repository,
    cluster: str,
    target: LogicalTarget,
    *,
    backup: str = "latest",
    excluded: Mapping[str, str],
    check: RunChecks | None = None,
    concurrency: int = 8,
    audit: AuditCatalog | None = None,
) -> RecoverResult:
    """Restore the newest good logical backup (or ``backup``, without fallback) into ``target``
    (created when missing; refused when it holds tables), then run ``check`` on it. ``audit``:
    the catalog each restore attempt is recorded in."""
    t0 = time.monotonic()
    created = target.prepare(create=True, clean=False)
    skipped: list[Skipped] = []
    chosen: Manifest | None = None
    restored = 0
    damaged: dict[str, str] = {}
    with dropped_unless_done(target, created):  # interrupted, or nothing restorable: dropped again
        for manifest in _manifests(repo, cluster, backup, "logical", skipped):
            why = excluded.get(manifest.id) or _needs_damaged(manifest, damaged)
            if why:
                _skip(skipped, manifest.id, why)
                continue
            try:
                out = restore_to_database(
                    repo, cluster, manifest.id, target, create=True, clean=False,
                    concurrency=concurrency, audit=audit,
                )  # fmt: skip
            except BACKUP_FAULTS as exc:
                _note_damage(damaged, exc, manifest.id)
                _skip(skipped, manifest.id, f"{exc.message} (the restore was rolled back)")
                continue
            chosen, restored = manifest, out.restored_bytes
            break
        if chosen is None:
            raise _nothing_left(cluster, "logical", backup, skipped, f"into {target.describe()}")
    restore_s = time.monotonic() - t0
    progress.phase("checking")
    checks = list(check(chosen)) if check is not None else []
    snapshot = iso(chosen.started_at)
    return RecoverResult(
        mode="logical",
        backup_id=chosen.id,
        backup_kind=chosen.kind,
        backup_finished_at=chosen.finished_at,
        destination=target.describe(),
        target={"database": target.describe()},
        recovered_to=f"the snapshot of backup {chosen.id}, taken at {snapshot}",
        restored_bytes=restored,
        restore_seconds=restore_s,
        recovery_seconds=None,
        total_seconds=time.monotonic() - t0,
        started=True,
        skipped=skipped,
        checks=checks,
        next_steps=[
            f"point the applications at {target.describe()} and resume service",
            f"writes made after {snapshot} are not in this backup: recover them from other sources if "
            "you can",
            "take a full backup of the recovered database: `contentflow-backupd backup --kind full` "
            "(with BACKUPD_DATABASE_URL pointing at it)",
        ],
    )
