"""WAL archive commands: wal push, wal fetch, wal stream, wal verify (and their old spellings
wal-push, wal-fetch, wal-stream)."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from contentflow_backupd.cli.output import print_json
from contentflow_backupd.errors import EXIT_FAILED, EXIT_OK, BackupdError, VerificationFailed

if TYPE_CHECKING:
    from contentflow_backupd.wiring import App

log = structlog.get_logger("contentflow_backupd.cli")


def cmd_wal_push(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.wal.archive import push_wal_file

    if getattr(args, "wal_fallback", None):
        log.warning("wal_socket_fallback", reason=args.wal_fallback)
    status = push_wal_file(app.wal_archive(), Path(args.path))
    if args.json:
        print_json({"file": Path(args.path).name, "status": status})
    return EXIT_OK


def cmd_wal_fetch(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.errors import ObjectNotFound, RecoveryMustStop
    from contentflow_backupd.ops.wal.archive import fetch_wal_file

    try:
        size = fetch_wal_file(app.wal_archive(), args.name, Path(args.dest))
    except ObjectNotFound:
        log.info("wal_not_archived", wal=args.name)
        if args.json:
            print_json({"file": args.name, "status": "not_archived", "bytes": None})
        return EXIT_FAILED
    except BackupdError as exc:
        raise RecoveryMustStop(f"wal-fetch {args.name}: {exc.message}; stopping recovery") from None
    if args.json:
        print_json({"file": args.name, "status": "fetched", "bytes": size})
    return EXIT_OK


def cmd_wal_prefetch(args: argparse.Namespace, app: App) -> int:
    """The prefetch helper ``wal fetch`` starts (ops/wal/prefetch.py): one per spool."""
    import fcntl
    import threading

    from contentflow_backupd.ops.wal.prefetch import run_prefetch
    from contentflow_backupd.signals import SignalWatch
    from contentflow_backupd.timespec import parse_duration
    from contentflow_backupd.walspool import LOCK, WalSpool

    if app.wal_prefetch <= 0:
        return EXIT_OK
    spool = WalSpool(str(app.wal_prefetch_dir()))
    spool.create()
    fd = os.open(os.path.join(spool.path, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.debug("wal_prefetch_running")  # another helper serves this spool
            return EXIT_OK
        spool.clear(keep_want=True)  # what a helper that crashed left: never served
        token = os.urandom(8).hex()
        spool.write_token(fd, token)  # who serves the spool (pid: ps, kill), and its mark
        stop = threading.Event()
        SignalWatch(lambda signum, count: stop.set()).install()
        run_prefetch(
            app.wal_archive(),
            spool,
            token=token,
            depth=app.wal_prefetch,
            idle_s=parse_duration(app.wal_prefetch_idle),
            concurrency=min(app.wal_prefetch, 4),
            stop=stop,
        )
    finally:
        os.close(fd)
    return EXIT_OK


def cmd_wal_stream(args: argparse.Namespace, app: App) -> int:
    import threading

    from contentflow_backupd.ops.wal.stream import run_wal_stream
    from contentflow_backupd.signals import SignalWatch
    from contentflow_backupd.source.receivewal import PgReceiveWal

    stop = threading.Event()

    def on_signal(signum: int, count: int) -> None:
        # On the signal-watch thread, not in the handler (contentflow_backupd.signals): logging
        # and Event.set take locks the interrupted main thread may hold. A second signal raises
        # Interrupted in the main thread (stop now, exit 130).
        if count == 1:
            log.info("wal_stream_stopping", signal=signal.Signals(signum).name)
            stop.set()

    SignalWatch(on_signal, second_raises=True).install()
    receiver = PgReceiveWal(
        app.conninfo,
        spool_dir=app.wal_spool_dir(),
        slot=app.wal_slot,
        bin_dir=app.pg_bin,
        tmp_root=app.tmp_dir(),
    )
    run_wal_stream(app.wal_archive(), receiver, slot=app.wal_slot, stop=stop)
    return EXIT_OK


def cmd_wal_verify(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.wal.archive import check_wal_chain

    report = check_wal_chain(app.wal_archive())
    if args.json:
        print_json(report.to_json())
    else:
        for t in report.to_json()["timelines"]:
            print(f"timeline {t['timeline']}: {t['segments']} segments, {t['first']} .. {t['last']}")
        for g in report.gaps:
            print(f"  gap on timeline {g.timeline}: {g.missing_from} .. {g.missing_to} missing")
    if not report.ok:
        raise VerificationFailed(f"the WAL archive has {len(report.gaps)} gap(s)")
    return EXIT_OK
