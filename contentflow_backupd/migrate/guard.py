"""``migrate -- COMMAND``: a schema migration that is checked, backed up, observed, validated and
undone when it fails. The user's guide is ``docs/migrations.md``; the steps, in order:

1. pre-flight (``migrate/preflight.py``): any failed check refuses (exit 4) and runs nothing;
2. safety net: a restore point ``pre-migrate-<id>`` with its WAL archived (physical mode) or an
   incremental backup (logical mode), and the schema before (``pg_dump --schema-only``), all
   recorded in the catalog (table ``migration_runs``);
3. apply (``migrate/apply.py``): COMMAND with ``DATABASE_URL``, the timeouts in force, its output
   and progress logged;
4. validate: every migration on disk finished in ``_prisma_migrations`` and none failed; the
   schema after equals the schema before with the applied migrations replayed on it
   (``migrate/expect.py``); the user's checks (``BACKUPD_MIGRATE__CHECKS``) hold;
5. on failure: ``down.sql`` rollback or a recovery plan (``migrate/rollback.py``).

Only a check that ran and failed is a failure. A check that could not run (``not_run``: the
scratch server of ``schema_matches_migrations`` did not start, its tool is missing, a timeout)
proves nothing either way, so it never undoes an applied migration: the run ends ``unverified``
(exit 3) with the check, why it did not run and what to do. ``--strict-checks`` counts it as a
failure instead (rollback, exit 1).

The run is recorded (who, what, checksums, outcome) whatever happens; ``--dry-run``
(``migrate/dryrun.py``) runs steps 1, 3 and 4 against a restored copy instead.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import structlog

from contentflow_backupd.catalog.base import AuditCatalog, MigrationCatalog, MigrationGuardCatalog
from contentflow_backupd.catalog.guard_records import MigrationRunRecord, MigrationStatus
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.migrate.apply import CommandResult, actor, pg_duration, redact_command, run_command
from contentflow_backupd.migrate.prisma import MigrationFile, read_migrations_dir
from contentflow_backupd.migrate.rollback import MigrationDone, recovery_plan, roll_back
from contentflow_backupd.migrate.validate import validate
from contentflow_backupd.model import Scope, utcnow
from contentflow_backupd.ops.audit import record_event
from contentflow_backupd.ops.drill.checks import CheckResult, not_run, passed
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.signals import Interrupted
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.prisma_db import read_prisma_migrations
from contentflow_backupd.source.schema import RoleSettings, apply_role_settings, dump_schema, write_counters

log = structlog.get_logger(__name__)

EXIT_UNVERIFIED = 3
"""Applied and kept, but a post-migration check could not run (status ``unverified``)."""
EXIT_REFUSED = 4
EXIT_CODES: dict[str, int] = {
    "applied": 0,
    "noop": 0,
    "unverified": EXIT_UNVERIFIED,
    "failed": 1,
    "rolled_back": 1,
    "refused": EXIT_REFUSED,
}


@dataclass
class SafetyNet:
    restore_point: str | None = None
    backup_id: str | None = None
    lsn: str | None = None
    at: datetime | None = None


@dataclass
class GuardOptions:
    cluster: str
    migrations_dir: Path
    command: list[str]
    database_url: str
    """The URL COMMAND gets as ``DATABASE_URL`` (a secret: never logged or recorded)."""
    conninfo: ConnInfo
    mode: str
    lock_dir: Path
    allow_risky: bool = False
    on_failure: Literal["rollback", "stop"] = "rollback"
    lock_timeout: float = 5.0
    statement_timeout: float | None = None
    checks_file: Path | None = None
    strict_checks: bool = False
    """A post-migration check that could not run counts as failed (rollback) instead of leaving
    the migration applied with status ``unverified``."""
    config_arg: str = ""
    """`` --config PATH`` when a config file was given: the recovery plan's commands repeat it."""
    dry_run: bool = False
    pg_bin: Path | None = None
    """``BACKUPD_PG_BIN``: where pg_dump is (the schema before and after)."""
    repository_id: str | None = None
    """The repository of the safety net: the scope (with ``cluster``) of the run's record."""


@dataclass
class GuardDeps:
    """What the guard needs from the outside world, wired by ``cli/migrate.py``."""

    preflight: Callable[[ConnInfo], list[CheckResult]]
    """Step 1 against a database: every pre-flight check, ``migrate check`` included."""
    progress: Callable[[ConnInfo], Any]
    """A context manager logging the migration's progress, with ``summary()``."""
    safety_net: Callable[[str], SafetyNet]
    """Step 2 given the restore point name: a backup (logical) or restore point (physical)."""
    expected_schema: Callable[[str, Sequence[tuple[str, str]]], str]
    """The schema before with the given migrations replayed on it."""
    user_checks: Callable[[ConnInfo, Path | None], list[CheckResult]]
    finished: Callable[[MigrationRunRecord], None] = lambda record: None
    """Called with the final record (metrics, webhook)."""


@dataclass
class MigrateResult:
    record: MigrationRunRecord
    checks: list[CheckResult] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0
    rollback: dict[str, Any] | None = None
    recovery_plan: dict[str, Any] | None = None
    command: CommandResult | None = None

    @property
    def status(self) -> MigrationStatus:
        return self.record.status

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.record.id,
            "status": self.status,
            "dry_run": self.record.dry_run,
            "checks": [c.to_json() for c in self.checks],
            "restore_point": self.record.restore_point,
            "backup_id": self.record.backup_id,
            "applied": list(self.applied),
            "duration_seconds": round(self.duration_seconds, 3),
            "rollback": self.rollback,
            "recovery_plan": self.recovery_plan,
            "schema_diff": self.record.details.get("schema_diff"),
            "command": None
            if self.command is None
            else {
                "returncode": self.command.returncode,
                "duration_seconds": round(self.command.duration_seconds, 3),
                "output_tail": self.command.output_tail,
                "progress": self.command.progress,
            },
            "error": self.record.error,
        }


def new_migration_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-migrate-{secrets.token_hex(3)}"


def new_run_record(opts: GuardOptions) -> MigrationRunRecord:
    """The run's record as it starts: who runs what (the command's secrets redacted)."""
    started = utcnow()
    return MigrationRunRecord(
        id=new_migration_id(started),
        cluster=opts.cluster,
        database=opts.conninfo.dbname or "",
        actor=actor(),
        command=redact_command(opts.command, [opts.database_url, opts.conninfo.password or ""]),
        dry_run=opts.dry_run,
        status="running",
        started_at=started,
        repository_id=opts.repository_id,
    )


def repair_interrupted(catalog: MigrationCatalog, scope: Scope, conninfo: ConnInfo) -> list[str]:
    """Runs left ``running`` by a crashed ``migrate`` (the caller holds the migrate lock, so none
    is alive): put back the role settings they had changed, and record them as failed."""
    repaired = []
    for record in catalog.list_migration_runs(scope, status="running"):
        saved = record.details.get("role_settings")
        note = "interrupted: the migrate process ended without finishing"
        if saved:
            apply_role_settings(conninfo, RoleSettings.from_json(saved))
            record.details.pop("role_settings", None)
            note += "; the role settings it had changed were put back"
            log.warning(
                "migration_settings_restored_after_crash", migration_id=record.id, role=saved.get("role")
            )
        record.status, record.finished_at, record.error = "failed", utcnow(), note
        catalog.save_migration_run(record)
        repaired.append(record.id)
    return repaired


def run_migrate(catalog: MigrationGuardCatalog, opts: GuardOptions, deps: GuardDeps) -> MigrateResult:
    """Run the whole guarded migration (module docstring) and record it. ``LockedError`` when
    another ``migrate`` of the cluster runs here."""
    record = new_run_record(opts)
    result = MigrateResult(record)
    t0 = time.monotonic()
    with exclusive(opts.lock_dir, f"migrate-{opts.cluster}", what=f"a migration of cluster {opts.cluster!r}"):
        if opts.repository_id is not None:
            repair_interrupted(catalog, Scope(opts.repository_id, opts.cluster), opts.conninfo)
        catalog.save_migration_run(record)
        with structlog.contextvars.bound_contextvars(migration_id=record.id):
            log.info("migration_started", actor=record.actor, command=record.command, dry_run=opts.dry_run)
            try:
                _guarded(catalog, opts, deps, result, opts.conninfo)
            except (Interrupted, KeyboardInterrupt):
                _finish(catalog, result, "failed", "interrupted by a signal", t0)
                deps.finished(record)
                raise
            except BackupdError as exc:
                _finish(catalog, result, "failed", exc.message, t0)
            else:
                _finish(catalog, result, result.record.status, result.record.error, t0)
    deps.finished(record)
    return result


def _finish(
    catalog: MigrationGuardCatalog, result: MigrateResult, status: str, error: str | None, t0: float
) -> None:
    record = result.record
    record.status = "failed" if status == "running" else status  # type: ignore[assignment]
    record.error = error
    record.finished_at = utcnow()
    result.duration_seconds = time.monotonic() - t0
    record.details["checks"] = [c.to_json() for c in result.checks]
    record.details["applied"] = list(result.applied)
    record.details["duration_seconds"] = round(result.duration_seconds, 3)
    if result.rollback is not None:
        record.details["rollback"] = result.rollback
    if result.recovery_plan is not None:
        record.details["recovery_plan"] = result.recovery_plan
    try:
        catalog.save_migration_run(record)
    except BackupdError as exc:
        log.error("catalog_update_failed", error=exc.message)
    audit_migration(catalog, record)
    event = "migration_" + record.status
    level = {"applied": log.info, "noop": log.info, "rolled_back": log.info, "unverified": log.warning}
    level.get(record.status, log.error)(
        event, applied=result.applied, duration_seconds=round(result.duration_seconds, 3), error=error
    )


def audit_migration(
    catalog: AuditCatalog, record: MigrationRunRecord, repo: Repository | None = None
) -> None:
    """Record a finished ``migrate`` run in the audit trail (ops/audit.py): the migrations with
    their checksums, what was applied, the outcome (the run's status)."""
    details = {
        "migration_id": record.id,
        "cluster": record.cluster,
        "database": record.database,
        "command": list(record.command),
        "dry_run": record.dry_run,
        "migrations": record.details.get("migrations", []),
        "applied": record.details.get("applied", []),
        "backup_id": record.backup_id,
        "restore_point": record.restore_point,
    }
    if record.error:
        details["error"] = record.error
    objects = [str(m.get("name")) for m in details["migrations"] if isinstance(m, dict)]
    action = "migrate_dry_run" if record.dry_run else "migrate"
    record_event(catalog, action=action, outcome=record.status, objects=objects, details=details, repo=repo)


def run_steps(
    opts: GuardOptions,
    deps: GuardDeps,
    result: MigrateResult,
    info: ConnInfo,
    database_url: str,
    *,
    before_apply: Callable[[], None] = lambda: None,
    remember: Callable[[RoleSettings | None], None] = lambda saved: None,
) -> list[MigrationFile]:
    """Steps 1, 3 and 4 against ``info`` (production, or the dry run's restored copy), with
    ``before_apply`` (the safety net) between 1 and 3. Sets ``result.record.status`` to
    ``refused``, ``noop``, ``applied`` or ``failed``; returns the migrations this run started."""
    record = result.record
    checks = deps.preflight(info)
    result.checks.extend(checks)
    if not passed(checks):
        failed = [c.name for c in checks if c.status == "failed"]
        record.status, record.error = "refused", "pre-flight failed: " + ", ".join(failed)
        return []
    directory = read_migrations_dir(opts.migrations_dir)
    rows = read_prisma_migrations(info)
    applied_before = {r.migration_name for r in rows if r.applied}
    pending = [m for m in directory.migrations if m.name not in applied_before]
    if not pending:
        record.status = "noop"
        log.info("migration_nothing_pending", migrations=len(directory.migrations))
        return []
    record.details["migrations"] = [{"name": m.name, "checksum": m.checksum} for m in pending]
    record.schema_before = dump_schema(info, bin_dir=opts.pg_bin)
    before_apply()
    cmd = run_command(
        opts.command,
        database_url=database_url,
        conninfo=info,
        lock_timeout=opts.lock_timeout,
        statement_timeout=opts.statement_timeout,
        remember=remember,
        progress=lambda: deps.progress(info),
    )
    result.command = cmd
    rows = read_prisma_migrations(info)
    started_now = {r.migration_name for r in rows if r.migration_name in {m.name for m in pending}}
    result.applied = [m.name for m in pending if any(r.migration_name == m.name and r.applied for r in rows)]
    validation = validate(opts, deps, result, info, directory.migrations, pending, rows)
    result.checks.extend(validation)
    unrun = [c.name for c in not_run(validation)]
    if cmd.ok and passed(validation, strict=opts.strict_checks):
        record.status = "unverified" if unrun else "applied"
        if unrun:
            record.error = (
                f"applied and kept, but {len(unrun)} check(s) could not run and prove nothing: "
                f"{', '.join(unrun)}; see each check for why and what to do, then check the schema "
                "yourself (--strict-checks rolls back instead)"
            )
    else:
        record.status = "failed"
        failed = [c.name for c in validation if c.status == "failed"]
        if opts.strict_checks:
            failed += [f"{name} (could not run; --strict-checks)" for name in unrun]
        record.error = (
            f"the migration command exited with {cmd.returncode}"
            if not cmd.ok
            else "post-migration validation failed"
        ) + (": " + ", ".join(failed) if failed else "")
    return [m for m in pending if m.name in started_now]


def _guarded(
    catalog: MigrationCatalog, opts: GuardOptions, deps: GuardDeps, result: MigrateResult, info: ConnInfo
) -> None:
    record = result.record
    net = SafetyNet()
    counters: dict[str, int] | None = None

    def take_safety_net() -> None:
        nonlocal net, counters
        counters = write_counters(info)
        name = f"pre-migrate-{record.id}"
        net = deps.safety_net(name)
        record.restore_point, record.backup_id = net.restore_point, net.backup_id
        record.details["safety_net"] = {"restore_point": net.restore_point, "backup_id": net.backup_id,
                                        "lsn": net.lsn}  # fmt: skip
        catalog.save_migration_run(record)
        log.info(
            "migration_safety_net", restore_point=net.restore_point, backup_id=net.backup_id, lsn=net.lsn
        )

    def remember(saved: RoleSettings | None) -> None:
        if saved is None:
            record.details.pop("role_settings", None)
        else:
            record.details["role_settings"] = saved.to_json()
        catalog.save_migration_run(record)

    try:
        started = run_steps(
            opts, deps, result, info, opts.database_url, before_apply=take_safety_net, remember=remember
        )
    except BackupdError as exc:
        if result.command is None and "role_settings" not in record.details:
            # Nothing ran yet (pre-flight, safety net or the schema dump failed): a refusal.
            record.status, record.error = "refused", exc.message
            result.checks.append(CheckResult("safety_net", "failed", exc.message))
            return
        raise
    if record.status != "failed":
        return
    directory = {m.name: m for m in read_migrations_dir(opts.migrations_dir).migrations}
    rows = read_prisma_migrations(info)
    done = [
        MigrationDone(
            m.name,
            _read(directory[m.name].down_sql_path),
            any(r.migration_name == m.name and r.applied for r in rows),
        )
        for m in started
    ]
    if opts.on_failure == "rollback" and done:
        result.rollback = roll_back(
            info,
            done,
            schema_before=record.schema_before or "",
            lock_timeout_ms=int(pg_duration(opts.lock_timeout)[:-2]),
            dump=lambda conninfo: dump_schema(conninfo, bin_dir=opts.pg_bin),
        )
        if result.rollback["status"] == "rolled_back":
            record.status = "rolled_back"
            result.applied = []
            return
    elif not done:
        result.rollback = {"status": "not_needed", "detail": "no migration of this run started", "ran": []}
        return
    else:
        result.rollback = {"status": "skipped", "detail": "--on-failure stop", "ran": []}
    result.recovery_plan = recovery_plan(
        info,
        mode=opts.mode,
        restore_point=net.restore_point,
        backup_id=net.backup_id,
        lsn=net.lsn,
        safety_net_at=net.at,
        counters_before=counters,
        config_arg=opts.config_arg,
    )


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8")
    return None
