"""The ``contentflow-backupd`` command (and ``python -m contentflow_backupd``).

``wal push`` (``archive_command``, once per WAL segment) first offers the segment to the running
daemon over its socket (``walsocket.py``), before anything heavy is imported; when no daemon
takes it, and for every other command, the full command line runs (``cli``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    fallback: str | None = None
    if "wal-push" in args or "push" in args:
        from contentflow_backupd.walsocket import fast_push

        try:
            result = fast_push(args, os.environ)
        except KeyboardInterrupt:
            print("contentflow-backupd: interrupted", file=sys.stderr)
            return 130
        if isinstance(result, int):
            return result
        if result is not None and not result.quiet:
            fallback = str(result)
    from contentflow_backupd.cli import main as cli_main

    return cli_main(args, wal_fallback=fallback)
