"""``wal-stream``: archive WAL continuously through ``pg_receivewal``, guarded by a replication slot.

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
  one appears: ``pg_receivewal`` streams without a slot, finds where to resume only in its
  directory, and would otherwise start at the server's current position and leave a gap;
- the replication slot is a guard, not the stream's: after each batch of pushes the slot is
  advanced (``WalReceiver.confirm_archived``) to the end of the newest segment durably stored,
  never further and never back, so the server keeps every segment a spool holds but the
  repository does not;
- an empty spool (a new owner of the cluster on another host, or a spool lost with its host) is
  seeded before ``pg_receivewal`` starts with the repository's newest segment, marked archived,
  so that it resumes right after it, from WAL the guard slot kept: no gap whichever daemon
  streamed before. When the repository cannot be read, ``pg_receivewal`` is not started (retried
  with the backoff): starting at the server's position could leave a gap;
- two streams of one cluster at once (a daemon cut off from its catalog keeps streaming while
  its successor starts) are harmless: pushes are create-only, an identical re-push is a
  ``duplicate``, and the slot only moves forward;
- ``pg_receivewal`` is restarted with exponential backoff after it exits; on ``stop`` it is
  stopped (it keeps its ``.partial`` file, from which the next start resumes), the files it
  completed are archived, and only then does the call return.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from contentflow_backupd.backoff import Backoff, Pacer
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.source.base import WalReceiver
from contentflow_backupd.wal import classify, format_lsn, parse_segment

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


def _segment_end(name: str, segment_size: int) -> int:
    """The LSN right after segment ``name``: where the WAL after it starts."""
    return parse_segment(name, segment_size).next().start_lsn(segment_size)


def seed_spool(archive: WalArchive, spool_dir: Path) -> str | None:
    """Put the repository's newest segment into an empty spool, marked archived; return its name.

    Does nothing (None) when the spool already holds a segment or a ``.partial`` file, which is
    where ``pg_receivewal`` resumes, or when the repository holds no segment (it then starts at
    the server's current position: nothing before it is archived anyway). The marker is written
    first and the segment by rename, so a crash leaves either nothing, a stray marker (removed by
    the next upload), or a marked segment; an unmarked one would only be re-pushed as a
    duplicate. Raises what reading the repository raises.
    """
    if any(_segment_key(e.name) for e in os.scandir(spool_dir) if e.is_file(follow_symlinks=False)):
        return None
    newest = max((n for n in archive.names() if classify(n) == "segment"), default=None)
    if newest is None:
        return None
    data = archive.fetch(newest)
    (spool_dir / (newest + ARCHIVED_MARK)).touch()
    tmp = spool_dir / f".{newest}.seed"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, spool_dir / newest)
    log.info("wal_spool_seeded", wal=newest, spool=str(spool_dir))
    return newest


def _segment_key(name: str) -> str | None:
    """The 24-digit segment part of a segment or ``.partial`` name; None for other files."""
    kind = classify(name)
    return name[:24] if kind in ("segment", "partial") else None


class SpoolUploader:
    """Pushes the complete files of a spool directory to the archive, oldest first.

    ``upload`` raises the first push failure; ``upload_retrying`` logs it instead and waits an
    exponentially growing time before the next attempt.

    ``stored_upto`` is the end of the newest segment it pushed or found marked archived (the WAL
    before it is all stored: files are pushed in order and the first failure stops the pass).
    With ``confirm`` (``WalReceiver.confirm_archived``), each pass that raised it hands it on, so
    the guard slot follows; a failure there is logged and retried after a backoff, never raised.
    """

    def __init__(
        self,
        archive: WalArchive,
        spool_dir: Path,
        backoff: Backoff = RESTART_BACKOFF,
        confirm: Callable[[int], int | None] | None = None,
    ) -> None:
        self.archive = archive
        self.spool_dir = spool_dir
        self.archived = 0
        self.pacer = Pacer(backoff)
        self.stored_upto: int | None = None
        self.confirmed_upto: int | None = None
        self._confirm = confirm
        self._confirm_pacer = Pacer(backoff)
        self._pushing: str | None = None

    def _stored(self, name: str, segment_size: int) -> None:
        if classify(name) != "segment":
            return
        end = _segment_end(name, segment_size)
        if self.stored_upto is None or end > self.stored_upto:
            self.stored_upto = end

    def confirm(self) -> None:
        """Advance the guard slot to ``stored_upto`` if it moved since the last confirmation."""
        upto = self.stored_upto
        if self._confirm is None or upto is None or (self.confirmed_upto or -1) >= upto:
            return
        if not self._confirm_pacer.ready():
            return
        try:
            guard = self._confirm(upto)
        except BackupdError as exc:
            log.warning(
                "wal_guard_advance_failed",
                lsn=format_lsn(upto),
                error=exc.message,
                retry_in=self._confirm_pacer.failed(),
            )
            return
        self._confirm_pacer.succeeded()
        self.confirmed_upto = upto
        if guard is None:
            # dropped, or invalidated by max_slot_wal_keep_size: streaming goes on, but the server
            # no longer keeps WAL that is not archived yet for a successor
            log.warning("wal_guard_lost", lsn=format_lsn(upto))
        else:
            log.info("wal_guard_advanced", lsn=format_lsn(guard))

    def upload(self, stop: threading.Event | None = None) -> int:
        """Push every complete file now in the spool; return how many were pushed.

        Stops early (without error) once ``stop`` is set; raises the first failure, leaving that
        file and every later one in the spool. Either way, then advances the guard slot to what
        is stored (``confirm``).
        """
        try:
            return self._upload(stop)
        finally:
            self.confirm()

    def _upload(self, stop: threading.Event | None) -> int:
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
                else:
                    with contextlib.suppress(FileNotFoundError):
                        self._stored(name, path.stat().st_size)
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # archived and removed by a concurrent upload
            self._pushing = name
            status = self.archive.push(name, data)
            self._pushing = None
            self._stored(name, len(data))
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
    entered yet); its ``spool_dir`` is the spool. ``slot`` is its guard slot (for logs).

    ``restart_backoff`` paces both the restarts of ``pg_receivewal`` and the retries of failed
    uploads (each with its own :class:`~contentflow_backupd.backoff.Pacer`).

    Returns after ``pg_receivewal`` has stopped and every file it completed is durably stored;
    raises when that final upload fails (the files stay in the spool for the next run).
    ``LockedError`` when another ``wal-stream`` uses the same spool directory.
    """
    spool = prepare_spool(receiver.spool_dir)
    uploader = SpoolUploader(archive, spool, restart_backoff, confirm=receiver.confirm_archived)
    with exclusive(spool.parent, f"{spool.name}.wal-stream", what=f"wal-stream into {spool}"):
        log.info("wal_stream_started", slot=slot, spool=str(spool), server=receiver.describe())
        with receiver:
            _supervise(archive, receiver, uploader, stop, poll_interval, restart_backoff)
        final = uploader.upload()
        log.info("wal_stream_stopped", archived=uploader.archived, archived_at_stop=final)


def _supervise(
    archive: WalArchive,
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
                seed_spool(archive, uploader.spool_dir)
                receiver.start()
            except (BackupdError, OSError) as exc:
                message = exc.message if isinstance(exc, BackupdError) else str(exc)
                log.error("pg_receivewal_start_failed", error=message, restart_in=restarts.failed())
        uploader.upload_retrying(stop)
        stop.wait(poll_interval)
