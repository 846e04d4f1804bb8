"""Progress of ``migrate batch``: a one-line bar on a terminal, a structured log line otherwise.

On a TTY the bar (rows covered / rows estimated at the start, rows changed, rate, ETA) is redrawn
in place on ``stream`` at most every :data:`REDRAW_SECONDS`. Elsewhere one ``batch_progress``
log line is written every ``interval`` seconds. Neither raises into the caller.
"""

from __future__ import annotations

import time
from typing import TextIO

import structlog

from contentflow_backupd.migrate.batch_rules import eta_seconds, progress_line
from contentflow_backupd.observability import progress

log = structlog.get_logger(__name__)

REDRAW_SECONDS = 0.2


class BatchProgress:
    def __init__(self, total: int, *, tty: bool, stream: TextIO, interval: float) -> None:
        self.total = total
        self.tty, self.stream, self.interval = tty, stream, interval
        self.covered = self.changed = self.batches = 0
        self.started = self._last_shown = time.monotonic()
        self._drawn = False
        progress.phase("batches", total=total, unit="rows")

    def update(self, *, batches: int, covered: int, changed: int, final: bool) -> None:
        """After each committed batch: ``covered`` rows more were scanned (all the rest when
        ``final``), ``changed`` rows changed so far by this run."""
        self.batches, self.changed = batches, changed
        before = self.covered
        self.covered = max(self.total, self.covered) if final else self.covered + covered
        progress.advance(self.covered - before)
        progress.note(f"batch {batches}, {changed} rows changed")
        self.total = max(self.total, self.covered)
        now = time.monotonic()
        if self.tty:
            if final or now - self._last_shown >= REDRAW_SECONDS:
                self._draw(now)
        elif now - self._last_shown >= self.interval:
            self._log(now)

    def _draw(self, now: float) -> None:
        line = progress_line(
            batches=self.batches,
            covered=self.covered,
            total=self.total,
            changed=self.changed,
            elapsed=now - self.started,
        )
        try:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
        except OSError:
            return
        self._drawn = True
        self._last_shown = now

    def _log(self, now: float) -> None:
        elapsed = now - self.started
        eta = eta_seconds(self.covered, self.total, elapsed)
        log.info(
            "batch_progress",
            batches=self.batches,
            rows_covered=self.covered,
            rows_estimated=self.total,
            rows_changed=self.changed,
            rate=round(self.covered / elapsed, 1) if elapsed > 0 else 0.0,
            eta_seconds=None if eta is None else round(eta, 1),
        )
        self._last_shown = now

    def close(self) -> None:
        if self.tty and self._drawn:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except OSError:
                pass
