"""The ``contentflow-backupd`` command (and ``python -m contentflow_backupd``).

The two commands PostgreSQL runs once per WAL segment take a fast path first, before anything
heavy is imported:

- ``wal push`` (``archive_command``) offers the segment to the running daemon over its socket
  (``walsocket.py``);
- ``wal fetch`` (``restore_command``) serves the segment from the prefetch spool when the helper
  fetched it already (``walspool.py``), and starts that helper when none runs
  (``wal prefetch``, ``ops/wal/prefetch.py``).

When the fast path does not apply, and for every other command, the full command line runs
(``cli``)."""

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs a few ms of every archive_command
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from contentflow_backupd.walspool import WalSpool

FETCH_WAIT_S = 30.0
"""How long ``wal fetch`` waits for a segment the prefetch helper is fetching right now."""


def main(argv: "Sequence[str] | None" = None) -> int:
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
        elif "wal-fetch" in args or "fetch" in args:
            code = fast_fetch(args, os.environ)
            if code is not None:
                return _done(code, as_program=argv is None)
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


def fast_fetch(argv: "Sequence[str]", environ: "Mapping[str, str]") -> int | None:
    """The exit code of ``wal fetch NAME DEST`` when the prefetch helper answered it: 0 when the
    file was served from the spool, 1 when the helper checked, after this request, that it is not
    in the archive (what the full command would answer). None otherwise (not a plain ``wal
    fetch``, prefetch off, no helper yet, a failure): the full command fetches it. Either way the
    helper is told what PostgreSQL asked for, and started when none runs."""
    from contentflow_backupd.walconf import Fallback, client_config, parse_fetch

    parsed = parse_fetch(argv)
    if parsed is None:
        return None
    config, cluster, name, dest = parsed
    try:
        cfg = client_config(config, environ, cluster)
    except Fallback:
        return None
    if cfg["prefetch"] <= 0:
        return None
    from contentflow_backupd.walspool import NOT_ARCHIVED, SERVED, WalSpool

    spool = WalSpool(cfg["prefetch_dir"])
    try:
        if not os.path.isdir(spool.path):
            spool.create()
        spool.want(name)  # first: the helper moves on to the segments after this one
        running, helper = helper_running(spool)
        if helper is None:
            if not running:
                start_helper(config, cluster)
            return None
        token, answers = helper
        if spool.serve(name, dest, token, wait_s=FETCH_WAIT_S):
            return 0
        if not answers:
            return None
        # Not in the spool: ask the helper, which checks the archive with its repository open.
        nonce = os.urandom(8).hex()
        spool.want(name, nonce)
        found = spool.await_answer(name, dest, token, nonce, FETCH_WAIT_S, lambda: helper_running(spool)[0])
    except OSError:
        return None
    return 0 if found == SERVED else 1 if found == NOT_ARCHIVED else None


def helper_running(spool: "WalSpool") -> "tuple[bool, tuple[str, bool] | None]":
    """Whether a prefetch helper holds the spool's lock, and its token and whether it answers
    requests (None until it has written them): only the files it wrote are served."""
    import fcntl

    from contentflow_backupd.walspool import LOCK, read_token

    fd = os.open(os.path.join(spool.path, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, read_token(fd)
    finally:
        os.close(fd)
    return False, None


def start_helper(config: str | None, cluster: str | None = None) -> None:
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
    if cluster is not None:
        argv += ["--cluster", cluster]
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
