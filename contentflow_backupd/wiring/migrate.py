"""The application -> the migration guard's options and dependencies (``migrate``): its limits
(``BACKUPD_MIGRATE__*``), the pre-flight probes, the safety net (a restore point in physical
mode, an incremental backup in logical mode) and the notification of the outcome."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.catalog.guard_records import MigrationRunRecord
from contentflow_backupd.errors import BackupdError, ConfigError
from contentflow_backupd.migrate.check import CheckReport
from contentflow_backupd.migrate.guard import GuardDeps, GuardOptions, SafetyNet
from contentflow_backupd.migrate.preflight import (
    CheckResult,
    PreflightInputs,
    Probe,
    backup_lock_probe,
    run_preflight,
)
from contentflow_backupd.model import utcnow
from contentflow_backupd.ops.drill.checks import user_checks
from contentflow_backupd.ops.drill.run import DrillOptions
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.settings import Settings
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.drivers import PgDatabaseFacts
from contentflow_backupd.timespec import parse_duration

if TYPE_CHECKING:
    from contentflow_backupd.wiring.app import App

log = structlog.get_logger("contentflow_backupd.migrate")


@dataclass(frozen=True)
class MigrateLimits:
    """``BACKUPD_MIGRATE__*``, durations in seconds."""

    database_url: str | None
    lock_timeout: float
    statement_timeout: float | None
    progress_interval: float
    large_table_bytes: int
    min_free_bytes: int
    max_transaction_age: float
    checks: Path | None


def migrate_limits(settings: Settings) -> MigrateLimits:
    m = settings.migrate
    return MigrateLimits(
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        lock_timeout=parse_duration(m.lock_timeout),
        statement_timeout=None if m.statement_timeout is None else parse_duration(m.statement_timeout),
        progress_interval=parse_duration(m.progress_interval),
        large_table_bytes=m.large_table_bytes,
        min_free_bytes=m.min_free_bytes,
        max_transaction_age=parse_duration(m.max_transaction_age),
        checks=m.checks,
    )


def guard_options(
    app: App, args: argparse.Namespace, command: Sequence[str], repository_id: str | None = None
) -> GuardOptions:
    m = app.migrate_limits
    if m.database_url is None:
        raise ConfigError("BACKUPD_DATABASE_URL is not set: the migration needs the database")
    return GuardOptions(
        cluster=app.cluster,
        migrations_dir=args.migrations_dir,
        command=list(command),
        database_url=m.database_url,
        conninfo=app.conninfo,
        mode=app.mode,
        lock_dir=app.lock_dir(),
        allow_risky=args.allow_risky,
        on_failure=args.on_failure,
        lock_timeout=m.lock_timeout,
        statement_timeout=m.statement_timeout,
        checks_file=m.checks,
        strict_checks=getattr(args, "strict_checks", False),
        config_arg=(f" --config {app.config_file}" if app.config_file else "")
        + (f" --cluster {app.cluster}" if app.named_cluster else ""),
        dry_run=args.dry_run,
        pg_bin=app.pg_bin,
        repository_id=repository_id,
    )


def dry_run_drill(app: App) -> DrillOptions:
    return app.drill_options(target_time=None)


def guard_deps(app: App, repo: Repository, catalog: Catalog, opts: GuardOptions) -> GuardDeps:
    m = app.migrate_limits
    state = app.state_dir()

    def preflight(info: ConnInfo) -> list[CheckResult]:
        def storage() -> tuple[bool, str]:
            repo.storage.stat("repo.json")
            return True, f"the repository at {repo.storage.url} answers"

        def migrate_check() -> tuple[bool, str]:
            from contentflow_backupd.migrate.check import run_check

            report = run_check(info, opts.migrations_dir, large_table_bytes=m.large_table_bytes)
            if report.safe_with(allow_risky=opts.allow_risky):
                extra = f", {len(report.risky)} risky statement(s) allowed" if report.risky else ""
                return True, f"{len(report.pending)} pending migration(s), directory sound{extra}"
            return False, _check_failure(report, opts.allow_risky)

        wal = _wal_probe(app, repo) if app.mode == "physical" else None
        return run_preflight(
            PreflightInputs(
                conninfo=info,
                state_dir=state,
                min_free_bytes=m.min_free_bytes,
                max_transaction_age_seconds=m.max_transaction_age,
                storage=storage,
                no_backup_running=backup_lock_probe(opts.lock_dir, app.cluster),
                migrate_check=migrate_check,
                wal_archiving=wal,
            )
        )

    def progress(info: ConnInfo) -> object:
        from contentflow_backupd.migrate.progress import ProgressLogger

        bound = log.bind(**structlog.contextvars.get_contextvars())  # its thread has none
        return ProgressLogger(info, m.progress_interval, log=bound)

    def safety_net(name: str) -> SafetyNet:
        if app.mode == "physical":
            return _restore_point(app, repo, catalog, name)
        return _backup(app, repo, catalog, name)

    def expected(before: str, scripts: Sequence[tuple[str, str]]) -> str:
        from contentflow_backupd.migrate.expect import expected_schema
        from contentflow_backupd.source.schema import server_major

        return expected_schema(
            before,
            scripts,
            major=server_major(opts.conninfo),
            state_dir=state,
            pg_bin=app.drill_pg_bin,
            client_bin=app.pg_bin,
            scratch_dir=app.drill_scratch_dir,
        )

    def finished(record: MigrationRunRecord) -> None:
        _notify(app, record)

    return GuardDeps(
        preflight=preflight,
        progress=progress,
        safety_net=safety_net,
        expected_schema=expected,
        # the drills' checks file runner, on BACKUPD_MIGRATE__CHECKS
        user_checks=lambda info, path: user_checks(PgDatabaseFacts(), info, path),
        finished=finished,
    )


def _check_failure(report: CheckReport, allow_risky: bool) -> str:
    data = report.to_json()
    parts = []
    for key in ("problems", "modified", "missing", "failed"):
        if data[key]:
            parts.append(f"{key}: " + "; ".join(str(x) for x in data[key]))
    if data["risky"] and not allow_risky:
        parts.append(
            "risky: "
            + "; ".join(f"{r['migration']}: {r['kind']} on {r['table']}" for r in data["risky"])
            + " (rerun with --allow-risky once reviewed)"
        )
    return "migrate check found " + " | ".join(parts) + "; see `contentflow-backupd migrate check`"


def _wal_probe(app: App, repo: Repository) -> Probe:
    def probe() -> tuple[bool, str]:
        from contentflow_backupd.ops.health.inputs import wal_health_state
        from contentflow_backupd.repository.walarchive import WalArchive

        state = wal_health_state(WalArchive(repo, app.cluster), app.archiver_status())
        if state.archiver_failing:
            return False, "the archiver's newest attempt failed (pg_stat_archiver): WAL is not being archived"
        if state.last_archived_at is None:
            return False, "nothing has been archived yet: the restore point could not be recovered"
        age = (utcnow() - state.last_archived_at).total_seconds()
        return True, f"the newest WAL file was archived {age:.0f}s ago" + (
            f" ({state.detail})" if state.detail else ""
        )

    return probe


def _backup(app: App, repo: Repository, catalog: Catalog, name: str) -> SafetyNet:
    from contentflow_backupd.ops.backup.run import run_backup

    at = utcnow()
    logical = app.logical_source()
    try:
        record = run_backup(
            repo,
            catalog,
            app.backup_options("incremental", mode="logical"),
            logical=logical,
        )
    finally:
        logical.close()
    return SafetyNet(restore_point=name, backup_id=record.id, at=at)


def _restore_point(app: App, repo: Repository, catalog: Catalog, name: str) -> SafetyNet:
    from contentflow_backupd.ops.wal.restore_points import create_restore_point
    from contentflow_backupd.repository.walarchive import WalArchive

    made = create_restore_point(
        catalog,
        WalArchive(repo, app.cluster),
        app.cluster,
        name,
        describe=app.physical_source().describe,
        make=app.restore_point_maker(),
        archive_timeout=app.wal_archive_timeout,
    )
    if not made.archived:
        raise BackupdError(
            f"restore point {name} was created at {made.point.lsn}, but its WAL segment {made.segment} "
            f"was not archived within {app.wal_archive_timeout}s: the safety net is not restorable",
            hint="check archive_command (wal-push) or wal-stream and pg_stat_archiver, then run again",
        )
    return SafetyNet(restore_point=name, lsn=made.point.lsn, at=made.point.created_at)


def _notify(app: App, record: MigrationRunRecord) -> None:
    try:
        notifier = app.notifier()
    except BackupdError as exc:
        log.warning("notifier_unavailable", error=exc.message)
        return
    names = [m["name"] for m in record.details.get("migrations", [])]
    kind = "dry run " if record.dry_run else ""
    text = f"{kind}migration {record.id} on {record.database}: {record.status}" + (
        f" ({', '.join(names)})" if names else ""
    )
    if record.error:
        text += f": {record.error}"
    event = {
        "applied": "migration_succeeded",
        "noop": "migration_succeeded",
        "unverified": "migration_unverified",
    }
    event_name = event.get(record.status, "migration_failed")
    try:
        notifier.notify(
            event_name, text, migration_id=record.id, status=record.status, dry_run=record.dry_run
        )
    finally:
        notifier.close()
