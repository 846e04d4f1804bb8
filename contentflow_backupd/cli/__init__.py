"""The command line: argv -> one command. No logic beyond parsing, wiring and printing:
``parser.py`` declares the commands (with the building blocks of ``grammar.py``), ``commands.py``
names the function of each; every command lives in the module of its area (backups, restore, wal,
daemon), imported only when that command runs, so that ``wal push`` (``wal-push``) starts fast.
This module is the entry point: it loads the settings, builds the App and runs the command."""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from contentflow_backupd.cli.parser import JSON_LOGS, parse_args
from contentflow_backupd.errors import EXIT_FAILED, BackupdError
from contentflow_backupd.signals import Interrupted, raise_interrupted

if TYPE_CHECKING:
    from contentflow_backupd.wiring import App
    from contentflow_backupd.wiring.fleet import Fleet


def main(
    argv: Sequence[str] | None = None, *, wal_fallback: str | None = None, as_program: bool = False
) -> int:
    """Run one command. ``wal_fallback``: why ``wal push`` did not go through the daemon's
    socket (entry.py), logged by the direct push. ``as_program``: this process is the command
    (entry.py), so a command that asks for it (``exit_at_once``) ends the process itself."""
    # Start-up (imports, pydantic's schemas, argparse) allocates tens of thousands of objects
    # that live as long as the process. Collecting during start-up, and once more at exit, only
    # scans them again: ~15% of a wal-push call, which runs once per WAL segment. So: no
    # collection while starting, then freeze what start-up built (gc.freeze) and collect as
    # usual while the command runs.
    gc.disable()
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        args.wal_fallback = wal_fallback
        code = _main(args)
    finally:
        gc.enable()
    if as_program and getattr(args, "exit_at_once", False):
        _exit_at_once(code)
    return code


def _exit_at_once(code: int) -> None:
    """End the process now, skipping the interpreter's teardown: about 0.15 CPU-s of freeing
    every module and object a backup imported and built, after the work is done.

    Only once the command has returned, so all it wrote is as durable as the command made it (a
    backup's chunks and manifest fsynced, its catalog row committed, its App closed: the
    teardown adds no durability, it only frees memory). What the normal exit would still do is
    done here: the exit handlers (logging's flush and close of its handlers, the join of thread
    pools) and the flush of stdout and stderr."""
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # the normal exit reports the broken output
    os._exit(code)


def _started() -> None:
    gc.freeze()
    gc.enable()


def _configure_progress(args: argparse.Namespace, app: App) -> None:
    """A live line on a terminal (stderr), else ``progress`` log events (observability/progress.py)."""
    from contentflow_backupd.observability import progress

    bar = sys.stderr.isatty() and not args.no_progress and not getattr(args, "json", False)
    progress.configure("bar" if bar else "log", app.progress_interval_s)


def _main(args: argparse.Namespace) -> int:
    try:
        from contentflow_backupd.settings import load_settings
        from contentflow_backupd.wiring.fleet import Fleet
        from contentflow_backupd.wiring.logs import setup_logging

        settings, file_data = load_settings(args.config)
        if getattr(args, "json", False) and args.func in JSON_LOGS:
            # `run --json`, `wal stream --json`: no result to print, so --json is the log format.
            settings = settings.model_copy(update={"log": settings.log.model_copy(update={"format": "json"})})
        with Fleet(settings, file_data) as fleet:  # built once; closes what the command opened
            args.fleet = fleet
            app = fleet.app(_cluster_of(args, fleet))
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


FLEET_WIDE = frozenset({"backups:cmd_config_show", "backups:cmd_catalog_upgrade"})
"""Commands that need no cluster chosen (``config show`` shows them all without ``--cluster``)."""


def _cluster_of(args: argparse.Namespace, fleet: Fleet) -> str:
    """The cluster a command works on (``--cluster``, ``BACKUPD_CLUSTER``, the only one); the
    first one for a command over every cluster. ``ConfigError`` (exit 2) naming the choices
    when several are configured and none was chosen."""
    from contentflow_backupd.cli.commands import cmd_run

    if args.func is cmd_run:
        fleet.check_streams()
    chosen = fleet.choose(args.cluster)
    if chosen is not None:
        return chosen
    target = getattr(args.func, "target", None)
    if getattr(args, "all_clusters", False) or target in FLEET_WIDE or args.func is cmd_run:
        return fleet.names[0]  # `run` serves every cluster (cli/daemon.py: cmd_run)
    return fleet.require(None, what=f"`{_command_name(args)}`")


def _command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, f"{args.command}_command", None)
    return " ".join(str(p) for p in (args.command, sub) if p)


def _print_notes(exc: BaseException) -> None:
    """What the command's clean-up left behind (``add_note``), e.g. a database an interrupted
    ``restore --create`` could not drop."""
    for note in getattr(exc, "__notes__", ()):
        print(f"contentflow-backupd: {note}", file=sys.stderr)
