"""``migrate --dry-run``: the staging test on real data. The latest backup is restored into a
scratch instance by the restore-drill machinery (``ops/drill/run.py``: the drill is recorded as one,
since it proves the backup restores), and steps 1, 3 and 4 of the guard (pre-flight, apply,
validate) run there against production-shaped data. The report says how long the migration
took, which locks it waited on and held, and what the checks found. Production is not touched:
no connection to it changes anything, no safety net is taken, no role setting is changed there.
"""

from __future__ import annotations

import dataclasses
import time
from urllib.parse import quote, urlencode

import structlog

from contentflow_backupd.catalog.base import DryRunCatalog
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.migrate.guard import (
    GuardDeps,
    GuardOptions,
    MigrateResult,
    audit_migration,
    new_run_record,
    run_steps,
)
from contentflow_backupd.model import utcnow
from contentflow_backupd.ops.drill.checks import CheckResult
from contentflow_backupd.ops.drill.run import DrillOptions, run_drill
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.signals import Interrupted
from contentflow_backupd.source.base import Database
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.drivers import PgDrivers, conninfo_of

log = structlog.get_logger(__name__)


def conninfo_url(info: ConnInfo) -> str:
    """A ``postgresql://`` URL for ``info`` that libpq and Prisma both read (a Unix socket
    directory goes in the ``host`` query parameter)."""
    p = dict(info.params)
    user = quote(p.pop("user", ""), safe="")
    password = f":{quote(info.password, safe='')}" if info.password else ""
    host = p.pop("host", "localhost")
    port = p.pop("port", "5432")
    db = quote(p.pop("dbname", ""), safe="")
    query = dict(p)
    authority_host = host
    if host.startswith("/"):
        query["host"] = host
        authority_host = "localhost"
    q = f"?{urlencode(query)}" if query else ""
    return f"postgresql://{user}{password}@{authority_host}:{port}/{db}{q}"


def run_dry(
    repo: Repository, catalog: DryRunCatalog, opts: GuardOptions, deps: GuardDeps, drill: DrillOptions
) -> MigrateResult:
    """Restore, rehearse, report, record (``migration_runs`` with ``dry_run`` true)."""
    record = new_run_record(dataclasses.replace(opts, dry_run=True))
    result = MigrateResult(record)
    catalog.save_migration_run(record)
    t0 = time.monotonic()
    reached: list[ConnInfo] = []

    def rehearse(db: Database) -> None:
        info = conninfo_of(db)
        reached.append(info)
        log.info("migration_dry_run_restored", database=info.display())
        try:
            run_steps(opts, deps, result, info, conninfo_url(info))
        except (Interrupted, KeyboardInterrupt):
            raise
        except BackupdError as exc:
            record.status, record.error = "failed", exc.message

    with structlog.contextvars.bound_contextvars(migration_id=record.id, dry_run=True):
        log.info("migration_dry_run_started", actor=record.actor, command=record.command)
        drilled = run_drill(
            repo, catalog, dataclasses.replace(drill, on_ready=rehearse, target_time=None), pg=PgDrivers()
        )
        record.details["drill"] = {
            "id": drilled.id,
            "backup_id": drilled.backup_id,
            "restore_seconds": drilled.rto_seconds,
            "status": drilled.status,
        }
        if not reached:
            record.status = "failed"
            record.error = f"the dry run could not restore the latest backup: {drilled.error}"
            result.checks.append(CheckResult("dry_run_restore", "failed", record.error))
        else:
            result.checks.insert(
                0,
                CheckResult(
                    "dry_run_restore",
                    "passed",
                    f"backup {drilled.backup_id} restored into a scratch instance in "
                    f"{drilled.rto_seconds or 0:.1f}s; production was not touched",
                ),
            )
        if record.status == "running":
            record.status = "failed"
        result.duration_seconds = time.monotonic() - t0
        record.finished_at = utcnow()
        record.details["checks"] = [c.to_json() for c in result.checks]
        record.details["applied"] = list(result.applied)
        record.details["duration_seconds"] = round(result.duration_seconds, 3)
        if result.command is not None:
            record.details["command_seconds"] = round(result.command.duration_seconds, 3)
            record.details["locks"] = result.command.progress
        catalog.save_migration_run(record)
        audit_migration(catalog, record, repo)
        log.info(
            "migration_dry_run_finished",
            status=record.status,
            applied=result.applied,
            duration_seconds=round(result.duration_seconds, 3),
        )
    deps.finished(record)
    return result
