"""argv -> the namespace a command gets: every command and its options (``build_parser``), the
old spellings (``TOP_LEVEL_ALIASES``, docs/cli.md) and ``parse_args``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from contentflow_backupd import __version__
from contentflow_backupd.cli.commands import (
    cmd_audit,
    cmd_audit_verify,
    cmd_backup,
    cmd_catalog_rebuild,
    cmd_catalog_upgrade,
    cmd_check,
    cmd_config_show,
    cmd_expire,
    cmd_init,
    cmd_keys,
    cmd_list,
    cmd_list_restore_points,
    cmd_recover,
    cmd_restore,
    cmd_restore_point,
    cmd_restore_test,
    cmd_run,
    cmd_runs,
    cmd_show,
    cmd_status,
    cmd_verify,
    cmd_wal_fetch,
    cmd_wal_prefetch,
    cmd_wal_push,
    cmd_wal_stream,
    cmd_wal_verify,
)
from contentflow_backupd.cli.grammar import (
    JSON_LOGS_HELP,
    TOP_LEVEL_EPILOG,
    Commands,
    Parser,
    Sub,
    add_all_clusters,
    add_backup_choice,
    add_progress,
    add_recovery_target,
    command,
    commands_of,
    group,
)
from contentflow_backupd.model import JOB_NAMES

# Old spelling -> new path, at the top level (docs/cli.md has the table).
TOP_LEVEL_ALIASES: dict[str, tuple[str, ...]] = {
    "list": ("backup", "list"),
    "show": ("backup", "show"),
    "list-restore-points": ("restore-point", "list"),
    "restore-test": ("drill",),
    "wal-push": ("wal", "push"),
    "wal-fetch": ("wal", "fetch"),
    "wal-stream": ("wal", "stream"),
}


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: it imports the settings, and main() starts with the
    # collector off (see main).
    from contentflow_backupd.cli.keys import register as register_keys
    from contentflow_backupd.cli.migrate import register as register_migrate

    p = Parser(
        prog="contentflow-backupd",
        description="Encrypted, deduplicated, verified PostgreSQL backups to S3 or a local directory.",
        epilog=TOP_LEVEL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"contentflow-backupd {__version__}")
    p.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML settings file (default: $BACKUPD_CONFIG, else none)"
    )
    p.add_argument(
        "--cluster",
        metavar="NAME",
        help="the configured cluster to work on (default: $BACKUPD_CLUSTER, else the only one); "
        "also accepted after the command",
    )
    sub = p.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do; `COMMAND --help` for its options",
        action=Commands,
    )
    assert isinstance(sub, Commands)
    sub.hidden.update(TOP_LEVEL_ALIASES)

    command(sub, "init", cmd_init, "create the repository (repo.json and the wrapped key)")
    _backup_group(sub)
    _restore_commands(sub)
    _wal_group(sub)
    command(
        sub,
        "expire",
        cmd_expire,
        "plan retention (BACKUPD_RETENTION__*) and, with --confirm, apply it",
    ).add_argument("--confirm", action="store_true", help="delete what the plan says (default: print it)")
    command(
        sub,
        "run",
        cmd_run,
        "run the daemon: scheduled backups, WAL, retention, metrics and health",
        json=JSON_LOGS_HELP,
    )
    add_all_clusters(
        command(
            sub,
            "status",
            cmd_status,
            "health report: backup ages, last runs, WAL, dependencies; exit 1 if unhealthy",
        )
    )
    command(
        sub, "check", cmd_check, "what the database role and storage may do; exit 1 naming what is missing"
    )
    runs = commands_of(
        group(sub, "runs", "recorded runs of the jobs (runs list)"),
        "runs_command",
        "what to do",
        default="list",
    )
    sp = command(runs, "list", cmd_runs, "list recorded runs of jobs (scheduled and manual), oldest first")
    sp.add_argument(
        "--limit", type=int, default=100, help="the newest N runs (of --job, if given; default 100)"
    )
    sp.add_argument("--job", choices=list(JOB_NAMES), help="only this job")
    add_all_clusters(sp)
    _catalog_group(sub)
    _audit_group(sub)
    cfg = commands_of(group(sub, "config", "settings (config show)"), "config_command", "what to do")
    command(
        cfg,
        "show",
        cmd_config_show,
        "print the resolved settings and their sources, secrets masked",
        "Print every setting with its value and where it came from (environment, config file, "
        "credential file or default). Secrets are masked.",
    )
    register_keys(sub, dict(cmd_keys))
    register_migrate(sub)
    return p


def _backup_group(sub: Sub) -> None:
    """``backup [create] | list | show`` and ``verify``."""
    backup = commands_of(
        group(
            sub,
            "backup",
            "take a backup (backup [create] --kind K), list them, show one",
            "Backups: `backup create --kind full|incremental` takes one (`backup --kind K` is the "
            "same), `backup list` lists them, `backup show BACKUP` shows one.",
        ),
        "backup_command",
        "what to do (default: create)",
        default="create",
    )
    sp = add_progress(command(backup, "create", cmd_backup, "take a backup"))
    sp.set_defaults(operation="backup")  # the name of its progress line and events
    sp.set_defaults(exit_at_once=True)  # no interpreter teardown after it (cli.main)
    sp.add_argument(
        "--kind",
        choices=["full", "incremental"],
        required=True,
        help="full: every byte; incremental: only what changed since the previous backup of the cluster",
    )
    sp.add_argument(
        "--mode",
        choices=["logical", "physical"],
        help="logical (pg_dump) or physical (pg_basebackup + WAL); default: BACKUPD_MODE",
    )
    sp = command(backup, "list", cmd_list, "list backups, oldest first")
    sp.add_argument(
        "--attempts",
        action="store_true",
        help="also the attempts that did not commit (failed, interrupted, running)",
    )
    sp.add_argument("--all", dest="attempts", action="store_true", help=argparse.SUPPRESS)
    add_all_clusters(sp)
    sp = command(backup, "show", cmd_show, "show one backup and its manifest summary")
    sp.add_argument("backup_id", metavar="BACKUP", help="a backup id (see backup list) or 'latest'")
    sp = add_progress(
        command(sub, "verify", cmd_verify, "read back and authenticate backups (all of them by default)")
    )
    sp.add_argument("backup_ids", nargs="*", metavar="BACKUP", help="backup ids or 'latest'")
    sp.add_argument("--all", action="store_true", help="verify every backup (the default without ids)")
    sp.add_argument("--quick", action="store_true", help="only check that every object exists with its size")
    sp.add_argument(
        "--since-last",
        action="store_true",
        help="continuous mode (the daemon's verify job): backups added since the last run, plus a "
        "rotating share of all objects (BACKUPD_VERIFY__FULL_SWEEP); exit 1 while a corrupt object is open",
    )


def _restore_commands(sub: Sub) -> None:
    """``restore``, ``recover``, ``drill`` and ``restore-point create|list``."""
    sp = add_progress(
        command(sub, "restore", cmd_restore, "restore a backup into a database, a file or a data directory")
    )
    sp.add_argument(
        "backup", metavar="BACKUP", help="the backup to restore: an id (see backup list) or 'latest'"
    )
    sp.add_argument("--to-database", metavar="URL", help="libpq URI of the database to restore into")
    sp.add_argument("--to-file", metavar="PATH", help="write the pg_dump archive to PATH instead")
    sp.add_argument("--create", action="store_true", help="create the target database if it does not exist")
    sp.add_argument("--clean", action="store_true", help="drop and replace objects in a non-empty database")
    sp.add_argument(
        "--jobs", type=int, default=1, help="parallel pg_restore jobs (>1 is not one transaction)"
    )
    sp.add_argument("--no-owner", action="store_true", help="do not restore ownership and privileges")
    sp.add_argument("--pgdata", metavar="DIR", help="restore a physical backup into a new data directory")
    add_recovery_target(
        sp, action_default="pause", keep_archiving="keep archive_mode of the backup (default: set it off)"
    )
    sp = add_progress(
        command(
            sub,
            "recover",
            cmd_recover,
            "disaster recovery: restore the newest good backup, replay WAL, check",
        )
    )
    add_backup_choice(sp, "this backup only, no fallback (default: the newest good one)")
    sp.add_argument("--pgdata", metavar="DIR", help="physical: a new data directory (absent or empty)")
    sp.add_argument("--to-database", metavar="URL", help="logical: the database to create (or an empty one)")
    add_recovery_target(
        sp, action_default="promote", keep_archiving="the recovered server archives into this repository"
    )
    sp.add_argument(
        "--start", action="store_true", help="start the server, wait for recovery, then run the drill checks"
    )
    sp.add_argument(
        "--check-url", metavar="URL", help="with --start: the recovered server (default BACKUPD_DATABASE_URL)"
    )
    sp = add_progress(
        command(
            sub, "drill", cmd_restore_test, "restore drill: restore into a scratch instance, check, time it"
        )
    )
    add_backup_choice(sp, "the backup to drill: an id or 'latest' (default)")
    sp.add_argument(
        "--target-time",
        default="random",
        metavar="TIME|random|none",
        help="physical: a time (ISO 8601), a random point of the recovery window (default) or none "
        "(the end of the WAL archive)",
    )
    points = commands_of(
        group(
            sub,
            "restore-point",
            "named restore points: create one, list them",
            "Named restore points (recover --target-name NAME): `restore-point create NAME` creates "
            "one on the server and records it (`restore-point NAME` is the same), `restore-point "
            "list` lists them.",
        ),
        "restore_point_command",
        "what to do (default: create)",
        default="create",
    )
    sp = command(
        points, "create", cmd_restore_point, "create a named restore point on the server and record it"
    )
    sp.add_argument("name", metavar="NAME", help="the restore point's name (recover --target-name NAME)")
    command(points, "list", cmd_list_restore_points, "list the recorded restore points, oldest first")


def _wal_group(sub: Sub) -> None:
    """``wal push|fetch|stream|verify``."""
    wal = commands_of(
        group(
            sub,
            "wal",
            "the WAL archive: push, fetch, stream, verify",
            "The WAL archive: `wal push` (archive_command), `wal fetch` (restore_command), `wal "
            "stream` (pg_receivewal on a slot), `wal verify` (gaps).",
        ),
        "wal_command",
        "what to do with the WAL archive",
    )
    sp = command(wal, "push", cmd_wal_push, "archive one WAL file (archive_command = '... wal push %%p')")
    sp.add_argument("path", metavar="PATH", help="the WAL file PostgreSQL archives (%%p)")
    sp = command(
        wal,
        "fetch",
        cmd_wal_fetch,
        "fetch one WAL file (restore_command = '... wal fetch %%f %%p')",
        json="print the result as JSON on stdout: file, status (fetched or not_archived), bytes",
    )
    sp.add_argument("name", metavar="NAME", help="the WAL file PostgreSQL asks for (%%f)")
    sp.add_argument("dest", metavar="DEST", help="where PostgreSQL wants it written (%%p)")
    command(
        wal,
        "prefetch",
        cmd_wal_prefetch,
        "the prefetch helper `wal fetch` starts: fetch the next segments of a recovery ahead",
        json=None,
    )
    command(
        wal,
        "stream",
        cmd_wal_stream,
        "stream WAL with pg_receivewal on a slot and archive each segment",
        json=JSON_LOGS_HELP,
    )
    command(
        wal,
        "verify",
        cmd_wal_verify,
        "check the WAL archive for gaps, per timeline",
        "List the archived WAL segments of each timeline and every gap between them. Exit 0 "
        "without gaps, 1 naming each gap (a point-in-time recovery cannot cross one).",
    )


def _catalog_group(sub: Sub) -> None:
    cat = commands_of(
        group(sub, "catalog", "catalog maintenance (catalog rebuild, catalog upgrade)"),
        "catalog_command",
        "the maintenance task",
    )
    add_progress(
        command(
            cat,
            "rebuild",
            cmd_catalog_rebuild,
            "rebuild the catalog from the repository's manifests",
            "Read every backup manifest of the repository and record the backups in the catalog "
            "(BACKUPD_CATALOG_URL): after losing the catalog, or to point a new one at a repository. "
            "The repository is the source of truth; nothing in it changes.",
        )
    )
    command(
        cat,
        "upgrade",
        cmd_catalog_upgrade,
        "bring the catalog's schema to this version (read-only commands never do)",
        "Apply the catalog's pending schema revisions and attribute its rows from before "
        "repositories were recorded. Every command that writes does this on its own; read-only "
        "ones (backup list, runs list, status, ...) refuse an older catalog and name this command.",
    )


def _audit_group(sub: Sub) -> None:
    audit = commands_of(
        group(
            sub,
            "audit",
            "the audit trail (every operation: who, when, what, outcome): list, verify",
            "The tamper-evident audit trail: `audit list` lists it (`audit` alone is the same), "
            "`audit verify` checks its hash chain.",
        ),
        "audit_command",
        "what to do (default: list)",
        default="list",
    )
    sp = command(audit, "list", cmd_audit, "list the audit trail, oldest first")
    sp.add_argument(
        "--since", metavar="T", help="only records from T on: a time, or a duration before now (7d)"
    )
    command(
        audit,
        "verify",
        cmd_audit_verify,
        "recompute the audit chain; exit 1 naming the first bad record",
        "Recompute the hash chain of the audit trail, record by record. Exit 0 when every record "
        "is intact, 1 naming the first record that was changed, removed or inserted.",
    )


# Long-running commands with no result: their --json makes the log lines JSON.
JSON_LOGS = (cmd_run, cmd_wal_stream)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed, old spellings resolved: the namespace a command's function gets."""
    parser = build_parser()
    return normalize(parser, parser.parse_args(list(argv)))


def normalize(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Merge ``--backup ID`` (the old spelling) into the positional ``BACKUP`` (default latest)."""
    if "backup_option" in args:
        option = args.backup_option
        del args.backup_option
        if option is not None and args.backup not in (None, option):
            parser.error(f"the backup is named twice ({args.backup!r} and --backup {option!r}): name it once")
        args.backup = args.backup or option or "latest"
    return args
