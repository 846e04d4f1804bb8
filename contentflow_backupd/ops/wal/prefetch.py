"""Prefetch for ``restore_command``: fetch the segments after the one PostgreSQL asked for last, in
parallel, into the spool (``walspool.py``), so that ``wal fetch`` finds them there.

One helper per spool (a lock file), started by ``wal fetch`` when none runs. It:

- fetches, after the last segment named in ``want``, the next ``depth`` segments of the same timeline
  that are not in the spool, ``concurrency`` at once. Each is authenticated by
  ``WalArchive.fetch`` (AES-GCM of every chunk), then written with its identity and the
  helper's ``token``. A segment that is
  not in the archive stops the prefetch there (recovery is about to end or switch timelines); it is
  asked again after ``MISSING_RETRY_S`` (a standby's archive grows);
- keeps the spool bounded: only those ``depth`` segments (each one segment size) are kept, every
  other file (served, skipped, of another timeline) is removed;
- ends, and empties the spool, when no request came for ``idle_s`` (recovery ended), or when
  ``stop`` is set. A spool left by a crash is emptied by the next helper before it starts.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import structlog

from contentflow_backupd.errors import BackupdError, ObjectNotFound
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.wal import DEFAULT_SEGMENT_SIZE, Segment, classify, parse_segment
from contentflow_backupd.walspool import WalSpool

log = structlog.get_logger(__name__)

POLL_S = 0.05
MISSING_RETRY_S = 5.0


def next_segments(want: str, depth: int, segment_size: int) -> list[str]:
    """The ``depth`` segment names after ``want`` on its timeline (none when it is no segment)."""
    if classify(want) != "segment":
        return []
    seg = parse_segment(want, segment_size)
    return [Segment(seg.timeline, seg.number + i).name(segment_size) for i in range(1, depth + 1)]


def run_prefetch(
    archive: WalArchive,
    spool: WalSpool,
    *,
    token: str,
    depth: int,
    idle_s: float,
    concurrency: int = 4,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """Serve ``spool`` until idle; returns counts (``fetched``, ``missing``, ``failed``)."""
    stop = stop or threading.Event()
    identity = archive.identity()
    segment_size = identity.segment_size if identity is not None else DEFAULT_SEGMENT_SIZE
    counts = {"fetched": 0, "missing": 0, "failed": 0}
    running: dict[str, Future[bytes]] = {}
    missing: dict[str, float] = {}
    last_want: tuple[str, float] | None = None
    targets: list[str] = []
    last_request = time.monotonic()
    log.info("wal_prefetch_started", spool=spool.path, depth=depth)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="wal-prefetch") as pool:
        try:
            while not stop.is_set() and os.path.isdir(spool.path):
                now = time.monotonic()
                want = spool.wanted()
                if want is not None and want != last_want:
                    last_want, last_request = want, now
                    # A .history file asked for (at the start, at a timeline switch) keeps the
                    # segments of the last segment asked for.
                    targets = next_segments(want[0], depth, segment_size) or targets
                if now - last_request > idle_s:
                    break
                _reap(spool, token, running, missing, counts, now)
                keep = set(targets) | set(running)
                for name in spool.names() - keep:
                    spool.drop(name)
                present = spool.names()
                for name in targets:
                    if name in missing and now - missing[name] < MISSING_RETRY_S:
                        break  # not archived (yet): nothing after it either
                    if name in present or name in running or len(running) >= concurrency:
                        continue
                    spool.fetching(name, True)
                    running[name] = pool.submit(archive.fetch, name)
                stop.wait(POLL_S)
        finally:
            for future in running.values():
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            spool.clear()
    log.info("wal_prefetch_stopped", **counts)
    return counts


def _reap(
    spool: WalSpool,
    token: str,
    running: dict[str, Future[bytes]],
    missing: dict[str, float],
    counts: dict[str, int],
    now: float,
) -> None:
    for name, future in list(running.items()):
        if not future.done():
            continue
        del running[name]
        try:
            data = future.result()
        except ObjectNotFound:
            missing[name] = now
            counts["missing"] += 1
        except BackupdError as exc:
            missing[name] = now  # retried like a missing one; wal fetch fetches it itself meanwhile
            counts["failed"] += 1
            log.warning("wal_prefetch_failed", wal=name, error=exc.message)
        else:
            try:
                spool.put(name, data, token)
            except OSError as exc:  # the spool is gone or full: wal fetch fetches it itself
                counts["failed"] += 1
                log.warning("wal_prefetch_spool_failed", wal=name, error=str(exc))
            else:
                missing.pop(name, None)
                counts["fetched"] += 1
        finally:
            with contextlib.suppress(OSError):
                spool.fetching(name, False)
