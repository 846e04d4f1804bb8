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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd.catalog.base import RestorePointCatalog
from contentflow_backupd.errors import (
    IntegrityError,
    UsageError,
)
from contentflow_backupd.model import RestorePoint, Scope, iso
from contentflow_backupd.observability import progress
from contentflow_backupd.ops.audit import AuditTo, audited
from contentflow_backupd.ops.backup.native import native_chain
from contentflow_backupd.ops.restore.plan import plan_physical_restore
from contentflow_backupd.ops.restore.target import RecoveryTarget
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

log = structlog.get_logger(__name__)


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
    writers: int = 1
    """Threads that wrote the files (``BACKUPD_RESTORE__PROCESS_MAX``, ``--process-max``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "succeeded",
            "backup_id": self.backup_id,
            "chain": self.chain,
            "pgdata": str(self.pgdata),
            "target": {**self.target.to_json(), "resolved_timeline": self.timeline},
            "restored_bytes": self.restored_bytes,
            "files": self.files,
            "writers": self.writers,
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
    audit: AuditTo = None,
) -> PhysicalRestoreResult:
    """``pg``: the PostgreSQL side (``pg.datadir`` writes the data directory, ``pg.combiner``
    runs pg_combinebackup for a native chain); ``catalog``: where restore points are looked up;
    ``audit``: the catalog to record the restore in, or one that opens while the restore writes
    (``ops/audit.py``, ``AuditLater``); None records nothing."""
    details = {"cluster": opts.cluster, "mode": "physical", "pgdata": str(opts.pgdata)}
    details["target"] = opts.target.describe()
    with audited(audit, "restore", objects=[opts.backup], details=details, repo=repo) as recorded:
        result = _restore_physical(repo, archive, opts, catalog, pg, recorded.begin)
        recorded.details.update(backup_id=result.backup_id, restored_bytes=result.restored_bytes)
        return result


def _restore_physical(
    repo: Repository,
    archive: WalArchive,
    opts: PhysicalRestoreOptions,
    catalog: RestorePointCatalog | None,
    pg: PostgresDrivers,
    begin: Callable[[], None],
) -> PhysicalRestoreResult:
    """``begin``: called once every check passed, when the writing starts (``AuditScope``)."""
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
    begin()
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
        writers=stats.writers,
    )
    log.info(
        "restore_completed",
        backup_id=m.id,
        pgdata=str(pgdata),
        duration_seconds=round(result.duration_seconds, 3),
        writers=stats.writers,
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
    writers = 1
    try:
        inputs: list[Path] = []
        for i, (link, entry) in enumerate(zip(chain, entries, strict=True)):
            dest = work / f"{i:03d}-{link.id}"
            dest.mkdir(mode=0o700)
            log.info("restore_chain_extracting", backup_id=link.id, position=i + 1, of=len(chain))
            writers = _extract(pg.datadir, repo, link, entry, dest, owner, concurrency).writers
            inputs.append(dest)
        major = int(chain[-1].details.get("pg_version_num", 0)) // 10000
        progress.phase("pg_combinebackup", quiet_s=progress.UNMEASURED)  # it reports nothing
        pg.combiner.combine(tool, inputs, pgdata, link=major >= 18)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pg.datadir.give_tree(pgdata, owner)
    stats = ExtractStats(names=set(os.listdir(pgdata)), writers=writers)
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
