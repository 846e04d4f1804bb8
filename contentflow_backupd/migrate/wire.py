"""Settings -> the migration guard's options and dependencies (the ``wiring`` of ``migrate``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import structlog

from contentflow_backupd import wiring
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

log = structlog.get_logger("contentflow_backupd.migrate")


def guard_options(
    settings: Settings, args: argparse.Namespace, command: Sequence[str], repository_id: str | None = None
) -> GuardOptions:
    if settings.database_url is None:
        raise ConfigError("BACKUPD_DATABASE_URL is not set: the migration needs the database")
    m = settings.migrate
    return GuardOptions(
        cluster=settings.cluster,
        migrations_dir=args.migrations_dir,
        command=list(command),
        database_url=settings.database_url.get_secret_value(),
        conninfo=wiring.source_conninfo(settings),
        mode=settings.mode,
        lock_dir=wiring.lock_dir(settings),
        allow_risky=args.allow_risky,
        on_failure=args.on_failure,
        lock_timeout=parse_duration(m.lock_timeout),
        statement_timeout=None if m.statement_timeout is None else parse_duration(m.statement_timeout),
        checks_file=m.checks,
        strict_checks=getattr(args, "strict_checks", False),
        config_arg=f" --config {settings.config}" if settings.config else "",
        dry_run=args.dry_run,
        pg_bin=settings.pg_bin,
        repository_id=repository_id,
    )


def dry_run_drill(settings: Settings) -> DrillOptions:
    return wiring.drill_options(settings, target_time=None)


def guard_deps(settings: Settings, repo: Repository, catalog: Catalog, opts: GuardOptions) -> GuardDeps:
    m = settings.migrate
    state = wiring.state_dir(settings)

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

        wal = _wal_probe(settings, repo) if settings.mode == "physical" else None
        return run_preflight(
            PreflightInputs(
                conninfo=info,
                state_dir=state,
                min_free_bytes=m.min_free_bytes,
                max_transaction_age_seconds=parse_duration(m.max_transaction_age),
                storage=storage,
                no_backup_running=backup_lock_probe(opts.lock_dir, settings.cluster),
                migrate_check=migrate_check,
                wal_archiving=wal,
            )
        )

    def progress(info: ConnInfo) -> object:
        from contentflow_backupd.migrate.progress import ProgressLogger

        bound = log.bind(**structlog.contextvars.get_contextvars())  # its thread has none
        return ProgressLogger(info, parse_duration(m.progress_interval), log=bound)

    def safety_net(name: str) -> SafetyNet:
        if settings.mode == "physical":
            return _restore_point(settings, repo, catalog, name)
        return _backup(settings, repo, catalog, name)

    def expected(before: str, scripts: Sequence[tuple[str, str]]) -> str:
        from contentflow_backupd.migrate.expect import expected_schema
        from contentflow_backupd.source.schema import server_major

        return expected_schema(
            before,
            scripts,
            major=server_major(opts.conninfo),
            state_dir=state,
            pg_bin=settings.drill.pg_bin,
            client_bin=settings.pg_bin,
            scratch_dir=settings.drill.scratch_dir,
        )

    def finished(record: MigrationRunRecord) -> None:
        _notify(settings, record)

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


def _wal_probe(settings: Settings, repo: Repository) -> Probe:
    def probe() -> tuple[bool, str]:
        state = wiring.wal_health_state(settings, repo)
        if state.archiver_failing:
            return False, "the archiver's newest attempt failed (pg_stat_archiver): WAL is not being archived"
        if state.last_archived_at is None:
            return False, "nothing has been archived yet: the restore point could not be recovered"
        age = (utcnow() - state.last_archived_at).total_seconds()
        return True, f"the newest WAL file was archived {age:.0f}s ago" + (
            f" ({state.detail})" if state.detail else ""
        )

    return probe


def _backup(settings: Settings, repo: Repository, catalog: Catalog, name: str) -> SafetyNet:
    from contentflow_backupd.ops.backup.run import run_backup

    at = utcnow()
    logical = wiring.logical_source(settings)
    try:
        record = run_backup(
            repo,
            catalog,
            wiring.backup_options(settings, "incremental", mode="logical"),
            logical=logical,
        )
    finally:
        logical.close()
    return SafetyNet(restore_point=name, backup_id=record.id, at=at)


def _restore_point(settings: Settings, repo: Repository, catalog: Catalog, name: str) -> SafetyNet:
    from contentflow_backupd.ops.wal.restore_points import create_restore_point
    from contentflow_backupd.repository.walarchive import WalArchive

    made = create_restore_point(
        catalog,
        WalArchive(repo, settings.cluster),
        settings.cluster,
        name,
        describe=wiring.physical_source(settings).describe,
        make=wiring.restore_point_maker(settings),
        archive_timeout=settings.wal.archive_timeout,
    )
    if not made.archived:
        raise BackupdError(
            f"restore point {name} was created at {made.point.lsn}, but its WAL segment {made.segment} "
            f"was not archived within {settings.wal.archive_timeout}s: the safety net is not restorable",
            hint="check archive_command (wal-push) or wal-stream and pg_stat_archiver, then run again",
        )
    return SafetyNet(restore_point=name, lsn=made.point.lsn, at=made.point.created_at)


def _notify(settings: Settings, record: MigrationRunRecord) -> None:
    try:
        notifier = wiring.notifier(settings)
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
