"""Progress of a running migration, logged every ``progress_interval`` (10 s by default).

``ProgressLogger`` is a background thread that the guard starts around COMMAND (a context
manager). Every interval it takes a ``source.activity.progress_snapshot`` of the database and logs
one structured line, ``migration_progress``, with the running statements, the lock waits (who waits
on whom), the locks stronger than ``ROW EXCLUSIVE`` held on relations, and the rows of
``pg_stat_progress_create_index`` / ``_cluster`` / ``_vacuum`` / ``_analyze``. It also keeps what it
saw (``summary()``): the dry run reports the locks taken and waited on from it.

Contract: nothing it does raises into the caller. A snapshot that fails logs a warning
(``migration_progress_failed``) and the next interval tries again. Leaving the block (``stop()``)
wakes the thread at once; it waits at most :data:`STOP_WAIT_SECONDS` for a snapshot in flight,
which then neither logs nor counts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from contentflow_backupd.errors import BackupdError
from contentflow_backupd.source.activity import LockWait, ProgressRow, ProgressSnapshot, progress_snapshot
from contentflow_backupd.source.conninfo import ConnInfo

STOP_WAIT_SECONDS = 5.0


@dataclass
class _SeenWait:
    pid: int
    locktype: str | None
    mode: str | None
    relation: str | None
    query: str | None
    blocked_by: dict[int, str | None] = field(default_factory=dict)
    """Blocking pid -> its query."""
    seen: int = 0
    max_waiting_seconds: float = 0.0


@dataclass
class _SeenLock:
    relation: str
    mode: str
    pids: set[int] = field(default_factory=set)
    seen: int = 0


class ProgressLogger:
    """Logs ``migration_progress`` every ``interval_seconds`` while running (see the module
    docstring); ``log`` is the caller's bound structlog logger (its context, such as a run id,
    is on every line). With ``pids``, only those sessions are watched."""

    def __init__(
        self,
        info: ConnInfo,
        interval_seconds: float,
        *,
        log: Any,
        pids: Sequence[int] | None = None,
    ) -> None:
        if not interval_seconds > 0:
            raise ValueError(f"interval_seconds must be greater than zero, not {interval_seconds!r}")
        self.info = info
        self.interval = float(interval_seconds)
        self.pids = None if pids is None else tuple(pids)
        self._log = log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._samples = 0
        self._failed = 0
        self._max_statements = 0
        self._waits: dict[tuple[Any, ...], _SeenWait] = {}
        self._locks: dict[tuple[str, str], _SeenLock] = {}
        self._progress: dict[tuple[str, str | None], list[str]] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (once; a second call does nothing)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="migration-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread: it wakes at once; a snapshot in flight is waited for at most
        :data:`STOP_WAIT_SECONDS` (the thread is a daemon: it never holds up the exit)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_WAIT_SECONDS)

    def __enter__(self) -> ProgressLogger:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> ProgressSnapshot | None:
        """Take one snapshot, record it and log it; None (and a warning) when it failed. Never
        raises. Called by the thread every interval."""
        try:
            snap = progress_snapshot(self.info, pids=self.pids)
        except Exception as exc:  # noqa: BLE001 - the thread must survive anything
            if not self._stop.is_set():
                with self._mutex:
                    self._failed += 1
                error = exc.message if isinstance(exc, BackupdError) else f"{type(exc).__name__}: {exc}"
                self._safe_log("warning", "migration_progress_failed", error=error)
            return None
        if self._stop.is_set():
            return None
        with self._mutex:
            self._record(snap)
            number = self._samples
        self._safe_log("info", "migration_progress", sample=number, **progress_fields(snap))
        return snap

    def _safe_log(self, level: str, event: str, **fields: Any) -> None:
        # A broken log sink must not end the thread, nor reach the migration.
        with contextlib.suppress(Exception):
            getattr(self._log, level)(event, **fields)

    def _record(self, snap: ProgressSnapshot) -> None:
        self._samples += 1
        self._max_statements = max(self._max_statements, len(snap.statements))
        for w in snap.lock_waits:
            key = (w.pid, w.locktype, w.mode, w.relation, w.query)
            seen = self._waits.setdefault(key, _SeenWait(w.pid, w.locktype, w.mode, w.relation, w.query))
            seen.seen += 1
            seen.max_waiting_seconds = max(seen.max_waiting_seconds, w.waiting_seconds or 0.0)
            seen.blocked_by.update({b.pid: b.query for b in w.blocked_by})
        for h in snap.locks_held:
            lock = self._locks.setdefault((h.relation, h.mode), _SeenLock(h.relation, h.mode))
            lock.pids.add(h.pid)
            lock.seen += 1
        for p in snap.progress:
            phases = self._progress.setdefault((p.kind, p.relation), [])
            if p.phase and p.phase not in phases:
                phases.append(p.phase)

    # -- what was seen ---------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What the samples saw so far (JSON values): ``samples``, ``failed_samples``,
        ``max_running_statements``, ``lock_waits`` (each wait once: waiter, lock, blockers and
        their queries, samples that saw it, longest wait), ``locks_held`` (relation, mode, pids)
        and ``progress`` (kind, relation, phases seen in order)."""
        with self._mutex:
            return {
                "samples": self._samples,
                "failed_samples": self._failed,
                "max_running_statements": self._max_statements,
                "lock_waits": [
                    {
                        "pid": w.pid,
                        "locktype": w.locktype,
                        "mode": w.mode,
                        "relation": w.relation,
                        "query": w.query,
                        "blocked_by": [{"pid": pid, "query": q} for pid, q in sorted(w.blocked_by.items())],
                        "seen": w.seen,
                        "max_waiting_seconds": round(w.max_waiting_seconds, 3),
                    }
                    for w in self._waits.values()
                ],
                "locks_held": [
                    {"relation": h.relation, "mode": h.mode, "pids": sorted(h.pids), "seen": h.seen}
                    for h in self._locks.values()
                ],
                "progress": [
                    {"kind": kind, "relation": relation, "phases": list(phases)}
                    for (kind, relation), phases in self._progress.items()
                ],
            }


# -- the log line (pure) ---------------------------------------------------------------------
def progress_fields(snap: ProgressSnapshot) -> dict[str, Any]:
    """The fields of one ``migration_progress`` line: compact JSON values."""
    return {
        "statements": [
            {
                "pid": s.pid,
                "state": s.state,
                "seconds": _round(s.duration_seconds),
                "wait": f"{s.wait_event_type}:{s.wait_event}" if s.wait_event_type else None,
                "query": s.query,
            }
            for s in snap.statements
        ],
        "lock_waits": [_wait(w) for w in snap.lock_waits],
        "locks_held": [{"pid": h.pid, "relation": h.relation, "mode": h.mode} for h in snap.locks_held],
        "progress": [_progress(p) for p in snap.progress],
    }


def _wait(w: LockWait) -> dict[str, Any]:
    return {
        "pid": w.pid,
        "lock": " ".join(x for x in (w.mode, w.locktype, w.relation) if x),
        "seconds": _round(w.waiting_seconds),
        "query": w.query,
        "blocked_by": [{"pid": b.pid, "state": b.state, "query": b.query} for b in w.blocked_by],
    }


def _progress(p: ProgressRow) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": p.kind, "pid": p.pid, "relation": p.relation, "phase": p.phase}
    if p.command and p.command.upper() != p.kind.replace("_", " ").upper():
        out["command"] = p.command
    if p.blocks_total:
        out["blocks"] = f"{p.blocks_done or 0}/{p.blocks_total}"
    if p.tuples_total:
        out["tuples"] = f"{p.tuples_done or 0}/{p.tuples_total}"
    elif p.tuples_done:
        out["tuples"] = str(p.tuples_done)
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
