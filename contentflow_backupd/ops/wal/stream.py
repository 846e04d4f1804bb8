"""``wal-stream``: archive WAL continuously from a replication slot through ``pg_receivewal``.

``pg_receivewal`` writes into a local spool directory: the segment it is receiving as
``<segment>.partial``, renamed to ``<segment>`` once it is complete and fsynced, and timeline
history files (written under a temporary name, then renamed). This use case supervises it and
archives what it completes:

- only complete files are pushed (names that are a segment or a ``.history`` file); a
  ``.partial`` file is never pushed, so it can never be stored as a complete segment;
- files are pushed in name order (a timeline's history file sorts before its segments), and a
  file is removed from the spool only after ``WalArchive.push`` returned, that is after it is
  durably stored; a failed push leaves it there for the next scan;
- the newest complete segment stays in the spool (marked ``<segment>.archived``) until a newer
  one appears: ``pg_receivewal`` before PostgreSQL 15 finds where to resume only in its
  directory, and would otherwise start at the server's current position and leave a gap;
- ``pg_receivewal`` is restarted with exponential backoff after it exits; on ``stop`` it is
  stopped (it keeps its ``.partial`` file, from which the next start resumes), the files it
  completed are archived, and only then does the call return.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import structlog

from contentflow_backupd.backoff import Backoff, Pacer
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.source.base import WalReceiver
from contentflow_backupd.wal import classify

log = structlog.get_logger(__name__)

RESTART_BACKOFF = Backoff(first=1, cap=30)
"""Paces the restarts of ``pg_receivewal`` and the retries of failed uploads: 1 s, doubling up to
30 s; an upload's success starts over, and so does a ``pg_receivewal`` that ran for 30 s or more."""

ARCHIVED_MARK = ".archived"
"""Suffix of the empty marker beside a complete segment that is archived but kept as resume point."""


def prepare_spool(spool_dir: Path) -> Path:
    """Create the spool directory (0700) if needed and return it."""
    spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(spool_dir, 0o700)
    return spool_dir


def _segment_key(name: str) -> str | None:
    """The 24-digit segment part of a segment or ``.partial`` name; None for other files."""
    kind = classify(name)
    return name[:24] if kind in ("segment", "partial") else None


class SpoolUploader:
    """Pushes the complete files of a spool directory to the archive, oldest first.

    ``upload`` raises the first push failure; ``upload_retrying`` logs it instead and waits an
    exponentially growing time before the next attempt.
    """

    def __init__(self, archive: WalArchive, spool_dir: Path, backoff: Backoff = RESTART_BACKOFF) -> None:
        self.archive = archive
        self.spool_dir = spool_dir
        self.archived = 0
        self.pacer = Pacer(backoff)
        self._pushing: str | None = None

    def upload(self, stop: threading.Event | None = None) -> int:
        """Push every complete file now in the spool; return how many were pushed.

        Stops early (without error) once ``stop`` is set; raises the first failure, leaving that
        file and every later one in the spool.
        """
        entries = {e.name for e in os.scandir(self.spool_dir) if e.is_file(follow_symlinks=False)}
        newest = max((k for k in map(_segment_key, entries) if k is not None), default=None)
        pushed = 0
        for name in sorted(n for n in entries if classify(n) in ("segment", "history")):
            if stop is not None and stop.is_set():
                break
            path = self.spool_dir / name
            marker = self.spool_dir / (name + ARCHIVED_MARK)
            if marker.name in entries:
                if name != newest:  # a newer segment exists now: no longer needed to resume
                    path.unlink(missing_ok=True)
                    marker.unlink(missing_ok=True)
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # archived and removed by a concurrent upload
            self._pushing = name
            status = self.archive.push(name, data)
            self._pushing = None
            pushed += 1
            self.archived += 1
            event = "wal_segment_archived" if classify(name) == "segment" else "wal_history_archived"
            log.info(event, wal=name, bytes=len(data), status=status)
            if name == newest:
                marker.touch()  # archived; kept until a newer segment appears
            else:
                path.unlink(missing_ok=True)
        for name in entries:  # markers whose segment is gone
            if name.endswith(ARCHIVED_MARK) and name[: -len(ARCHIVED_MARK)] not in entries:
                (self.spool_dir / name).unlink(missing_ok=True)
        return pushed

    def upload_retrying(self, stop: threading.Event | None = None) -> int:
        """``upload``, but a failure is logged and retried on a later call, after a backoff."""
        if not self.pacer.ready():
            return 0
        self._pushing = None
        try:
            pushed = self.upload(stop)
        except (BackupdError, OSError) as exc:
            message = exc.message if isinstance(exc, BackupdError) else str(exc)
            log.error(
                "wal_upload_failed",
                wal=self._pushing,
                error=message,
                error_type=type(exc).__name__,
                retry_in=self.pacer.failed(),
            )
            return 0
        self.pacer.succeeded()
        return pushed


def upload_spool(archive: WalArchive, spool_dir: Path) -> int:
    """Push every complete file in ``spool_dir`` and return the count; raises the first failure.

    For callers that do not run ``run_wal_stream`` themselves (the daemon's periodic WAL job).
    Safe while ``run_wal_stream`` runs on the same spool: a file the other side archived and
    removed first is skipped, and one pushed by both is a ``duplicate`` push.
    """
    if not spool_dir.is_dir():
        return 0
    return SpoolUploader(archive, spool_dir).upload()


def run_wal_stream(
    archive: WalArchive,
    receiver: WalReceiver,
    *,
    slot: str,
    stop: threading.Event,
    poll_interval: float = 0.5,
    restart_backoff: Backoff = RESTART_BACKOFF,
) -> None:
    """Stream and archive WAL until ``stop`` is set; see the module docstring.

    ``receiver``: the ``pg_receivewal`` to supervise (``source.receivewal.PgReceiveWal``, not
    entered yet); its ``spool_dir`` is the spool. ``slot`` is its replication slot (for logs).

    ``restart_backoff`` paces both the restarts of ``pg_receivewal`` and the retries of failed
    uploads (each with its own :class:`~contentflow_backupd.backoff.Pacer`).

    Returns after ``pg_receivewal`` has stopped and every file it completed is durably stored;
    raises when that final upload fails (the files stay in the spool for the next run).
    ``LockedError`` when another ``wal-stream`` uses the same spool directory.
    """
    spool = prepare_spool(receiver.spool_dir)
    uploader = SpoolUploader(archive, spool, restart_backoff)
    with exclusive(spool.parent, f"{spool.name}.wal-stream", what=f"wal-stream into {spool}"):
        log.info("wal_stream_started", slot=slot, spool=str(spool), server=receiver.describe())
        with receiver:
            _supervise(receiver, uploader, stop, poll_interval, restart_backoff)
        final = uploader.upload()
        log.info("wal_stream_stopped", archived=uploader.archived, archived_at_stop=final)


def _supervise(
    receiver: WalReceiver,
    uploader: SpoolUploader,
    stop: threading.Event,
    poll_interval: float,
    backoff: Backoff,
) -> None:
    restarts = Pacer(backoff)
    while not stop.is_set():
        exited = receiver.poll()
        if exited is not None and not stop.is_set():
            if exited.ran_for >= backoff.cap:
                restarts.succeeded()  # it ran fine for a while: this is a fresh failure
            log.warning(
                "pg_receivewal_exited",
                returncode=exited.returncode,
                stderr=exited.stderr,
                ran_for=round(exited.ran_for, 1),
                restart_in=restarts.failed(),
            )
        if not receiver.running and restarts.ready() and not stop.is_set():
            try:
                receiver.start()
            except BackupdError as exc:
                log.error("pg_receivewal_start_failed", error=exc.message, restart_in=restarts.failed())
        uploader.upload_retrying(stop)
        stop.wait(poll_interval)
