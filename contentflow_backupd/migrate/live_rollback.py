"""``migrate rollback --to-restore-point NAME [--confirm]``: put the live database back to the
logical backup a ``migrate`` run took as its safety net (restore point ``pre-migrate-<id>``).

Without ``--confirm`` nothing is changed: the plan is printed (which backup, what is dropped,
what is lost). With it, the backup is written to a private file in the state directory and
restored over the live database in one transaction (``source/live_restore.py``), then the schema
is compared with the one recorded before the migration, and the rollback is recorded on the run.
Physical safety nets are restored with ``recover``/``restore --target-name`` into a new data
directory instead (the recovery plan of the failed run says so).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd.catalog.base import MigrationCatalog
from contentflow_backupd.catalog.guard_records import MigrationRunRecord
from contentflow_backupd.errors import UsageError
from contentflow_backupd.migrate.apply import actor
from contentflow_backupd.model import Scope, iso, utcnow
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.ops.restore.logical import restore_to_file
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.live_restore import replace_contents
from contentflow_backupd.source.schema import dump_schema

log = structlog.get_logger(__name__)


def find_run(catalog: MigrationCatalog, scope: Scope, name: str) -> MigrationRunRecord:
    cluster = scope.cluster
    for record in reversed(catalog.list_migration_runs(scope)):
        if record.restore_point == name:
            return record
    raise UsageError(
        f"no migration of cluster {cluster!r} recorded a restore point named {name!r}",
        hint="the name is in the failed migration's output (restore_point, e.g. pre-migrate-<id>)",
    )


def rollback_live(
    repo: Repository,
    catalog: MigrationCatalog,
    *,
    cluster: str,
    name: str,
    info: ConnInfo,
    confirm: bool,
    state_dir: Path,
    lock_dir: Path,
    bin_dir: Path | None,
    concurrency: int,
) -> dict[str, Any]:
    """The plan (``confirm`` False) or the rollback's result (module docstring)."""
    record = find_run(catalog, Scope(repo.id, cluster), name)
    if record.backup_id is None:
        raise UsageError(
            f"restore point {name!r} is a physical restore point: it is recovered into a new data "
            "directory, not over the live database",
            hint=f"contentflow-backupd recover --pgdata NEW_DATA_DIR --target-name {name} --start",
        )
    plan: dict[str, Any] = {
        "restore_point": name,
        "migration_id": record.id,
        "backup_id": record.backup_id,
        "database": info.display(),
        "taken_at": iso(record.started_at),
        "what": f"replace every schema of {info.display()} with backup {record.backup_id} in one "
        "transaction; everything committed since the backup is lost",
        "confirmed": confirm,
    }
    if not confirm:
        return plan
    t0 = time.monotonic()
    with exclusive(lock_dir, f"migrate-{cluster}", what=f"a migration of cluster {cluster!r}"):
        tmp = state_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        archive = tmp / f"rollback-{record.id}-{os.getpid()}.dump"
        try:
            restore_to_file(repo, cluster, record.backup_id, archive, concurrency=concurrency)
            log.warning("migration_live_rollback_started", restore_point=name, backup_id=record.backup_id)
            replace_contents(info, archive, bin_dir=bin_dir, tmp_root=tmp)
        finally:
            archive.unlink(missing_ok=True)
        after = dump_schema(info, bin_dir=bin_dir, tmp_root=tmp)
    same = record.schema_before is not None and after == record.schema_before
    plan.update(
        status="rolled_back" if same else "restored_schema_differs",
        schema_equals_before=same,
        duration_seconds=round(time.monotonic() - t0, 3),
    )
    record.details.setdefault("live_rollbacks", []).append(
        {"at": iso(utcnow()), "actor": actor(), "status": plan["status"], "backup_id": record.backup_id}
    )
    catalog.save_migration_run(record)
    log.info("migration_live_rollback_finished", restore_point=name, schema_equals_before=same)
    return plan
