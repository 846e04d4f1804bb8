"""The ``contentflow-backupd`` command (and ``python -m contentflow_backupd``).

The two commands PostgreSQL runs once per WAL segment take a fast path first, before anything
heavy is imported:

- ``wal push`` (``archive_command``) offers the segment to the running daemon over its socket
  (``walsocket.py``);
- ``wal fetch`` (``restore_command``) serves the segment from the prefetch spool when the helper
  fetched it already (``repository/walspool.py``), and starts that helper when none runs
  (``wal prefetch``, ``ops/wal/prefetch.py``).

When the fast path does not apply, and for every other command, the full command line runs
(``cli``)."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs a few ms of every archive_command
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from contentflow_backupd.repository.walspool import WalSpool

FETCH_WAIT_S = 30.0
"""How long ``wal fetch`` waits for a segment the prefetch helper is fetching right now."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    fallback: str | None = None
    try:
        if "wal-push" in args or "push" in args:
            from contentflow_backupd.walsocket import fast_push

            result = fast_push(args, os.environ)
            if isinstance(result, int):
                return _done(result, as_program=argv is None)
            if result is not None and not result.quiet:
                fallback = str(result)
        elif ("wal-fetch" in args or "fetch" in args) and fast_fetch(args, os.environ):
            return _done(0, as_program=argv is None)
    except KeyboardInterrupt:
        print("contentflow-backupd: interrupted", file=sys.stderr)
        return 130
    from contentflow_backupd.cli import main as cli_main

    return cli_main(args, wal_fallback=fallback, as_program=argv is None)


def _done(code: int, *, as_program: bool) -> int:
    """End a fast path. Run as the program, exit at once: the answer is final and nothing is
    pending (no thread, no buffered file but stdout and stderr, flushed here), so the interpreter's
    teardown would only add a few milliseconds to every segment. Called in-process (tests), return."""
    if as_program:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            return code  # the normal exit reports the broken output
        os._exit(code)
    return code


def fast_fetch(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """True when ``wal fetch NAME DEST`` was served from the prefetch spool. Otherwise (not a
    plain ``wal fetch``, prefetch off, not in the spool) the full command fetches it; either way
    the helper is told what PostgreSQL asked for, and started when none runs."""
    from contentflow_backupd.walsocket import Fallback, client_config, parse_fetch

    parsed = parse_fetch(argv)
    if parsed is None:
        return False
    config, name, dest = parsed
    try:
        cfg = client_config(config, environ)
    except Fallback:
        return False
    if cfg["prefetch"] <= 0:
        return False
    from contentflow_backupd.repository.walspool import WalSpool

    spool = WalSpool(cfg["prefetch_dir"])
    try:
        spool.create()
        spool.want(name)  # first: the helper moves on to the segments after this one
        running, token = helper_running(spool)
        served = spool.serve(name, dest, token, wait_s=FETCH_WAIT_S if running else 0.0)
        if not running:
            start_helper(config)
    except OSError:
        return False
    return served


def helper_running(spool: WalSpool) -> tuple[bool, str | None]:
    """Whether a prefetch helper holds the spool's lock, and its token (None until it has
    written it): only the segments it wrote are served."""
    import fcntl

    from contentflow_backupd.repository.walspool import LOCK, read_token

    fd = os.open(os.path.join(spool.path, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, read_token(fd)
    finally:
        os.close(fd)
    return False, None


def start_helper(config: str | None) -> None:
    """``wal prefetch`` in its own session, outliving this ``restore_command``. A second helper
    started meanwhile exits at once.

    Its log lines go where ours go (PostgreSQL's log file, the journal) unless our stderr is a
    pipe: whoever reads that pipe waits for its end (a script's ``$(...)``, a caller capturing
    output), which the helper would hold open until it ends."""
    import stat
    import subprocess

    argv = [sys.executable, "-m", "contentflow_backupd"]
    if config is not None:
        argv += ["--config", config]
    try:
        piped = stat.S_ISFIFO(os.fstat(2).st_mode)
    except OSError:
        piped = True
    subprocess.Popen(
        [*argv, "wal", "prefetch"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if piped else None,
        start_new_session=True,
        close_fds=True,
    )
