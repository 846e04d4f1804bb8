"""The grammar's building blocks: groups with verbs (``Commands``: hidden old spellings, a default
subcommand), ``command``/``group``/``commands_of`` to declare them, the options several commands
share, and the help texts. ``parser.py`` declares the commands with them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from contentflow_backupd.cli.commands import Command


def add_recovery_target(sp: argparse.ArgumentParser, *, action_default: str, keep_archiving: str) -> None:
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
    sp.add_argument(
        "--process-max",
        type=_positive,
        metavar="N",
        help="threads that write the data directory's files (default BACKUPD_RESTORE__PROCESS_MAX: "
        "the number of CPUs, at most 8)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 32:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and 32")
    return value


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


CLUSTER_HELP = (
    "the configured cluster ([clusters.NAME]) to work on; default: $BACKUPD_CLUSTER, else the only one"
)

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
    # Also after the command; SUPPRESS: unless given here, the one before the command stays.
    sp.add_argument("--cluster", metavar="NAME", default=argparse.SUPPRESS, help=CLUSTER_HELP)
    if json is not None:
        sp.add_argument("--json", action="store_true", help=json)
    return sp


def add_all_clusters(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--all-clusters`` on a listing (``backup list``, ``runs list``, ``status``)."""
    sp.add_argument(
        "--all-clusters",
        action="store_true",
        help="every configured cluster, with a CLUSTER column (a `cluster` key with --json)",
    )
    return sp


def add_progress(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--no-progress`` on a command that moves data (see observability/progress.py)."""
    sp.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    return sp


def add_backup_choice(sp: argparse.ArgumentParser, help_: str) -> None:
    """The backup a command works on: positional ``BACKUP`` (default latest); ``--backup ID``,
    the spelling of earlier versions, stays as a hidden alias (``normalize`` merges them)."""
    sp.add_argument("backup", nargs="?", metavar="BACKUP", help=help_)
    sp.add_argument("--backup", dest="backup_option", metavar="ID", help=argparse.SUPPRESS)
