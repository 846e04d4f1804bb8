"""Prefetch for ``restore_command``: fetch the segments after the one PostgreSQL asked for last, in
parallel, into the spool (``walspool.py``), so that ``wal fetch`` finds them there.

One helper per spool (a lock file), started by ``wal fetch`` when none runs. It:

- fetches, after the last segment named in ``want``, the next ``depth`` segments of the same timeline
  that are not in the spool, ``concurrency`` at once. Each is authenticated by
  ``WalArchive.fetch`` (AES-GCM of every chunk), then written with its identity and the
  helper's ``token``. A segment that is
  not in the archive stops the prefetch there (recovery is about to end or switch timelines); it is
  asked again after ``MISSING_RETRY_S`` (a standby's archive grows);
- answers requests: when ``wal fetch`` did not find the file PostgreSQL asks for in the spool, it
  writes the name with a nonce into ``want`` and waits; the helper fetches that file (a segment,
  a history file...) at once, ignoring the retry delay of a missing one, and either puts it in
  the spool or answers ``missing``/``failed`` for that nonce. Only a check that started after the
  request was read answers it (a prefetch of the same name started earlier is checked again), so
  the answer is as fresh as the full command's would be;
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
from dataclasses import dataclass

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
    started: dict[str, float] = {}
    missing: dict[str, float] = {}
    last_want: tuple[str, str, float] | None = None
    request: _Request | None = None
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
                    if want[1] and (request is None or request.nonce != want[1]):
                        # Seen from now on, after the read that found it: a check started
                        # earlier does not answer it.
                        request = _Request(want[0], want[1], time.monotonic())
                if now - last_request > idle_s:
                    break
                _reap(spool, token, running, started, missing, counts, request)
                keep = set(targets) | set(running) | ({request.name} if request else set())
                for name in spool.names() - keep:
                    spool.drop(name)
                present = spool.names()
                if request is not None and not request.answered:
                    if request.name in present:
                        request.answered = True  # wal fetch serves it
                    elif request.name not in running:
                        spool.fetching(request.name, True)
                        started[request.name] = time.monotonic()
                        running[request.name] = pool.submit(archive.fetch, request.name)
                for name in targets:
                    if name in missing and now - missing[name] < MISSING_RETRY_S:
                        break  # not archived (yet): nothing after it either
                    if name in present or name in running or len(running) >= concurrency:
                        continue
                    spool.fetching(name, True)
                    started[name] = time.monotonic()
                    running[name] = pool.submit(archive.fetch, name)
                stop.wait(POLL_S)
        finally:
            for future in running.values():
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            spool.clear()
    log.info("wal_prefetch_stopped", **counts)
    return counts


@dataclass
class _Request:
    """A ``wal fetch`` waiting for the answer about ``name`` (its ``nonce``), read at ``seen``."""

    name: str
    nonce: str
    seen: float
    answered: bool = False

    def fresh(self, name: str, started: float) -> bool:
        """Whether a check of ``name`` that started at ``started`` answers this request."""
        return not self.answered and name == self.name and started >= self.seen


def _reap(
    spool: WalSpool,
    token: str,
    running: dict[str, Future[bytes]],
    started: dict[str, float],
    missing: dict[str, float],
    counts: dict[str, int],
    request: _Request | None,
) -> None:
    for name, future in list(running.items()):
        if not future.done():
            continue
        del running[name]
        began = started.pop(name)
        answers = request is not None and request.fresh(name, began)
        try:
            data = future.result()
        except ObjectNotFound:
            missing[name] = began
            counts["missing"] += 1
            if answers and request is not None:
                spool.answer(name, token, request.nonce, "missing")
                request.answered = True
                log.info("wal_prefetch_answered", wal=name, answer="not_archived")
        except BackupdError as exc:
            missing[name] = began  # retried like a missing one; wal fetch fetches it itself meanwhile
            counts["failed"] += 1
            log.warning("wal_prefetch_failed", wal=name, error=exc.message)
            if answers and request is not None:
                spool.answer(name, token, request.nonce, "failed")
                request.answered = True
                log.info("wal_prefetch_answered", wal=name, answer="failed")
        else:
            try:
                spool.put(name, data, token)
            except OSError as exc:  # the spool is gone or full: wal fetch fetches it itself
                counts["failed"] += 1
                log.warning("wal_prefetch_spool_failed", wal=name, error=str(exc))
            else:
                missing.pop(name, None)
                counts["fetched"] += 1
                if request is not None and name == request.name and not request.answered:
                    request.answered = True  # in the spool: wal fetch serves it
                    log.info("wal_prefetch_answered", wal=name, answer="fetched")
        finally:
            with contextlib.suppress(OSError):
                spool.fetching(name, False)
