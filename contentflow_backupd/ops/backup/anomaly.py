"""Size anomaly: is a backup's size far from the sizes of the backups before it? (pure)

After each backup the daemon compares its ``source_bytes`` with the median of the last successful
backups of the same kind (``AnomalySettings.window`` of them). A size outside ``[low, high]`` times
that median is a *warning* (logged, counted, sent to the webhook), never a failure: a table that
was truncated by mistake or a runaway log table shows up here first.

Rules of :func:`check_size`:

- fewer than ``min_history`` earlier sizes: no judgement (``anomaly`` False, ``median`` None);
- ``ratio = current / median``; ``low <= ratio <= high`` is normal, the band's edges included;
- a zero median (the earlier backups were empty): a current size of 0 is normal (ratio 1.0),
  any other size is an anomaly with ``ratio`` None (it would be infinite).

The median is order-independent, so ``history`` may be given oldest-first or newest-first; the
caller chooses the window.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SizeVerdict", "check_size", "format_bytes"]


@dataclass(frozen=True)
class SizeVerdict:
    """The outcome of :func:`check_size`. ``reason`` is a human one-liner for logs and webhooks."""

    anomaly: bool
    median: float | None
    ratio: float | None
    reason: str


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: sizes in binary units for messages."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def check_size(
    current: int, history: Sequence[int], *, low: float, high: float, min_history: int
) -> SizeVerdict:
    """Judge ``current`` bytes against the median of ``history`` (earlier sizes of the same kind).

    Raises ``ValueError`` for a negative size or a band that is not ``0 < low <= high``, or
    ``min_history < 1``: these are programming errors, settings are validated earlier.
    """
    if current < 0 or any(h < 0 for h in history):
        raise ValueError("sizes must not be negative")
    if not 0 < low <= high:
        raise ValueError(f"invalid band: low={low}, high={high} (need 0 < low <= high)")
    if min_history < 1:
        raise ValueError(f"min_history must be at least 1, got {min_history}")

    if len(history) < min_history:
        return SizeVerdict(
            anomaly=False,
            median=None,
            ratio=None,
            reason=f"not judged: {len(history)} earlier backup(s), {min_history} needed",
        )
    median = float(statistics.median(history))
    if median == 0:
        if current == 0:
            return SizeVerdict(False, median, 1.0, "empty, like the earlier backups")
        return SizeVerdict(
            True, median, None, f"{format_bytes(current)} where the earlier backups were empty"
        )
    ratio = current / median
    versus = f"{format_bytes(current)} is {ratio:.2f}x the median {format_bytes(median)}"
    if ratio < low:
        return SizeVerdict(True, median, ratio, f"{versus} (below {low:g}x)")
    if ratio > high:
        return SizeVerdict(True, median, ratio, f"{versus} (above {high:g}x)")
    return SizeVerdict(False, median, ratio, f"{versus} (within {low:g}x to {high:g}x)")
