"""The daemon's WAL duties in physical mode: keep WAL flowing so the RPO holds.

- ``WalWatcher.tick`` is the ``wal`` job: reads the server's WAL position and ``pg_stat_archiver``,
  finds the newest archived segment of the current timeline in the repository, forces a WAL switch
  when that segment is older than the WAL schedule period and WAL was written since (an idle
  database would otherwise sit on a half-filled segment for hours), uploads anything left in the
  local spool when ``wal-stream`` is not running, and updates the WAL metrics.
  ``backupd_wal_archived_segments_total`` is not counted here: it is read from shared sources of
  truth at each tick, the segments of the cluster in the repository plus those retention deleted
  (the catalog), so pushes by other processes (``archive_command``'s ``wal-push``, another
  daemon) count as well.
- ``StreamSupervisor`` runs ``wal-stream`` (``ops.wal.stream.run_wal_stream``: ``pg_receivewal``
  guarded by a replication slot that moves only past archived WAL, each completed segment
  uploaded, an empty spool seeded from the repository) on a thread, restarting it with backoff
  when it ends with an error, until the daemon stops. So a daemon restarted after ``kill -9``, or
  another daemon taking the cluster over with an empty spool, resumes with no gap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd.backoff import Backoff, Pacer
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.observability.metrics import ClusterMetrics
from contentflow_backupd.ops.health.evaluate import WalState
from contentflow_backupd.ops.wal.stream import run_wal_stream, upload_spool
from contentflow_backupd.procs import owned_by
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.receivewal import PgReceiveWal
from contentflow_backupd.wal import classify, parse_segment, segment_of_lsn, written_after

log = structlog.get_logger(__name__)


@dataclass
class WalSnapshot:
    """What the last ``tick`` saw (also what /healthz reports)."""

    at: datetime
    last_archived_at: datetime | None
    newest_segment: str | None
    pending_segments: int
    written_since: bool
    archiver_failed_count: int
    archiver_last_failed_at: datetime | None
    switched: bool


class WalWatcher:
    def __init__(
        self,
        archive: WalArchive,
        info: ConnInfo,
        metrics: ClusterMetrics,
        *,
        spool_dir: Path,
        period_s: float,
        method: str,
        deleted_segments: Callable[[], int] | None = None,
    ) -> None:
        self.archive = archive
        self.deleted_segments = deleted_segments
        """How many WAL segments of the cluster retention deleted (the catalog's records)."""
        self.info = info
        self.metrics = metrics
        self.spool_dir = spool_dir
        self.period_s = period_s
        self.method = method
        self.stream: StreamSupervisor | None = None
        self.last: WalSnapshot | None = None
        self._failed_count: int | None = None

    def tick(self, run_id: int | None = None) -> dict[str, Any]:
        from contentflow_backupd.source.postgres import switch_wal, wal_status

        status = wal_status(self.info)
        uploaded = 0
        if self.stream is None or not self.stream.alive():
            uploaded = upload_spool(self.archive, self.spool_dir)
        seg_size = status.wal_segment_size
        newest_name, newest_at, stored = self._newest(status.timeline)
        current = segment_of_lsn(status.current_lsn, status.timeline, seg_size)
        if newest_name is not None:
            newest = parse_segment(newest_name, seg_size)
            pending = max(0, current.number - newest.number - 1)
            written_since = written_after(status.current_lsn, newest, seg_size)
        else:
            pending, written_since = 0, True
        age = (_now() - newest_at).total_seconds() if newest_at is not None else None
        switched = False
        if written_since and (age is None or age > self.period_s):
            switch_wal(self.info)
            switched = True
            log.info("wal_switch_forced", newest_archived=newest_name, age_seconds=age)
        # Segments that ever reached the repository: those stored now plus those retention
        # deleted (however they got there); archiver failures since the last tick.
        self.update_archived_total(stored)
        self.metrics.set_wal_last_archived(newest_at)
        if self._failed_count is not None and status.failed_count > self._failed_count:
            self.metrics.wal_archive_failures(status.failed_count - self._failed_count)
        self._failed_count = status.failed_count
        self.metrics.set_wal_pending(pending)
        self.last = WalSnapshot(
            at=_now(),
            last_archived_at=newest_at,
            newest_segment=newest_name,
            pending_segments=pending,
            written_since=written_since,
            archiver_failed_count=status.failed_count,
            archiver_last_failed_at=status.last_failed_time,
            switched=switched,
        )
        summary = (
            f"newest archived {newest_name or 'none'}, {pending} pending, "
            f"{'switched WAL, ' if switched else ''}{uploaded} uploaded from the spool"
        )
        log.info("wal_checked", newest=newest_name, pending=pending, switched=switched, uploaded=uploaded)
        return {"summary": summary}

    def guard(self, state: WalState | None) -> bool:
        """Between WAL job runs (every health probe): switch WAL as soon as the newest archived
        segment is older than the period with WAL waiting, so the archive's age stays near the
        period instead of up to twice it. Returns whether it switched; never raises."""
        from contentflow_backupd.source.postgres import switch_wal

        if state is None or not state.pending or state.last_archived_at is None:
            return False
        age = (_now() - state.last_archived_at).total_seconds()
        if age <= self.period_s:
            return False
        try:
            switch_wal(self.info)
        except BackupdError as exc:
            log.warning("wal_switch_failed", error=exc.message)
            return False
        log.info("wal_switch_forced", newest_archived_at=state.last_archived_at.isoformat(), age_seconds=age)
        return True

    def update_archived_total(self, stored: int | None = None) -> int:
        """Raise ``backupd_wal_archived_segments_total`` to the segments of the cluster in the
        repository (``stored``: already counted by the caller, else one LIST) plus those
        retention deleted. Returns that figure; never lowers the counter."""
        if stored is None:
            stored = sum(
                1
                for info in self.archive.repo.storage.list(self.archive.prefix())
                if classify(info.key.rsplit("/", 1)[-1]) == "segment"
            )
        total = stored + (self.deleted_segments() if self.deleted_segments is not None else 0)
        self.metrics.set_wal_archived_total(total)
        return total

    def _newest(self, timeline: int) -> tuple[str | None, datetime | None, int]:
        """The newest segment of ``timeline`` and its time, and how many segments of every
        timeline the repository holds (one LIST of the cluster's WAL)."""
        stored = 0
        newest: str | None = None
        newest_at: datetime | None = None
        own = self.archive.prefix(timeline)
        for info in self.archive.repo.storage.list(self.archive.prefix()):
            name = info.key.rsplit("/", 1)[-1]
            if classify(name) != "segment":
                continue
            stored += 1
            if info.key.startswith(own) and (newest is None or name > newest):
                newest, newest_at = name, info.modified
        return newest, newest_at, stored


SUPERVISOR_BACKOFF = Backoff(first=1, cap=60)
"""Restarts of a failed ``wal-stream``: 1 s, doubling up to 60 s; a run that returned starts over."""


STREAM_OWNER = "wal-stream"
"""The job part of the ``procs.owner`` of the supervised ``pg_receivewal``."""


class StreamSupervisor:
    """``run_wal_stream`` on a thread, restarted with backoff until ``stop()``."""

    def __init__(
        self,
        archive: WalArchive,
        info: ConnInfo,
        metrics: ClusterMetrics,
        *,
        spool_dir: Path,
        slot: str,
        bin_dir: Path | None,
        tmp_root: Path | None,
    ) -> None:
        self._args = (archive, info)
        self._kw: dict[str, Any] = {
            "spool_dir": spool_dir,
            "slot": slot,
            "bin_dir": bin_dir,
            "tmp_root": tmp_root,
        }
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wal-stream", daemon=True)
        self.restarts = 0

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        pacer = Pacer(SUPERVISOR_BACKOFF)
        while not self._stop.is_set():
            try:
                archive, info = self._args
                receiver = PgReceiveWal(info, **self._kw)  # a fresh one per run
                # pg_receivewal is started and stopped on this thread (its parent-death signal
                # follows this thread), owned by "<cluster>:wal-stream".
                with owned_by(f"{archive.cluster}:{STREAM_OWNER}"):
                    run_wal_stream(archive, receiver, slot=self._kw["slot"], stop=self._stop)
                pacer.succeeded()
                delay = SUPERVISOR_BACKOFF.first
            except BackupdError as exc:
                delay = pacer.failed()
                log.error("wal_stream_failed", error=exc.message, restart_in=delay)
                self.metrics.wal_archive_failures(1)
            except Exception as exc:  # noqa: BLE001 - the supervisor restarts it whatever happened
                delay = pacer.failed()
                log.error("wal_stream_crashed", error=f"{type(exc).__name__}: {exc}", restart_in=delay)
                self.metrics.wal_archive_failures(1)
            if self._stop.wait(delay):
                break
            self.restarts += 1


def _now() -> datetime:
    from contentflow_backupd.model import utcnow

    return utcnow()


def choose_wal_method(configured: str | None, watcher: WalWatcher) -> str:
    """``BACKUPD_WAL__METHOD`` (``configured``), else ``stream`` when the role may replicate
    (physical backups need that anyway), else ``archive_command``: asks the server once."""
    if configured is not None:
        return configured
    from contentflow_backupd.source.postgres import wal_status

    try:
        method = "stream" if wal_status(watcher.info).can_replicate else "archive_command"
    except BackupdError as exc:
        log.warning("wal_method_guessed", method="stream", reason=exc.message)
        method = "stream"
    watcher.method = method
    return method
