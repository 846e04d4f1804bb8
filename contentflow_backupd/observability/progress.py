"""Progress of the running operation: one tracker per process, fed by the loops that move data.

The loops that move bytes or objects (``ChunkWriter.write_stream``, ``ChunkReader.iter_stream``,
verification, ``catalog rebuild``) call :func:`advance`; the operations name their phases with
:func:`phase` (``dumping``, ``uploading``, ``waiting for WAL``, ``restoring``, ``replaying``,
...), with a total when it is known. Both are cheap no-ops while nothing is tracked, so the code
that calls them needs no progress argument and ``wal-push`` pays nothing.

Where the numbers go is decided once per process (:func:`configure`):

- ``bar``: a live line on the terminal (stderr), drawn by tqdm (imported only then): phase,
  done of total, rate, elapsed and ETA. Log lines written meanwhile go above it
  (:class:`BarAwareStream`).
- ``log``: a ``progress`` log event every ``interval`` seconds with the same numbers (off a
  terminal, ``--no-progress``, ``--json``, the daemon).

The daemon reads :func:`snapshots` for its metrics and :func:`publish`-es them for ``status``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TextIO

from contentflow_backupd.procs import process_alive

Mode = Literal["bar", "log", "off"]

_lock = threading.RLock()
_mode: Mode = "off"
_interval = 10.0
_current: ContextVar[Tracker | None] = ContextVar("progress", default=None)
"""The tracker of this thread's operation: the daemon runs several jobs at once, each on its own
thread; the loops that report progress run on the operation's thread."""
_active: dict[int, Tracker] = {}
UNMEASURED = float("inf")
"""``quiet_s`` of a phase that reports no progress while it works (a child process that says
nothing until it ends: ``pg_verifybackup``, WAL replay, a drill's checks, ``pg_restore`` building
indexes): the stall watchdog leaves it to its own timeouts."""


class Tracker:
    """One operation (``backup``, ``restore``, a daemon job): its phase and counters.
    ``cluster``: the cluster a daemon job works on (None: a command's own operation)."""

    def __init__(self, operation: str, cluster: str | None = None) -> None:
        self.operation = operation
        self.cluster = cluster
        self.started = time.monotonic()
        self.phase = "starting"
        self.unit = "B"
        self.total: int | None = None
        self.done = 0
        self.phase_started = self.started
        self.note = ""
        self.quiet_until: float | None = None
        """The current phase may go this long (``time.monotonic()``) without advancing: a wait
        bounded by its own timeout, or a phase nothing can measure (``math.inf``). The daemon's
        stall watchdog (``daemon/stall.py``) does not count that time."""
        self._bar: Any = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- what the operation reports ---------------------------------------------------------------
    def set_phase(
        self, name: str, *, total: int | None = None, unit: str = "B", quiet_s: float | None = None
    ) -> None:
        with _lock:
            self.phase, self.total, self.unit, self.done, self.note = name, total, unit, 0, ""
            self.phase_started = time.monotonic()
            self.quiet_until = None if quiet_s is None else self.phase_started + quiet_s
            if self._bar is not None:
                self._bar.reset(total=total)
                self._bar.unit = unit
                self._bar.unit_scale = unit == "B"
                self._bar.unit_divisor = 1024 if unit == "B" else 1000
                self._bar.set_description_str(f"{self.operation}: {name}", refresh=True)

    def advance(self, n: int) -> None:
        with _lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)

    def set_note(self, text: str) -> None:
        with _lock:
            self.note = text
            if self._bar is not None:
                self._bar.set_postfix_str(text, refresh=False)

    # -- what the readers see -------------------------------------------------------------------
    def position(self) -> tuple[str, float, int, float | None]:
        """Where the operation is: (phase, when the phase started, done, ``quiet_until``). It
        changes whenever the operation moves (a new phase, or units done)."""
        with _lock:
            return self.phase, self.phase_started, self.done, self.quiet_until

    def snapshot(self) -> dict[str, Any]:
        """``operation``, ``phase``, ``done``, ``total`` (None: unknown), ``unit``, ``percent``,
        ``rate`` (units per second in this phase), ``elapsed_seconds`` (whole operation) and
        ``eta_seconds`` (None: unknown); ``cluster`` for a daemon job's, and ``note`` when
        there is one."""
        with _lock:
            now = time.monotonic()
            in_phase = max(now - self.phase_started, 1e-6)
            rate = self.done / in_phase
            eta = None
            if self.total is not None and rate > 0:
                eta = round(max(self.total - self.done, 0) / rate, 1)
            percent = None
            if self.total:
                percent = round(min(100.0, 100.0 * self.done / self.total), 1)
            return {
                "operation": self.operation,
                **({"cluster": self.cluster} if self.cluster is not None else {}),
                "phase": self.phase,
                "done": self.done,
                "total": self.total,
                "unit": self.unit,
                "percent": percent,
                "rate": round(rate, 1),
                "elapsed_seconds": round(now - self.started, 1),
                "eta_seconds": eta,
                **({"note": self.note} if self.note else {}),
            }

    # -- rendering ---------------------------------------------------------------------------------
    def _start(self, mode: Mode, interval: float) -> None:
        if mode == "bar":
            from tqdm import tqdm  # only on a terminal: wal-push and the daemon never import it

            self._bar = tqdm(
                total=None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"{self.operation}: {self.phase}",
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
                mininterval=0.2,
            )
        elif mode == "log":
            # In a copy of this thread's context: the events carry the operation's bound fields
            # (a daemon job's `job` and `trigger`).
            context = contextvars.copy_context()
            self._ticker = threading.Thread(
                target=context.run, args=(self._tick, interval), name="progress", daemon=True
            )
            self._ticker.start()

    def _tick(self, interval: float) -> None:
        import structlog

        log = structlog.get_logger("contentflow_backupd.progress")
        while not self._stop.wait(interval):
            log.info("progress", **self.snapshot())

    def _close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        with _lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


def configure(mode: Mode, interval: float = 10.0) -> None:
    """Once per process: ``bar`` (a terminal), ``log`` (``progress`` events every ``interval``
    seconds) or ``off``."""
    global _mode, _interval
    _mode, _interval = mode, max(interval, 0.1)


def mode() -> Mode:
    return _mode


@contextlib.contextmanager
def tracking(operation: str, *, cluster: str | None = None) -> Iterator[Tracker]:
    """Track ``operation`` (of ``cluster``, for a daemon job) on this thread while the block
    runs (a nested call reuses the outer tracker: a drill's restore is part of the drill)."""
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    tracker = Tracker(operation, cluster)
    token = _current.set(tracker)
    with _lock:
        _active[id(tracker)] = tracker
    tracker._start(_mode, _interval)
    try:
        yield tracker
    finally:
        tracker._close()
        with _lock:
            _active.pop(id(tracker), None)
        _current.reset(token)


def phase(name: str, *, total: int | None = None, unit: str = "B", quiet_s: float | None = None) -> None:
    """This thread's operation entered phase ``name`` (counters restart; ``total`` None: unknown).
    ``quiet_s``: the phase may go this long without advancing (a wait bounded by its own
    timeout; ``math.inf``: a phase that reports no progress), see ``Tracker.quiet_until``."""
    tracker = _current.get()
    if tracker is not None:
        tracker.set_phase(name, total=total, unit=unit, quiet_s=quiet_s)


def advance(n: int) -> None:
    """``n`` more units of the current phase are done."""
    tracker = _current.get()
    if tracker is not None:
        tracker.advance(n)


def note(text: str) -> None:
    """A short remark on the current phase (``batch 12, 6000 changed``), shown after the numbers."""
    tracker = _current.get()
    if tracker is not None:
        tracker.set_note(text)


def snapshots() -> list[dict[str, Any]]:
    """Every running operation's progress (see ``Tracker.snapshot``), oldest first."""
    with _lock:
        trackers = sorted(_active.values(), key=lambda t: t.started)
    return [t.snapshot() for t in trackers]


# -- the daemon's running jobs, for `status` (another process) ------------------------------------
PUBLISHED_MAX_AGE = 30.0
"""``status`` ignores a progress file older than this (a daemon that died without removing it)."""


def publish(path: Path) -> None:
    """Write the running operations to ``path`` (atomically), or remove it when none runs."""
    running = snapshots()
    if not running:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "running": running}))
    tmp.replace(path)


def read_published(path: Path) -> list[dict[str, Any]]:
    """What a daemon published with ``publish``: [] when nothing runs, the file is stale, or its
    daemon is gone."""
    try:
        if time.time() - path.stat().st_mtime > PUBLISHED_MAX_AGE:
            return []
        data = json.loads(path.read_text())
        if not process_alive(int(data["pid"])):
            return []
    except (OSError, ValueError, KeyError, TypeError):
        return []
    running = data.get("running")
    return list(running) if isinstance(running, list) else []


def describe(snap: dict[str, Any]) -> str:
    """One line for people: ``backup: dumping 1.2 GiB of 3.0 GiB (40%), 25.0 MiB/s, 48s elapsed,
    ETA 72s``."""
    unit = snap["unit"]

    def amount(n: float) -> str:
        if unit != "B":
            return f"{int(n)} {unit}"
        value = float(n)
        for u in ("B", "KiB", "MiB", "GiB", "TiB"):
            if value < 1024 or u == "TiB":
                return f"{value:.0f} {u}" if u == "B" else f"{value:.1f} {u}"
            value /= 1024
        return f"{n} B"

    text = f"{snap['operation']}: {snap['phase']} {amount(snap['done'])}"
    if snap["total"] is not None:
        text += f" of {amount(snap['total'])}"
        if snap["percent"] is not None:
            text += f" ({snap['percent']:.0f}%)"
    text += f", {amount(snap['rate'])}/s, {snap['elapsed_seconds']:.0f}s elapsed"
    if snap["eta_seconds"] is not None:
        text += f", ETA {snap['eta_seconds']:.0f}s"
    if snap.get("note"):
        text += f" ({snap['note']})"
    return text


class BarAwareStream:
    """stderr for log lines while a bar may be drawn: each whole line is written with the bar
    cleared first and drawn again after, so log lines and the live line never mix."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            whole, _, self._pending = self._pending.rpartition("\n")
            with _lock:
                bars = [t._bar for t in _active.values() if t._bar is not None]
            if bars:
                with _lock:
                    bars[0].clear()
                    self._stream.write(whole + "\n")
                    self._stream.flush()
                    bars[0].refresh()
            else:
                self._stream.write(whole + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()
