"""The rotating verification sweep's plan (pure): tables and properties.

The promise (docs/verification.md): every object is read at least once per ``full_sweep`` while
runs come every ``interval``, i.e. within ``ceil(full_sweep / interval)`` runs; also when objects
are added or removed between runs.
"""

from __future__ import annotations

import math
import string
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from contentflow_backupd.ops.verify.sweep_plan import (
    SweepPlan,
    estimated_pass_end,
    plan_sweep,
    runs_left,
    sweep_share,
)

DAY = 86400.0
T0 = datetime(2026, 3, 1, 5, 0, tzinfo=UTC)
KEYS = tuple(string.ascii_lowercase[:10])  # a .. j


def ago(days: float) -> datetime:
    return T0 - timedelta(days=days)


@pytest.mark.parametrize(
    ("total", "remaining", "started", "interval", "full", "want"),
    [
        (700, 700, T0, DAY, 7 * DAY, 100),  # a fresh pass: a seventh a day
        (700, 0, T0, DAY, 7 * DAY, 100),  # steady rate even with nothing left in the pass
        (10, 10, T0, DAY, 7 * DAY, 2),  # ceil(10 / 7)
        (1, 1, T0, DAY, 7 * DAY, 1),  # never less than one object
        (0, 0, T0, DAY, 7 * DAY, 0),  # nothing to read
        (100, 50, ago(6), DAY, 7 * DAY, 50),  # last run before the deadline: the rest of the pass
        (100, 50, ago(6) + timedelta(minutes=2), DAY, 7 * DAY, 50),  # that run a bit late
        (100, 50, ago(6) - timedelta(minutes=2), DAY, 7 * DAY, 50),  # ... or a bit early
        (100, 60, ago(5), DAY, 7 * DAY, 30),  # two runs left for 60 objects
        (100, 90, ago(30), DAY, 7 * DAY, 90),  # overdue (the daemon was down): catch up at once
        (10, 10, T0, 7 * DAY, DAY, 70),  # runs rarer than the sweep period: everything each run
        (1000, 1000, T0, 3600, 7 * DAY, 6),  # hourly runs: ceil(1000 / 168)
        (100, 100, T0, 2 * DAY, 7 * DAY, 29),  # every other day: ceil(100 * 2 / 7)
    ],
)
def test_share_table(
    total: int, remaining: int, started: datetime, interval: float, full: float, want: int
) -> None:
    assert sweep_share(total, remaining, started, T0, interval_s=interval, full_sweep_s=full) == want


@pytest.mark.parametrize(
    ("started", "interval", "full", "want"),
    [
        (T0, DAY, 7 * DAY, 7),
        (ago(1), DAY, 7 * DAY, 6),
        (ago(6), DAY, 7 * DAY, 1),
        (ago(6) + timedelta(hours=5), DAY, 7 * DAY, 1),  # the run came 5 h early: still the last
        (ago(8), DAY, 7 * DAY, 1),
        (T0, 2 * DAY, 7 * DAY, 4),  # runs at days 0, 2, 4, 6
        (ago(6), 2 * DAY, 7 * DAY, 1),
    ],
)
def test_runs_left_table(started: datetime, interval: float, full: float, want: int) -> None:
    assert runs_left(started, T0, interval_s=interval, full_sweep_s=full) == want


def plan(keys: tuple[str, ...], cursor: str | None, share: int, started: datetime | None = T0) -> SweepPlan:
    """A plan whose share is exactly ``share`` (steady rate ``share`` of ``len(keys)``)."""
    return plan_sweep(
        keys, cursor, started, T0, interval_s=DAY, full_sweep_s=DAY * len(keys) / share, total=len(keys)
    )


def test_plan_table() -> None:
    p = plan(KEYS, None, 2)
    assert (p.keys, p.cursor, p.passes_completed, p.remaining) == (("a", "b"), "b", 0, 8)
    p = plan(KEYS, "c", 2)
    assert (p.keys, p.cursor, p.passes_completed, p.remaining) == (("d", "e"), "e", 0, 5)
    # A cursor between keys (its object was deleted) continues with the next key.
    p = plan(KEYS, "cc", 2)
    assert p.keys == ("d", "e")
    # Wrap around: the end of the pass, then the start of the next one.
    p = plan(KEYS, "h", 5)
    assert (p.keys, p.cursor, p.passes_completed, p.pass_started_at) == (
        ("i", "j", "a", "b", "c"),
        "c",
        1,
        T0,
    )
    # A pass that ends exactly at the last key: the next run starts at the first one.
    p = plan(KEYS, "h", 2)
    assert (p.keys, p.cursor, p.passes_completed, p.remaining) == (("i", "j"), None, 1, 10)
    # A cursor past the last key (objects deleted): start again.
    p = plan(KEYS, "z", 2)
    assert (p.keys, p.cursor, p.passes_completed) == (("a", "b"), "b", 1)
    # A share larger than the repository reads each object once.
    p = plan_sweep(KEYS, "e", T0, T0, interval_s=7 * DAY, full_sweep_s=DAY)
    assert p.keys == ("f", "g", "h", "i", "j", "a", "b", "c", "d", "e") and p.cursor == "e"
    # An empty cluster: nothing to read, state unchanged.
    p = plan_sweep((), "e", ago(1), T0, interval_s=DAY, full_sweep_s=7 * DAY)
    assert (p.keys, p.cursor, p.share, p.pass_started_at) == ((), "e", 0, ago(1))


def test_the_pass_start_is_kept_while_the_pass_goes_on_and_reset_by_a_cursor_of_none() -> None:
    assert plan(KEYS, "c", 2, ago(3)).pass_started_at == ago(3)
    assert plan(KEYS, None, 2, ago(3)).pass_started_at == T0  # no cursor: a new pass starts now


def test_keys_must_be_sorted_and_unique() -> None:
    with pytest.raises(ValueError, match="sorted"):
        plan_sweep(("b", "a"), None, None, T0, interval_s=DAY, full_sweep_s=7 * DAY)
    with pytest.raises(ValueError, match="sorted"):
        plan_sweep(("a", "a"), None, None, T0, interval_s=DAY, full_sweep_s=7 * DAY)


def test_estimated_pass_end() -> None:
    p = plan(KEYS, None, 3)  # 7 remaining at 3 a run: 3 more runs
    assert estimated_pass_end(p, T0, interval_s=DAY) == T0 + timedelta(days=3)


# -- properties ----------------------------------------------------------------------------
names = st.integers(0, 999).map(lambda i: f"k{i:03d}")
key_sets = st.sets(names, max_size=80)
ratios = st.floats(0.3, 12.0)  # full_sweep / interval
jitters = st.floats(0.0, 0.1)  # a run starts up to a tenth of an interval late


def run_times(start: datetime, count: int, interval: float, jitter: list[float]) -> list[datetime]:
    return [start + timedelta(seconds=interval * (i + jitter[i % len(jitter)])) for i in range(count)]


sparse = st.sets(st.integers(0, 99).map(lambda i: f"k{i * 10:03d}"), max_size=40)
"""Initial objects with room between them for objects added later."""
# 10 objects, read half a run; then 80 objects land right after the cursor: a steady rate alone
# would spend the second run on them and leave k500..k900 unread.
CROWD = {f"k{i:03d}" for i in range(401, 481)}


@settings(max_examples=400, deadline=None)
@given(
    initial=sparse,
    ratio=ratios,
    changes=st.lists(st.tuples(key_sets, st.sets(names)), min_size=12, max_size=12),
    jitter=st.lists(jitters, min_size=1, max_size=12),
)
@example(
    initial={f"k{i * 100:03d}" for i in range(10)},
    ratio=2.0,
    changes=[(CROWD, set())] + [(set(), set())] * 11,
    jitter=[0.0],
)
def test_from_a_fresh_start_every_object_is_read_within_ceil_full_over_interval_runs(
    initial: set[str],
    ratio: float,
    changes: list[tuple[set[str], set[str]]],
    jitter: list[float],
) -> None:
    """Objects added anywhere in key order (new chunks) or removed (retention) between runs do
    not delay the objects that existed at the first run beyond ``ceil(full_sweep / interval)``."""
    interval = DAY
    full = ratio * interval
    k = math.ceil(full / interval)
    objects = set(initial)
    deleted: set[str] = set()
    read: set[str] = set()
    cursor: str | None = None
    started: datetime | None = None
    for i, now in enumerate(run_times(T0, k, interval, jitter)):
        if i:
            added, removed = changes[i - 1]
            objects |= added
            objects -= removed
            deleted |= removed & initial
        p = plan_sweep(sorted(objects), cursor, started, now, interval_s=interval, full_sweep_s=full)
        read |= set(p.keys)
        cursor, started = p.cursor, p.pass_started_at
    assert initial - deleted <= read


@settings(max_examples=300, deadline=None)
@given(
    objects=key_sets.filter(bool),
    ratio=ratios,
    cursor=st.none() | names,
    started_days_ago=st.floats(0.0, 30.0),
    jitter=st.lists(jitters, min_size=1, max_size=12),
)
def test_with_a_stable_set_any_ceil_full_over_interval_consecutive_runs_read_everything(
    objects: set[str], ratio: float, cursor: str | None, started_days_ago: float, jitter: list[float]
) -> None:
    interval = DAY
    full = ratio * interval
    k = math.ceil(full / interval)
    keys = sorted(objects)
    started: datetime | None = ago(started_days_ago)
    read: list[str] = []
    for now in run_times(T0, k, interval, jitter):
        p = plan_sweep(keys, cursor, started, now, interval_s=interval, full_sweep_s=full)
        read.extend(p.keys)
        cursor, started = p.cursor, p.pass_started_at
    assert set(read) == objects


@settings(max_examples=300, deadline=None)
@given(
    objects=key_sets,
    cursor=st.none() | names,
    started_days_ago=st.floats(0.0, 30.0),
    ratio=ratios,
    total_extra=st.integers(0, 50),
)
def test_a_run_reads_its_share_of_known_keys_each_once(
    objects: set[str], cursor: str | None, started_days_ago: float, ratio: float, total_extra: int
) -> None:
    keys = sorted(objects)
    p = plan_sweep(
        keys,
        cursor,
        ago(started_days_ago),
        T0,
        interval_s=DAY,
        full_sweep_s=ratio * DAY,
        total=len(keys) + total_extra,
    )
    assert len(set(p.keys)) == len(p.keys) == min(p.share, len(keys))
    assert set(p.keys) <= objects
    assert p.share >= (1 if keys else 0)
    assert p.cursor is None or p.cursor in objects or (not keys and p.cursor == cursor)
    if keys:
        # The keys follow the cursor in key order, wrapping around once at most.
        after = [x for x in keys if cursor is None or x > cursor]
        before = [x for x in keys if not (cursor is None or x > cursor)]
        assert list(p.keys) == (after + before)[: len(p.keys)]
