"""The command line: argv -> one command. No logic beyond parsing, wiring and printing; each
command lives in the module of its area (backups, restore, wal, daemon), imported only when that
command runs (``LazyCommand``), so that ``wal push`` (``wal-push``) starts fast."""

from __future__ import annotations

import argparse
import gc
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

    ``wal push`` is started once per WAL segment (``archive_command``): it must not import the
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
cmd_catalog_upgrade = LazyCommand("backups:cmd_catalog_upgrade")
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
    sp.add_argument(
        "--target-name", metavar="NAME", help="recover to this restore point (see restore-point list)"
    )
    sp.add_argument(
        "--target-action",
        choices=["promote", "pause", "shutdown"],
        help=f"what the server does at the target (default: {action_default})",
    )
    sp.add_argument("--target-timeline", metavar="TLI", help="latest (default), current or a number")
    sp.add_argument("--owner", metavar="USER[:GROUP]", help="owner of the data directory (root only)")
    sp.add_argument("--keep-archiving", action="store_true", help=keep_archiving)


JSON_HELP = "print the result as JSON on stdout (logs stay on stderr)"
JSON_LOGS_HELP = (
    "no result to print: write the log lines (stderr) as JSON objects, as BACKUPD_LOG__FORMAT=json"
)

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

grammar:
  NOUN VERB (backup list, restore-point create, wal push, runs list, keys add); a backup is
  named by a positional BACKUP (an id or `latest`). The spellings of earlier versions
  (wal-push, wal-fetch, restore-test, list, show, runs, ...) still work; docs/cli.md has the
  table.

exit codes:
  0    success
  1    the operation failed (a failed verification, an unreachable database or storage, a
       wrong key, an unknown backup, an unhealthy status)
  2    usage or settings error (the message names the option or setting)
  3    migrate: applied, but a check could not run (--strict-checks rolls back instead)
  4    migrate: a pre-flight check refused the migration (nothing ran)
  126  wal fetch: a damaged WAL object or unreachable storage; PostgreSQL stops recovery
  130  interrupted (Ctrl-C, SIGTERM); `run` exits 0 on one signal, 128+N on a second

Run `contentflow-backupd COMMAND --help` for a command's options. README.md has the settings.
"""


PROGRESS_HELP = (
    "no live progress line on the terminal; `progress` log events every BACKUPD_PROGRESS_INTERVAL "
    "instead (as off a terminal and with --json)"
)

HELP_FLAGS = frozenset({"-h", "--help"})


if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]  # the subparsers of a group
else:
    Sub = argparse._SubParsersAction


class Commands(Sub):
    """The subcommands of a parser, with two things argparse lacks:

    - ``hidden``: old spellings, kept working but not shown in ``--help`` nor in the
      invalid-choice message: ``{"wal-push": ("wal", "push")}`` parses ``wal-push X`` as
      ``wal push X`` (same parser, so the same options, handler and namespace);
    - ``default``: the subcommand taken when the next word is none of them (``backup --kind
      full`` is ``backup create --kind full``; ``restore-point NAME``, ``restore-point create
      NAME``). ``--help`` still shows the group's own help.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden: dict[str, tuple[str, ...]] = {}
        self.default: str | None = None

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        name, *rest = values
        if name in self.hidden:
            namespace.old_spelling = name  # names the progress line as before (``_main``)
        super().__call__(parser, namespace, [*self.hidden.get(name, (name,)), *rest], option_string)

    def with_default(self, args: list[str]) -> list[str]:
        """``args`` with the default subcommand in front when they name none."""
        if self.default is None:
            return args
        if args and (args[0] in self.choices or args[0] in self.hidden or args[0] in HELP_FLAGS):
            return args
        return [self.default, *args]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands are ``Commands`` (hidden aliases, default subcommand)."""

    def _commands(self) -> Commands | None:
        return next((a for a in self._actions if isinstance(a, Commands)), None)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        commands = self._commands()
        if commands is not None and args is not None:
            args = commands.with_default(list(args))
        return super().parse_known_args(args, namespace)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, Commands) and value in action.hidden:
            return
        super()._check_value(action, value)


def commands_of(
    parser: argparse.ArgumentParser, dest: str, help_: str, *, default: str | None = None
) -> Commands:
    """The subcommands of ``parser`` (a group), stored in ``args.<dest>``."""
    sub = parser.add_subparsers(dest=dest, required=True, metavar="SUBCOMMAND", help=help_, action=Commands)
    assert isinstance(sub, Commands)
    sub.default = default
    return sub


def group(sub: Sub, name: str, help_: str, description: str | None = None) -> argparse.ArgumentParser:
    """A command group (``wal``, ``backup``, ``catalog``, ...): its subcommands do the work."""
    return sub.add_parser(name, help=help_, description=description or help_[:1].upper() + help_[1:] + ".")


def command(
    sub: Sub,
    name: str,
    fn: Command,
    help_: str,
    description: str | None = None,
    *,
    json: str | None = JSON_HELP,
) -> argparse.ArgumentParser:
    """A command (top level or in a group) that runs ``fn``, with its ``--json`` (``json``: its
    help text)."""
    text = description or help_[:1].upper() + help_[1:].replace("%%", "%") + "."
    sp = sub.add_parser(name, help=help_, description=text)
    sp.set_defaults(func=fn)
    if json is not None:
        sp.add_argument("--json", action="store_true", help=json)
    return sp


def _add_progress(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--no-progress`` on a command that moves data (see observability/progress.py)."""
    sp.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    return sp


def _add_backup_choice(sp: argparse.ArgumentParser, help_: str) -> None:
    """The backup a command works on: positional ``BACKUP`` (default latest); ``--backup ID``,
    the spelling of earlier versions, stays as a hidden alias (``normalize`` merges them)."""
    sp.add_argument("backup", nargs="?", metavar="BACKUP", help=help_)
    sp.add_argument("--backup", dest="backup_option", metavar="ID", help=argparse.SUPPRESS)


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
    command(
        sub,
        "status",
        cmd_status,
        "health report: backup ages, last runs, WAL, dependencies; exit 1 if unhealthy",
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
    sp = _add_progress(command(backup, "create", cmd_backup, "take a backup"))
    sp.set_defaults(operation="backup")  # the name of its progress line and events
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
    sp = command(backup, "show", cmd_show, "show one backup and its manifest summary")
    sp.add_argument("backup_id", metavar="BACKUP", help="a backup id (see backup list) or 'latest'")
    sp = _add_progress(
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
    sp = _add_progress(
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
    _add_recovery_target(
        sp, action_default="pause", keep_archiving="keep archive_mode of the backup (default: set it off)"
    )
    sp = _add_progress(
        command(
            sub,
            "recover",
            cmd_recover,
            "disaster recovery: restore the newest good backup, replay WAL, check",
        )
    )
    _add_backup_choice(sp, "this backup only, no fallback (default: the newest good one)")
    sp.add_argument("--pgdata", metavar="DIR", help="physical: a new data directory (absent or empty)")
    sp.add_argument("--to-database", metavar="URL", help="logical: the database to create (or an empty one)")
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
        command(
            sub, "drill", cmd_restore_test, "restore drill: restore into a scratch instance, check, time it"
        )
    )
    _add_backup_choice(sp, "the backup to drill: an id or 'latest' (default)")
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
    _add_progress(
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
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from contentflow_backupd.settings import load_settings
        from contentflow_backupd.wiring import App
        from contentflow_backupd.wiring.logs import setup_logging

        settings, file_data = load_settings(args.config)
        if getattr(args, "json", False) and args.func in JSON_LOGS:
            # `run --json`, `wal stream --json`: no result to print, so --json is the log format.
            settings = settings.model_copy(update={"log": settings.log.model_copy(update={"format": "json"})})
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

            operation = (
                getattr(args, "operation", None)
                or getattr(args, "old_spelling", None)
                or " ".join(
                    str(p) for p in (args.command, getattr(args, f"{args.command}_command", None)) if p
                )
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
