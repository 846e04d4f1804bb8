"""``migrate run [--dry-run] ... -- COMMAND``, ``migrate rollback`` and ``migrate list``: the
application's parts into the guard (``migrate/guard.py``, through ``wiring.migrate``) and
printing its result."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from contentflow_backupd.cli.grammar import JSON_HELP
from contentflow_backupd.cli.output import print_json
from contentflow_backupd.errors import EXIT_FAILED, EXIT_OK, UsageError

if TYPE_CHECKING:
    from contentflow_backupd.wiring import App

log = structlog.get_logger("contentflow_backupd.cli")


def add_run_parser(msub: Any) -> None:
    """``migrate run [OPTIONS] -- COMMAND ...``: argparse takes everything after ``--`` as the
    migration command (options of COMMAND included)."""
    mp = msub.add_parser(
        "run",
        help="guard one migration: checks, a safety net, COMMAND, validation, rollback on failure",
        description="Run COMMAND (e.g. npx prisma migrate deploy), given after `--`, under the guard: "
        "pre-flight checks (exit 4 when refused), a safety net (backup or restore point), COMMAND "
        "with lock_timeout in force, validation, rollback with down.sql or a recovery plan. "
        "`migrate [OPTIONS] -- COMMAND ...` is the same.",
    )
    mp.set_defaults(func=cmd_migrate_run)
    mp.add_argument("--migrations-dir", type=Path, metavar="DIR", help="e.g. prisma/migrations")
    mp.add_argument(
        "--dry-run",
        action="store_true",
        help="restore the latest backup into a scratch instance and rehearse the migration there",
    )
    mp.add_argument("--allow-risky", action="store_true", help="run even with risky statements pending")
    mp.add_argument(
        "--on-failure",
        choices=["rollback", "stop"],
        default="rollback",
        help="rollback (default): undo with down.sql, or print the recovery plan; stop: only the plan",
    )
    mp.add_argument(
        "--strict-checks",
        action="store_true",
        help="a post-migration check that could not run (scratch server, missing tool, timeout) fails "
        "the migration and rolls it back; default: keep it, status unverified, exit 3",
    )
    mp.add_argument("--json", action="store_true", help=JSON_HELP)
    mp.add_argument(
        "migrate_command_argv",
        nargs="*",
        metavar="-- COMMAND",
        help="the migration command and its arguments, after `--`",
    )


def add_rollback_parser(msub: Any) -> None:
    sp = msub.add_parser(
        "rollback",
        help="put the live database back to a migration's safety net (logical backups)",
        description="Restore the backup a migrate run took (restore point pre-migrate-<id>) over the "
        "live database, in one transaction. Without --confirm, print what would happen.",
    )
    sp.add_argument(
        "--to-restore-point",
        required=True,
        metavar="NAME",
        help="the safety net's restore point, pre-migrate-<id> (see migrate list)",
    )
    sp.add_argument("--confirm", action="store_true", help="do it (default: print the plan)")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    sp.set_defaults(func=cmd_migrate_rollback)


def add_history_parser(msub: Any) -> None:
    sp = msub.add_parser(
        "list",
        help="the recorded migrate runs (the audit record): who, what, when, outcome",
        description="List the recorded migrate runs of the cluster, oldest first: who ran them, the "
        "migrations with their checksums, the safety net and the outcome. (`migrate history`, the "
        "spelling of earlier versions, is the same.)",
    )
    sp.add_argument("--limit", type=int, default=50, help="the newest N runs (default 50)")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    sp.set_defaults(func=cmd_migrate_history)


def cmd_migrate_history(args: argparse.Namespace, app: App) -> int:

    with app.catalog(read_only=True) as catalog:
        runs = catalog.list_migration_runs(app.scope(catalog, read_only=True), limit=args.limit)
    if args.json:
        print_json([r.to_json() for r in runs])
        return EXIT_OK
    if not runs:
        print("no migrate runs recorded")
    for r in runs:
        names = ", ".join(m["name"] for m in r.details.get("migrations", [])) or "-"
        kind = " (dry run)" if r.dry_run else ""
        print(f"{r.started_at:%Y-%m-%d %H:%M:%S} {r.id} {r.status}{kind} by {r.actor}: {names}")
        if r.error:
            print(f"    {r.error}")
    return EXIT_OK


def cmd_migrate_run(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.wiring import migrate as wire

    command = list(getattr(args, "migrate_command_argv", None) or [])
    if not command:
        raise UsageError(
            "migrate: no migration command after `--`",
            hint="e.g. `contentflow-backupd migrate run --migrations-dir prisma/migrations -- npx "
            "prisma migrate deploy`, or `migrate check --migrations-dir DIR`",
        )
    if args.migrations_dir is None:
        raise UsageError(
            "migrate: --migrations-dir is required", hint="e.g. --migrations-dir prisma/migrations"
        )
    if not args.migrations_dir.is_dir():
        raise UsageError(f"--migrations-dir {args.migrations_dir}: not a directory")
    repo = app.repository()
    with app.catalog() as catalog:
        opts = wire.guard_options(app, args, command, repo.id)
        deps = wire.guard_deps(app, repo, catalog, opts)
        if args.dry_run:
            from contentflow_backupd.migrate.dryrun import run_dry

            result = run_dry(repo, catalog, opts, deps, wire.dry_run_drill(app))
        else:
            from contentflow_backupd.migrate.guard import run_migrate

            result = run_migrate(catalog, opts, deps)
    if args.json:
        print_json(result.to_json())
    else:
        print(render(result.to_json()))
    return result.exit_code


def render(out: dict[str, Any]) -> str:
    from contentflow_backupd.migrate.rollback import render_plan

    head = "dry run: " if out["dry_run"] else ""
    lines = [f"{head}migration {out['id']}: {out['status']} in {out['duration_seconds']:.1f}s"]
    for c in out["checks"]:
        mark = {"passed": "ok  ", "failed": "FAIL", "not_run": "NOT RUN", "skipped": "skip"}.get(
            c["status"], c["status"]
        )
        lines.append(f"  [{mark}] {c['name']}: {c['detail']}")
    if out["restore_point"] or out["backup_id"]:
        lines.append(f"  safety net: restore point {out['restore_point']}, backup {out['backup_id']}")
    if out["applied"]:
        lines.append("  applied: " + ", ".join(out["applied"]))
    if out["rollback"]:
        lines.append(f"  rollback: {out['rollback']['status']}: {out['rollback'].get('detail', '')}")
    if out["recovery_plan"]:
        lines.append(render_plan(out["recovery_plan"]))
    if out["error"]:
        lines.append(f"  error: {out['error']}")
    return "\n".join(lines)


def cmd_migrate_rollback(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.migrate.live_rollback import rollback_live

    repo = app.repository()
    with app.catalog() as catalog:
        out = rollback_live(
            repo,
            catalog,
            cluster=app.cluster,
            name=args.to_restore_point,
            info=app.conninfo,
            confirm=args.confirm,
            state_dir=app.state_dir(),
            lock_dir=app.lock_dir(),
            bin_dir=app.pg_bin,
            concurrency=app.concurrency,
        )
    if args.json:
        print_json(out)
    elif not args.confirm:
        print(f"would {out['what']}")
        print(f"  backup {out['backup_id']} (taken {out['taken_at']}, migration {out['migration_id']})")
        print(f"  run again with --confirm to do it: contentflow-backupd migrate rollback "
              f"--to-restore-point {out['restore_point']} --confirm")  # fmt: skip
    else:
        print(
            f"restore point {out['restore_point']}: {out['status']} in {out['duration_seconds']:.1f}s "
            f"(backup {out['backup_id']}; schema equals the one before the migration: "
            f"{out['schema_equals_before']})"
        )
    if not args.confirm:
        return EXIT_OK
    return EXIT_OK if out["schema_equals_before"] else EXIT_FAILED
