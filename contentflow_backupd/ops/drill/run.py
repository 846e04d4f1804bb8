"""``run_drill``: prove that a backup restores, measure how long it takes, and record it.

Physical backups are restored into a scratch data directory under
``<state_dir>/drills/<drill-id>/`` by the ordinary physical restore (``ops/restore/physical.py``),
to a random point of the recovery window by default, checked with ``pg_verifybackup``, started as
a private instance (``source/scratch.py``: archiving off, restore_command only fetches) and
followed until recovery has reached the target and the server answers queries: that moment, from
the drill's start, is the measured RTO (``pg_verifybackup``'s time is not part of it: a real
recovery would not run it). Logical backups are restored with ``pg_restore`` into a scratch
database on ``BACKUPD_DRILL__DATABASE_URL``, else into a private instance made by ``initdb``.
Then the checks of ``ops/drill/checks.py`` run, the scratch instance, files and database are
removed, and the drill is recorded in the catalog (table ``drills``) with its run (job
``restore_test``). How the random target is drawn: ``ops/drill/physical.py``. Where a drill
works and how a crashed one is cleaned up: ``ops/drill/workspace.py``. The drill never writes
into the repository. The user's guide is ``docs/drills.md``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd.catalog.base import AuditCatalog, DrillJobCatalog, DrillRecord, RunCatalog
from contentflow_backupd.errors import BackupdError, BackupNotFound, LockedError, UsageError
from contentflow_backupd.model import BackupMode, RunTrigger, Scope, utcnow
from contentflow_backupd.observability import progress
from contentflow_backupd.ops.audit import record_event
from contentflow_backupd.ops.backup.run import reap_interrupted
from contentflow_backupd.ops.drill.checks import CheckLog, CheckResult, passed, run_checks
from contentflow_backupd.ops.drill.physical import drill_physical
from contentflow_backupd.ops.drill.workspace import Workspace, cleanup_stale_drills
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.ops.restore.logical import restore_to_database
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.manifest import Manifest
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.signals import Interrupted
from contentflow_backupd.source.base import Database, PostgresDrivers, RecoveryConfig

log = structlog.get_logger(__name__)

JOB = "restore_test"


@dataclass
class DrillOptions:
    cluster: str
    state_dir: Path
    mode: BackupMode
    """Which backups ``latest`` picks from."""
    backup: str = "latest"
    target_time: str | None = "random"
    """``random`` (a random point of the recovery window), an ISO 8601 time, or None (the end of
    the WAL archive). Physical backups only."""
    pg_bin: Path | None = None
    """Server binaries of the scratch instance (``BACKUPD_DRILL__PG_BIN``)."""
    client_bin: Path | None = None
    """Client tools (pg_restore, pg_verifybackup) (``BACKUPD_PG_BIN``)."""
    database: Database | None = None
    """Logical drills restore into a scratch database on this server when set."""
    checks_file: Path | None = None
    tool: Sequence[str] = ()
    """How PostgreSQL runs this program (restore_command)."""
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    concurrency: int = 8
    lock_dir: Path | None = None
    ready_timeout: float | None = None
    """Give up waiting for the scratch server after this many seconds (None: wait while it runs)."""
    seed: int | None = None
    scratch_dir: Path | None = None
    """Where the drill's files go when the scratch server runs as another OS user
    (``BACKUPD_DRILL__SCRATCH_DIR``; ``ops/drill/workspace.py``)."""
    on_ready: Callable[[Database], None] | None = None
    """Called with the restored database once the drill's checks have run, before the scratch
    instance is removed (``migrate --dry-run`` rehearses the migration there)."""


@dataclass
class DrillResult:
    id: str
    cluster: str
    mode: str
    started_at: datetime
    backup_id: str | None = None
    target: str = "-"
    rto_seconds: float | None = None
    restored_bytes: int | None = None
    checks: list[CheckResult] = field(default_factory=list)
    finished_at: datetime | None = None
    run_id: int | None = None

    @property
    def succeeded(self) -> bool:
        return bool(self.checks) and passed(self.checks)

    @property
    def status(self) -> str:
        return "succeeded" if self.succeeded else "failed"

    @property
    def throughput_bytes_per_s(self) -> float | None:
        if not self.rto_seconds or self.restored_bytes is None:
            return None
        return self.restored_bytes / self.rto_seconds

    @property
    def error(self) -> str | None:
        failed = [c for c in self.checks if c.status == "failed"]
        return "; ".join(f"{c.name}: {c.detail}" for c in failed)[:4000] or None

    def to_json(self) -> dict[str, Any]:
        """``restore-test --json``: exactly these keys."""
        return {
            "status": self.status,
            "backup_id": self.backup_id,
            "target": self.target,
            "rto_seconds": None if self.rto_seconds is None else round(self.rto_seconds, 3),
            "restored_bytes": self.restored_bytes,
            "checks": [c.to_json() for c in self.checks],
        }

    def record(self) -> DrillRecord:
        return DrillRecord(
            id=self.id,
            cluster=self.cluster,
            mode=self.mode,
            backup_id=self.backup_id,
            target=self.target,
            status="succeeded" if self.succeeded else "failed",
            started_at=self.started_at,
            finished_at=self.finished_at,
            rto_seconds=self.rto_seconds,
            restored_bytes=self.restored_bytes,
            throughput_bytes_per_s=self.throughput_bytes_per_s,
            checks=tuple(c.to_json() for c in self.checks),
            error=self.error,
            run_id=self.run_id,
        )


def new_drill_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-drill-{secrets.token_hex(3)}"


def run_drill(
    repo: Repository,
    catalog: DrillJobCatalog,
    opts: DrillOptions,
    *,
    pg: PostgresDrivers,
    run_id: int | None = None,
    trigger: RunTrigger = "manual",
    cancel: threading.Event | None = None,
) -> DrillResult:
    """Run one drill and record it (and, without ``run_id``, its run: job ``restore_test``).
    A failed drill is a result with status ``failed``, not an exception; ``LockedError`` when
    another drill of the cluster runs here (the run is ``skipped``). ``cancel`` (set by the
    daemon at shutdown) stops waiting for the scratch server; a drill that failed because of it
    is not recorded and its run is ``interrupted``. Whatever happens, the scratch instance, its
    files and its scratch database are removed before this returns or raises. ``pg``: the
    PostgreSQL side (``source.drivers.PgDrivers``; fakes in ``tests/support/fake_pg.py``)."""
    own_run = run_id is None
    if own_run:
        reap_interrupted(catalog)
        scope = Scope(repo.id, opts.cluster)
        run_id = catalog.start_run(scope, JOB, trigger, pid=os.getpid(), host=socket.gethostname()).id
    assert run_id is not None
    try:
        with structlog.contextvars.bound_contextvars(run_id=run_id, job=JOB):
            if opts.lock_dir is None:
                result = _drill(repo, opts, run_id, cancel, pg)
            else:
                with exclusive(
                    opts.lock_dir, f"drill-{opts.cluster}", what=f"a restore drill of {opts.cluster!r}"
                ):
                    result = _drill(repo, opts, run_id, cancel, pg)
    except LockedError as exc:
        if own_run:
            _finish_run(catalog, run_id, "skipped", exc.message)
        raise
    except (Interrupted, KeyboardInterrupt):
        if own_run:
            _finish_run(
                catalog, run_id, "interrupted", "interrupted by a signal; the scratch instance was removed"
            )
        raise
    if cancel is not None and cancel.is_set() and not result.succeeded:
        # Stopped at shutdown: an interrupted drill proves nothing either way; not recorded.
        if own_run:
            _finish_run(catalog, run_id, "interrupted", f"stopped at shutdown: {result.error}")
        return result
    try:
        catalog.add_drill(dataclasses.replace(result.record(), repository_id=repo.id))
    except BackupdError as exc:
        log.error("catalog_update_failed", error=exc.message)
    _audit_drill(catalog, result, run_id)
    if own_run:
        _finish_run(catalog, run_id, "succeeded" if result.succeeded else "failed", result.error)
    return result


def _audit_drill(catalog: AuditCatalog, result: DrillResult, run_id: int) -> None:
    """Record the drill in the audit trail. Not copied to the repository now: a drill writes
    nothing there; the next operation that writes to it carries the record along."""
    drill = result.record()
    details = {
        "drill_id": drill.id,
        "cluster": drill.cluster,
        "mode": drill.mode,
        "target": drill.target,
        "rto_seconds": drill.rto_seconds,
        "run_id": run_id,
    }
    if drill.error:
        details["error"] = drill.error
    objects = [drill.backup_id] if drill.backup_id else []
    record_event(catalog, action="drill", outcome=drill.status, objects=objects, details=details)


def _finish_run(catalog: RunCatalog, run_id: int, status: str, error: str | None) -> None:
    try:
        catalog.finish_run(run_id, status, error=error)  # type: ignore[arg-type]
    except BackupdError as exc:
        log.error("catalog_update_failed", error=exc.message)


def _drill(
    repo: Repository, opts: DrillOptions, run_id: int, cancel: threading.Event | None, pg: PostgresDrivers
) -> DrillResult:
    t0 = time.monotonic()
    started = utcnow()
    result = DrillResult(new_drill_id(started), opts.cluster, opts.mode, started, run_id=run_id)
    step = CheckLog(result.checks)
    cleanup_stale_drills(opts.state_dir, scratch=pg.scratch, admin=pg.admin, database=opts.database)
    log.info("drill_started", drill_id=result.id, backup=opts.backup)
    try:
        manifest = _choose_backup(repo, opts)
    except BackupdError as exc:
        step.fail("restore", exc)
        result.finished_at = utcnow()
        log.error("drill_failed", drill_id=result.id, error=result.error)
        return result
    result.backup_id, result.mode = manifest.id, manifest.mode
    try:
        owner = pg.scratch.owner() if manifest.mode == "physical" or opts.database is None else None
        workspace = Workspace.create(
            opts.state_dir,
            result.id,
            shared=owner is not None and not owner.is_me,
            scratch=pg.scratch,
            scratch_dir=opts.scratch_dir,
        )
    except (OSError, BackupdError) as exc:
        step.fail("restore", exc)
        result.finished_at = utcnow()
        return result
    keep = False
    try:
        if manifest.mode == "physical":
            drill_physical(repo, opts, manifest, workspace, result, t0, cancel, pg)
        else:
            _logical(repo, opts, manifest, workspace, result, t0, pg)
    finally:
        if workspace.server is not None:
            try:
                workspace.server.stop()
            except (OSError, BackupdError) as exc:
                log.error("drill_server_stop_failed", error=str(exc))
        if workspace.marker.get("database") and opts.database is not None:
            try:
                pg.admin.drop_database(opts.database, str(workspace.marker["database"]))
            except BackupdError as exc:
                log.error("drill_database_drop_failed", error=exc.message)
                keep = True  # its marker names the database: the next drill drops it
        if not keep:
            workspace.remove()
    result.finished_at = utcnow()
    event = "drill_succeeded" if result.succeeded else "drill_failed"
    log.info(
        event,
        drill_id=result.id,
        backup_id=result.backup_id,
        target=result.target,
        rto_seconds=None if result.rto_seconds is None else round(result.rto_seconds, 3),
        restored_bytes=result.restored_bytes,
        error=result.error,
    )
    return result


def _choose_backup(repo: Repository, opts: DrillOptions) -> Manifest:
    if opts.backup != "latest":
        return repo.read_manifest(opts.cluster, layout.check_backup_id(opts.backup))
    for backup_id in reversed(list(repo.iter_backup_ids(opts.cluster))):
        try:
            manifest = repo.read_manifest(opts.cluster, backup_id)
        except BackupdError as exc:
            log.warning("manifest_unreadable", backup_id=backup_id, error=exc.message)
            continue
        if manifest.mode == opts.mode:
            return manifest
    raise BackupNotFound(
        f"there are no {opts.mode} backups of cluster {opts.cluster!r} in {repo.storage.url} to drill",
        hint=f"take one with `contentflow-backupd backup --kind full --mode {opts.mode}`",
    )


# -- logical ---------------------------------------------------------------------------------
_MAJOR = re.compile(r"^\s*(\d+)")


def _logical(
    repo: Repository,
    opts: DrillOptions,
    manifest: Manifest,
    ws: Workspace,
    result: DrillResult,
    t0: float,
    pg: PostgresDrivers,
) -> None:
    step = CheckLog(result.checks)
    result.target = "the backup"
    if opts.target_time not in (None, "random", "none"):
        step.fail(
            "restore",
            UsageError(f"backup {manifest.id} is logical: --target-time applies to physical backups"),
        )
        return
    try:
        if opts.database is not None:
            name = f"backupd_drill_{secrets.token_hex(4)}"
            ws.note(database=name)
            info = opts.database.with_database(name)
        else:
            m = _MAJOR.match(str(manifest.details.get("pg_version", "")))
            server = ws.start_empty_server(
                int(m.group(1)) if m else 0,
                opts.pg_bin,
                ready_timeout=opts.ready_timeout,
                client_bin=opts.client_bin,
            )
            info = server.conninfo("drill")
        target = pg.admin.restore_target(info, bin_dir=opts.client_bin, tmp_root=ws.path / "tmp")
        restored = restore_to_database(
            repo, opts.cluster, manifest.id, target, create=True, clean=False, no_owner=True,
            concurrency=opts.concurrency,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a drill reports every failure as a check
        step.fail("restore", exc)
        return
    result.restored_bytes = restored.restored_bytes
    step.restore_passed(
        manifest.id,
        f"{restored.restored_bytes} bytes of pg_dump archive",
        restored.duration_seconds,
        into=info.display(),
    )
    try:
        pg.facts.server_state(info)
    except BackupdError as exc:
        step.fail("recovery", exc)
        return
    result.rto_seconds = time.monotonic() - t0
    step.add(
        CheckResult(
            "recovery",
            "passed",
            f"the restored database answered queries {result.rto_seconds:.1f}s after the drill started",
        )
    )
    progress.phase("checking", quiet_s=progress.UNMEASURED)
    result.checks.extend(
        run_checks(pg.facts, info, manifest.details, opts.checks_file, create_extensions=True)
    )
    if opts.on_ready is not None:
        opts.on_ready(info)
