"""``migrate batch``: a data change in key-ordered, resumable batches (``migrate/batch.py``)."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from contentflow_backupd.cli.grammar import PROGRESS_HELP
from contentflow_backupd.cli.output import print_json
from contentflow_backupd.errors import EXIT_OK, UsageError
from contentflow_backupd.observability import progress as live_progress

if TYPE_CHECKING:
    from contentflow_backupd.wiring import App

EXIT_INTERRUPTED = 130


def register_batch(msub: Any) -> None:
    """Add ``batch`` to the ``migrate`` group's subparsers."""
    sp = msub.add_parser(
        "batch",
        help="run a data change in key-ordered batches, resumable, throttled, exactly once per row",
        description="Run one statement such as `UPDATE post SET score = score + 1 WHERE id >= :lo AND "
        "id < :hi` over the table in batches of N rows by key, each in its own transaction, with a "
        "checkpoint in the catalog: the same command resumes after a crash or Ctrl-C. For a key that "
        "is not an integer, write the range as `id >= :lo AND (:hi IS NULL OR id < :hi)`.",
    )
    sp.add_argument("--sql", type=Path, required=True, metavar="FILE", help="the statement, with :lo and :hi")
    sp.add_argument("--table", required=True, metavar="T", help="table or schema.table (exact names)")
    sp.add_argument(
        "--key", default="id", metavar="COLUMN", help="the column batches are cut by (default: id)"
    )
    sp.add_argument("--batch-size", type=int, required=True, metavar="N", help="rows per batch")
    sp.add_argument(
        "--sleep", default="0", metavar="S", help="pause between batches (seconds, or e.g. 500ms... 2s)"
    )
    sp.add_argument(
        "--max-lag",
        metavar="BYTES",
        help="before each batch, wait while replica replay lag or WAL-archive lag exceeds this (e.g. 64MB)",
    )
    sp.add_argument(
        "--restart", action="store_true", help="start over from the first key, even when finished"
    )
    sp.add_argument(
        "--resolve-in-flight",
        choices=["committed", "aborted"],
        help="only when the server cannot tell: whether the batch left in flight committed",
    )
    sp.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    sp.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    sp.set_defaults(func=cmd_migrate_batch)


def _seconds(value: str, option: str) -> float:
    from contentflow_backupd.timespec import parse_duration

    text = value.strip().lower()
    try:
        if text.endswith("ms"):
            return float(text[:-2]) / 1000
        return parse_duration(text, allow_zero=True)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def cmd_migrate_batch(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.migrate.batch import BatchOptions, StopFlag, run_batch_job
    from contentflow_backupd.migrate.batch_progress import BatchProgress
    from contentflow_backupd.migrate.batch_rules import parse_bytes

    try:
        sql_text = args.sql.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--sql {args.sql}: cannot read it ({exc})") from None
    max_lag = None
    if args.max_lag is not None:
        try:
            max_lag = parse_bytes(args.max_lag)
        except ValueError as exc:
            raise UsageError(f"--max-lag: {exc}") from None
    m = app.migrate_limits
    opts = BatchOptions(
        sql=sql_text,
        table=args.table,
        key=args.key,
        batch_size=args.batch_size,
        cluster=app.cluster,
        sleep=_seconds(args.sleep, "--sleep"),
        max_lag=max_lag,
        restart=args.restart,
        resolve_in_flight=args.resolve_in_flight,
        lock_timeout=m.lock_timeout,
        statement_timeout=m.statement_timeout,
    )
    stop = StopFlag()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Nothing that takes a lock here (no logging): the signal may land while this thread
        # holds the logger's lock. The loop logs the stop when it sees the flag.
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: roll the current batch back now
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    # On a terminal the shared live line (observability/progress.py, fed by BatchProgress) is
    # drawn; elsewhere BatchProgress logs its batch_progress lines.
    bar = live_progress.mode() == "bar"
    interval = float("inf") if bar else m.progress_interval
    try:
        with app.catalog() as catalog:
            summary = run_batch_job(
                app.conninfo,
                catalog,
                opts,
                stop=stop,
                progress=lambda total: BatchProgress(total, tty=False, stream=sys.stderr, interval=interval),
            )
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if args.json:
        print_json(summary.to_json())
    elif summary.status == "already_finished":
        print(
            f"migrate batch: this job already finished ({summary.total_batches} batches, "
            f"{summary.total_rows} rows); nothing done. Use --restart to run it again."
        )
    else:
        print(
            f"migrate batch {summary.status}: {summary.table} by {summary.key}: {summary.batches} batches, "
            f"{summary.rows} rows in {summary.duration_seconds:.1f}s ({summary.rate:.0f} rows/s); "
            f"job total {summary.total_batches} batches, {summary.total_rows} rows"
        )
    if summary.status == "interrupted":
        again = [a for a in sys.argv[1:] if a != "--restart"]
        print(
            f"contentflow-backupd: interrupted; the checkpoint is saved (next key {summary.last_key!r}). "
            f"Resume with: {shlex.join(['contentflow-backupd', *again])}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return EXIT_OK
