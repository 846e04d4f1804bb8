"""The command line: argv -> one command. No logic beyond parsing, wiring and printing; each
command lives in the module of its area (backups, restore, wal, daemon), imported only when that
command runs (``LazyCommand``), so that ``wal-push`` starts fast."""

from __future__ import annotations

import argparse
import gc
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from contentflow_backupd import __version__
from contentflow_backupd.errors import EXIT_FAILED, BackupdError
from contentflow_backupd.model import JOB_NAMES
from contentflow_backupd.signals import Interrupted, raise_interrupted

if TYPE_CHECKING:
    from contentflow_backupd.wiring import App

Command = Callable[[argparse.Namespace, "App"], int]
"""A command: its arguments and the application (``wiring.App``, built once from the settings)."""


class LazyCommand:
    """The command ``"module:function"`` of this package, imported only when it runs.

    ``wal-push`` is started once per WAL segment (``archive_command``): it must not import the
    catalog, the scheduler, the metrics or the restore code that the other commands need.
    """

    def __init__(self, target: str) -> None:
        self.target = target

    def resolve(self) -> Command:
        module, _, name = self.target.partition(":")
        fn: Command = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        return fn

    def __call__(self, args: argparse.Namespace, app: App) -> int:
        return int(self.resolve()(args, app))


cmd_init = LazyCommand("backups:cmd_init")
cmd_backup = LazyCommand("backups:cmd_backup")
cmd_list = LazyCommand("backups:cmd_list")
cmd_show = LazyCommand("backups:cmd_show")
cmd_verify = LazyCommand("backups:cmd_verify")
cmd_catalog_rebuild = LazyCommand("backups:cmd_catalog_rebuild")
cmd_config_show = LazyCommand("backups:cmd_config_show")
cmd_expire = LazyCommand("daemon:cmd_expire")
cmd_run = LazyCommand("daemon:cmd_run")
cmd_runs = LazyCommand("daemon:cmd_runs")
cmd_status = LazyCommand("daemon:cmd_status")
cmd_restore = LazyCommand("restore:cmd_restore")
cmd_restore_point = LazyCommand("restore:cmd_restore_point")
cmd_list_restore_points = LazyCommand("restore:cmd_list_restore_points")
cmd_recover = LazyCommand("restore:cmd_recover")
cmd_restore_test = LazyCommand("restore:cmd_restore_test")
cmd_wal_push = LazyCommand("wal:cmd_wal_push")
cmd_wal_fetch = LazyCommand("wal:cmd_wal_fetch")
cmd_wal_stream = LazyCommand("wal:cmd_wal_stream")
cmd_wal_verify = LazyCommand("wal:cmd_wal_verify")
cmd_check = LazyCommand("check:cmd_check")
cmd_audit = LazyCommand("audit:cmd_audit")
cmd_keys = {name: LazyCommand(f"keys:cmd_keys_{name}") for name in ("list", "add", "remove", "rotate")}
cmd_audit_verify = LazyCommand("audit:cmd_audit_verify")


def _add_recovery_target(sp: argparse.ArgumentParser, *, action_default: str, keep_archiving: str) -> None:
    """The point-in-time options ``restore --pgdata`` and ``recover`` share."""
    sp.add_argument("--target-time", metavar="TIME", help="recover to this time (ISO 8601; UTC without zone)")
    sp.add_argument("--target-lsn", metavar="LSN", help="recover to this WAL position (e.g. 0/3000100)")
    sp.add_argument("--target-xid", metavar="XID", help="recover to the commit of this transaction")
    sp.add_argument("--target-name", metavar="NAME", help="recover to this restore point (see restore-point)")
    sp.add_argument(
        "--target-action",
        choices=["promote", "pause", "shutdown"],
        help=f"what the server does at the target (default: {action_default})",
    )
    sp.add_argument("--target-timeline", metavar="TLI", help="latest (default), current or a number")
    sp.add_argument("--owner", metavar="USER[:GROUP]", help="owner of the data directory (root only)")
    sp.add_argument("--keep-archiving", action="store_true", help=keep_archiving)


JSON_HELP = "print the result as JSON on stdout (logs stay on stderr)"

TOP_LEVEL_EPILOG = """\
required settings (environment variables, or keys of the config file):
  BACKUPD_REPOSITORY          where the backups go: file:///absolute/path or s3://bucket/prefix
  one encryption secret:      BACKUPD_ENCRYPTION__PASSPHRASE_FILE (a file holding a passphrase),
                              BACKUPD_ENCRYPTION__KEY_FILE (a 32-byte key), or
                              BACKUPD_ENCRYPTION__KMS_KEY_ID (an AWS KMS key)
  BACKUPD_DATABASE_URL        the database (libpq URI; unset: PG* variables and ~/.pgpass)

config file:
  an optional TOML file given by --config PATH or BACKUPD_CONFIG (e.g.
  /etc/contentflow-backupd/config.toml): keys are the names without BACKUPD_, lower case,
  nested settings as tables ([encryption] passphrase_file = ...). The environment wins over
  the file. An unknown variable or key is an error that suggests the closest known name.
  `contentflow-backupd config show` prints what is in effect.

exit codes:
  0    success
  1    the operation failed (a failed verification, an unreachable database or storage, a
       wrong key, an unknown backup, an unhealthy status)
  2    usage or settings error (the message names the option or setting)
  3    migrate: applied, but a check could not run (--strict-checks rolls back instead)
  4    migrate: a pre-flight check refused the migration (nothing ran)
  126  wal-fetch: a damaged WAL object or unreachable storage; PostgreSQL stops recovery
  130  interrupted (Ctrl-C, SIGTERM); `run` exits 0 on one signal, 128+N on a second

Run `contentflow-backupd COMMAND --help` for a command's options. README.md has the settings.
"""


PROGRESS_HELP = (
    "no live progress line on the terminal; `progress` log events every BACKUPD_PROGRESS_INTERVAL "
    "instead (as off a terminal and with --json)"
)


def _add_progress(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--no-progress`` on a command that moves data (see observability/progress.py)."""
    sp.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    return sp


def _group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str
) -> argparse.ArgumentParser:
    """A command group (``wal``, ``catalog``, ``config``): its subcommands do the work."""
    return sub.add_parser(name, help=help_, description=help_[:1].upper() + help_[1:] + ".")


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand of a group, with its ``--json``."""
    sp = sub.add_parser(name, help=help_, description=description)
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
    return sp


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: it imports the settings, and main() starts with the
    # collector off (see main).
    from contentflow_backupd.cli.keys import register as register_keys
    from contentflow_backupd.cli.migrate import register as register_migrate

    p = argparse.ArgumentParser(
        prog="contentflow-backupd",
        description="Encrypted, deduplicated, verified PostgreSQL backups to S3 or a local directory.",
        epilog=TOP_LEVEL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"contentflow-backupd {__version__}")
    p.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML settings file (default: $BACKUPD_CONFIG, else none)"
    )
    sub = p.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do; `COMMAND --help` for its options"
    )

    def add(
        name: str, fn: Callable[[argparse.Namespace, App], int], help_: str, *, json: bool = True
    ) -> argparse.ArgumentParser:
        """A top-level command. ``json=False``: the command prints no result to format; it still
        accepts ``--json`` (hidden, ignored) so that scripts passing it to every command work."""
        sp = sub.add_parser(name, help=help_, description=help_.replace("%%", "%"))
        sp.set_defaults(func=fn)
        sp.add_argument("--json", action="store_true", help=JSON_HELP if json else argparse.SUPPRESS)
        return sp

    add("init", cmd_init, "create the repository (repo.json and the wrapped key)")
    sp = _add_progress(add("backup", cmd_backup, "take a backup"))
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
    sp = add("list", cmd_list, "list backups, oldest first")
    sp.add_argument("--all", action="store_true", help="include failed and interrupted attempts")
    sp = add("show", cmd_show, "show one backup and its manifest summary")
    sp.add_argument("backup_id", metavar="BACKUP_ID", help="a backup id (see list) or 'latest'")
    sp = _add_progress(
        add("verify", cmd_verify, "read back and authenticate backups (all of them by default)")
    )
    sp.add_argument("backup_ids", nargs="*", metavar="BACKUP_ID", help="backup ids or 'latest'")
    sp.add_argument("--all", action="store_true", help="verify every backup (the default without ids)")
    sp.add_argument("--quick", action="store_true", help="only check that every object exists with its size")
    sp.add_argument(
        "--since-last",
        action="store_true",
        help="continuous mode (the daemon's verify job): backups added since the last run, plus a "
        "rotating share of all objects (BACKUPD_VERIFY__FULL_SWEEP); exit 1 while a corrupt object is open",
    )
    sp = _add_progress(
        add("restore", cmd_restore, "restore a backup into a database, a file or a data directory")
    )
    sp.add_argument("backup", metavar="BACKUP_ID|latest", help="the backup to restore (see list)")
    sp.add_argument("--to-database", metavar="URL", help="libpq URI of the database to restore into")
    sp.add_argument("--to-file", metavar="PATH", help="write the pg_dump archive to PATH instead")
    sp.add_argument("--create", action="store_true", help="create the target database if it does not exist")
    sp.add_argument("--clean", action="store_true", help="drop and replace objects in a non-empty database")
    sp.add_argument(
        "--jobs", type=int, default=1, help="parallel pg_restore jobs (>1 is not one transaction)"
    )
    sp.add_argument("--no-owner", action="store_true", help="do not restore ownership and privileges")
    sp.add_argument("--pgdata", metavar="DIR", help="restore a physical backup into a new data directory")
    _add_recovery_target(
        sp, action_default="pause", keep_archiving="keep archive_mode of the backup (default: set it off)"
    )
    sp = add("restore-point", cmd_restore_point, "create a named restore point on the server and record it")
    sp.add_argument("name", metavar="NAME", help="the restore point's name (recover --target-name NAME)")
    add("list-restore-points", cmd_list_restore_points, "list the recorded restore points, oldest first")
    sp = _add_progress(
        add("recover", cmd_recover, "disaster recovery: restore the newest good backup, replay WAL, check")
    )
    sp.add_argument("--pgdata", metavar="DIR", help="physical: a new data directory (absent or empty)")
    sp.add_argument("--to-database", metavar="URL", help="logical: the database to create (or an empty one)")
    sp.add_argument(
        "--backup", default="latest", metavar="ID", help="this one only, no fallback (default: newest)"
    )
    _add_recovery_target(
        sp, action_default="promote", keep_archiving="the recovered server archives into this repository"
    )
    sp.add_argument(
        "--start", action="store_true", help="start the server, wait for recovery, then run the drill checks"
    )
    sp.add_argument(
        "--check-url", metavar="URL", help="with --start: the recovered server (default BACKUPD_DATABASE_URL)"
    )
    sp = _add_progress(
        add(
            "restore-test", cmd_restore_test, "restore drill: restore into a scratch instance, check, time it"
        )
    )
    sp.add_argument(
        "--backup", default="latest", metavar="ID|latest", help="the backup to drill (default: latest)"
    )
    sp.add_argument(
        "--target-time",
        default="random",
        metavar="TIME|random|none",
        help="physical: a time (ISO 8601), a random point of the recovery window (default) or none "
        "(the end of the WAL archive)",
    )
    sp = add("expire", cmd_expire, "plan retention (BACKUPD_RETENTION__*) and, with --confirm, apply it")
    sp.add_argument("--confirm", action="store_true", help="delete what the plan says (default: print it)")
    sp = add("wal-push", cmd_wal_push, "archive one WAL file (archive_command = '... wal-push %%p')")
    sp.add_argument("path", metavar="PATH", help="the WAL file PostgreSQL archives (%%p)")
    sp = add(
        "wal-fetch",
        cmd_wal_fetch,
        "fetch one WAL file (restore_command = '... wal-fetch %%f %%p')",
        json=False,
    )
    sp.add_argument("name", metavar="NAME", help="the WAL file PostgreSQL asks for (%%f)")
    sp.add_argument("dest", metavar="DEST", help="where PostgreSQL wants it written (%%p)")
    add(
        "wal-stream",
        cmd_wal_stream,
        "stream WAL with pg_receivewal on a slot and archive each segment",
        json=False,
    )
    add("run", cmd_run, "run the daemon: scheduled backups, WAL, retention, metrics and health", json=False)
    add("status", cmd_status, "health report: backup ages, last runs, WAL, dependencies; exit 1 if unhealthy")
    add("check", cmd_check, "what the database role and storage may do; exit 1 naming what is missing")
    sp = add("runs", cmd_runs, "list recorded runs of jobs (scheduled and manual), oldest first")
    sp.add_argument("--limit", type=int, default=100, help="the newest N runs (default 100)")
    sp.add_argument("--job", choices=list(JOB_NAMES), help="only this job")
    walp = _group(sub, "wal", "WAL archive maintenance (wal verify)")
    walsub = walp.add_subparsers(
        dest="wal_command", required=True, metavar="SUBCOMMAND", help="the maintenance task"
    )
    sp = _command(
        walsub,
        "verify",
        "check the WAL archive for gaps, per timeline",
        "List the archived WAL segments of each timeline and every gap between them. Exit 0 "
        "without gaps, 1 naming each gap (a point-in-time recovery cannot cross one).",
    )
    sp.set_defaults(func=cmd_wal_verify)
    cat = _group(sub, "catalog", "catalog maintenance (catalog rebuild)")
    catsub = cat.add_subparsers(
        dest="catalog_command", required=True, metavar="SUBCOMMAND", help="the maintenance task"
    )
    sp = _command(
        catsub,
        "rebuild",
        "rebuild the catalog from the repository's manifests",
        "Read every backup manifest of the repository and record the backups in the catalog "
        "(BACKUPD_CATALOG_URL): after losing the catalog, or to point a new one at a repository. "
        "The repository is the source of truth; nothing in it changes.",
    )
    _add_progress(sp)
    sp.set_defaults(func=cmd_catalog_rebuild)
    sp = add("audit", cmd_audit, "list the audit trail (every operation: who, when, what, outcome)")
    sp.add_argument(
        "--since", metavar="T", help="only records from T on: a time, or a duration before now (7d)"
    )
    auditsub = sp.add_subparsers(
        dest="audit_command", metavar="SUBCOMMAND", help="audit verify: check the chain (optional)"
    )
    asp = _command(
        auditsub,
        "verify",
        "recompute the audit chain; exit 1 naming the first bad record",
        "Recompute the hash chain of the audit trail, record by record. Exit 0 when every record "
        "is intact, 1 naming the first record that was changed, removed or inserted.",
    )
    asp.set_defaults(func=cmd_audit_verify)
    cfg = _group(sub, "config", "settings (config show)")
    cfgsub = cfg.add_subparsers(
        dest="config_command", required=True, metavar="SUBCOMMAND", help="what to do with the settings"
    )
    sp = _command(
        cfgsub,
        "show",
        "print the resolved settings and their sources, secrets masked",
        "Print every setting with its value and where it came from (environment, config file, "
        "credential file or default). Secrets are masked.",
    )
    sp.set_defaults(func=cmd_config_show)
    register_keys(sub, dict(cmd_keys))
    register_migrate(sub, add)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # Start-up (imports, pydantic's schemas, argparse) allocates tens of thousands of objects
    # that live as long as the process. Collecting during start-up, and once more at exit, only
    # scans them again: ~15% of a wal-push call, which runs once per WAL segment. So: no
    # collection while starting, then freeze what start-up built (gc.freeze) and collect as
    # usual while the command runs.
    gc.disable()
    try:
        return _main(argv)
    finally:
        gc.enable()


def _started() -> None:
    gc.freeze()
    gc.enable()


def _configure_progress(args: argparse.Namespace, app: App) -> None:
    """A live line on a terminal (stderr), else ``progress`` log events (observability/progress.py)."""
    from contentflow_backupd.observability import progress

    bar = sys.stderr.isatty() and not args.no_progress and not getattr(args, "json", False)
    progress.configure("bar" if bar else "log", app.progress_interval_s)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command_argv = None
    if "migrate" in argv and "--" in argv and argv.index("migrate") < argv.index("--"):
        # `migrate [OPTIONS] -- COMMAND ...`: everything after `--` is the migration command.
        cut = argv.index("--")
        argv, command_argv = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.migrate_command_argv = command_argv
    try:
        from contentflow_backupd.settings import load_settings
        from contentflow_backupd.wiring import App
        from contentflow_backupd.wiring.logs import setup_logging

        settings, file_data = load_settings(args.config)
        with App(settings, file_data) as app:  # built once; closes what the command opened
            tracked = hasattr(args, "no_progress")
            if tracked:
                _configure_progress(args, app)
            setup_logging(settings)
            signal.signal(signal.SIGTERM, raise_interrupted)
            _started()
            if not tracked:
                return int(args.func(args, app))
            from contentflow_backupd.observability import progress

            operation = " ".join(
                str(p) for p in (args.command, getattr(args, f"{args.command}_command", None)) if p
            )
            with progress.tracking(operation):
                return int(args.func(args, app))
    except BackupdError as exc:
        print(f"contentflow-backupd: error: {exc}", file=sys.stderr)
        _print_notes(exc)
        return exc.exit_code
    except BaseException as exc:
        if isinstance(exc, Interrupted | KeyboardInterrupt):
            print("contentflow-backupd: interrupted", file=sys.stderr)
            _print_notes(exc)
            return 130
        if isinstance(exc, SystemExit):
            raise
        import structlog

        structlog.get_logger("contentflow_backupd.cli").exception("internal_error")
        print(f"contentflow-backupd: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _print_notes(exc: BaseException) -> None:
    """What the command's clean-up left behind (``add_note``), e.g. a database an interrupted
    ``restore --create`` could not drop."""
    for note in getattr(exc, "__notes__", ()):
        print(f"contentflow-backupd: {note}", file=sys.stderr)
