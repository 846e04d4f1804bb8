"""The ``migrate`` command group: ``migrate run|check|rollback|list|batch``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from contentflow_backupd.cli.grammar import JSON_HELP, commands_of
from contentflow_backupd.cli.migrate_batch import register_batch
from contentflow_backupd.cli.migrate_run import (
    add_history_parser,
    add_rollback_parser,
    add_run_parser,
)
from contentflow_backupd.cli.output import print_json
from contentflow_backupd.errors import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from contentflow_backupd.wiring import App

log = structlog.get_logger("contentflow_backupd.cli")


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``migrate`` group to the top-level subparsers ``sub``; return its parser.
    ``migrate [OPTIONS] -- COMMAND`` (the spelling of earlier versions) is ``migrate run``, the
    group's default subcommand; ``migrate history`` is a hidden alias of ``migrate list``."""
    mp: argparse.ArgumentParser = sub.add_parser(
        "migrate",
        help="guard Prisma schema migrations (`migrate check`: is deploying safe?)",
        description="Guard Prisma schema migrations: `migrate run [OPTIONS] -- COMMAND ...` runs "
        "COMMAND (e.g. npx prisma migrate deploy) after pre-flight checks and a safety net, validates "
        "the result and rolls back on failure (`migrate [OPTIONS] -- COMMAND ...` is the same); "
        "`migrate check`, `migrate rollback`, `migrate list`, `migrate batch`.",
    )
    msub = commands_of(
        mp, "migrate_command", "run (the default), check, rollback, list, batch", default="run"
    )
    msub.hidden["history"] = ("list",)
    add_run_parser(msub)
    sp = msub.add_parser(
        "check",
        help="report applied, pending, modified, missing, failed and risky migrations; exit 1 unless safe",
        description="Compare the Prisma migrations directory with _prisma_migrations and analyse the "
        "pending SQL, changing nothing. Exit 0 when deploying would be safe, 1 otherwise.",
    )
    sp.add_argument(
        "--migrations-dir", type=Path, required=True, metavar="DIR", help="e.g. prisma/migrations"
    )
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    sp.set_defaults(func=cmd_migrate_check)
    add_rollback_parser(msub)
    add_history_parser(msub)
    register_batch(msub)
    return mp


def cmd_migrate_check(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.migrate.check import run_check

    report = run_check(
        app.conninfo,
        args.migrations_dir,
        large_table_bytes=app.migrate_limits.large_table_bytes,
    )
    log.info(
        "migrate_checked",
        safe=report.safe,
        pending=len(report.pending),
        risky=len(report.risky),
        problems=len(report.problems),
    )
    if args.json:
        print_json(report.to_json())
    else:
        print(report.render())
    return EXIT_OK if report.safe else EXIT_FAILED
