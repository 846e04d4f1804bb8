"""Which objects the rotating verification sweep reads in one run: a pure function.

The sweep walks every object of a cluster in key order, a share per run, continuing from a
cursor (the last key read) and wrapping around at the end, so that the whole repository is read
at least once per ``full_sweep`` while runs come every ``interval``. A *pass* is one walk from the
first key to the last; it starts when the cursor wraps.

The share of a run is the largest of:

- ``ceil(total * interval / full_sweep)`` (at least 1): the steady rate. With a stable set of
  objects, ``ceil(full_sweep / interval)`` consecutive runs read every object, from any state.
- ``ceil(remaining / runs_left)``: what is left of the current pass spread over the runs that are
  still due before its deadline (``pass start + full_sweep``). This keeps the promise when objects
  are added ahead of the cursor between runs (new backups' chunks land anywhere in key order): every
  object that exists when a pass starts is read before the pass's deadline, i.e. within
  ``ceil(full_sweep / interval)`` runs that come on schedule. A run that comes late reads more; the
  last run before the deadline reads the rest of the pass.

``runs_left`` counts the runs due before the deadline with a quarter-interval of slack, so a
scheduled run that starts a few seconds late does not push the end of a pass to one run more.

No I/O and no clock: the same inputs always give the same plan.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

SLACK = 0.25
"""Fraction of an interval by which a run may come late and still count as on schedule."""


@dataclass(frozen=True)
class SweepPlan:
    keys: tuple[str, ...]
    """Keys to read this run, in the order the sweep visits them (each at most once)."""
    share: int
    """How many keys the run was asked to read (``len(keys)`` is smaller only when the cluster
    holds fewer objects)."""
    cursor: str | None
    """The cursor to save after the run: the last key read, or None when the pass ended exactly
    at the last key (the next run starts at the first key)."""
    pass_started_at: datetime
    """Start of the pass the cursor is in after the run (``now`` when a pass began this run)."""
    passes_completed: int
    """1 when this run read the last key of a pass, else 0."""
    remaining: int
    """Keys of the current pass still ahead of the saved cursor."""
    total: int


def runs_left(pass_started_at: datetime, now: datetime, *, interval_s: float, full_sweep_s: float) -> int:
    """Runs still due before the deadline of a pass that started at ``pass_started_at``, this
    one included (at least 1)."""
    deadline = pass_started_at + timedelta(seconds=full_sweep_s)
    due = (deadline - now).total_seconds() / interval_s
    return max(1, math.ceil(due - SLACK))


def sweep_share(
    total: int,
    remaining: int,
    pass_started_at: datetime,
    now: datetime,
    *,
    interval_s: float,
    full_sweep_s: float,
) -> int:
    """Keys to read this run (see the module docstring); 0 only when ``total`` is 0."""
    if total <= 0:
        return 0
    if interval_s <= 0 or full_sweep_s <= 0:
        raise ValueError("interval and full sweep must be greater than zero")
    steady = math.ceil(total * interval_s / full_sweep_s)
    catch_up = math.ceil(
        remaining / runs_left(pass_started_at, now, interval_s=interval_s, full_sweep_s=full_sweep_s)
    )
    return max(1, steady, catch_up)


def plan_sweep(
    keys: Sequence[str],
    cursor: str | None,
    pass_started_at: datetime | None,
    now: datetime,
    *,
    interval_s: float,
    full_sweep_s: float,
    total: int | None = None,
) -> SweepPlan:
    """The keys of this run's share. ``keys``: the objects the sweep may read now, sorted and
    unique. ``cursor``/``pass_started_at``: the saved state (None, None: a first run). ``total``:
    the object count the steady rate is based on (default ``len(keys)``; the caller may pass a
    larger count when it leaves out keys it reads anyway)."""
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise ValueError("keys must be sorted and unique")
    n = len(keys)
    if cursor is None or pass_started_at is None:
        cursor, start, started = None, 0, now
    else:
        start, started = bisect.bisect_right(keys, cursor), pass_started_at
    remaining = n - start
    share = sweep_share(
        max(n, total or 0), remaining, started, now, interval_s=interval_s, full_sweep_s=full_sweep_s
    )
    if share <= remaining - 1 or (share == remaining and remaining == 0):
        # The pass goes on (or the cluster is empty).
        taken = tuple(keys[start : start + share])
        new_cursor = taken[-1] if taken else cursor
        return SweepPlan(taken, share, new_cursor, started, 0, remaining - len(taken), n)
    # The pass ends this run; carry on from the first key with what is left of the share, but
    # never reading a key twice in one run.
    extra = min(share - remaining, start)
    taken = tuple(keys[start:]) + tuple(keys[:extra])
    new_cursor = keys[extra - 1] if extra else None
    return SweepPlan(taken, share, new_cursor, now, 1, n - extra, n)


def estimated_pass_end(plan: SweepPlan, now: datetime, *, interval_s: float) -> datetime:
    """When the current pass should end at the current share, runs coming every ``interval_s``."""
    share = max(plan.share, 1)
    return now + timedelta(seconds=math.ceil(plan.remaining / share) * interval_s)
