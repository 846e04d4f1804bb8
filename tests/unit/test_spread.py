"""The deterministic spread of fire times (scheduling/spread.py): pure rules, plus the trigger on
APScheduler's own cron and interval triggers."""

from __future__ import annotations

import pickle
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.model import Scope
from contentflow_backupd.scheduling.periods import cron_trigger
from contentflow_backupd.scheduling.scheduler import JobSpec, Scheduler, build_trigger
from contentflow_backupd.scheduling.spread import (
    SpreadTrigger,
    cluster_hash,
    default_spread,
    spread_offset,
)
from contentflow_backupd.settings import Settings
from contentflow_backupd.timespec import parse_schedule
from contentflow_backupd.wiring.daemon import job_specs

BERLIN = ZoneInfo("Europe/Berlin")


def test_the_hash_is_pinned() -> None:
    """Changing the formula moves every cluster's fire times on upgrade: this pins it."""
    assert cluster_hash("orders") == 0x5568A753701B896F
    assert spread_offset("orders", 1800, 86400.0) == 0x5568A753701B896F % 1800 == 1591
    assert spread_offset("main", 1800, 86400.0) == 1471


@pytest.mark.parametrize(
    ("spread", "period", "bound"),
    [
        (1800, 86400.0, 1800),  # daily full: the window
        (1800, 900.0, 900),  # 15-minute WAL: the period
        (1800, None, 1800),  # unknown period: the window
        (0, 86400.0, 1),  # no spread: always 0
        (0.5, 86400.0, 1),
        (1800.9, 86400.0, 1800),
    ],
)
def test_offset_bound(spread: float, period: float | None, bound: int) -> None:
    for name in ("orders", "billing", "main", "a", "z" * 64):
        offset = spread_offset(name, spread, period)
        assert 0 <= offset < bound
    if bound == 1:
        assert spread_offset("orders", spread, period) == 0


@settings(deadline=None, max_examples=300)
@given(
    name=st.text(min_size=1, max_size=64),
    spread=st.floats(min_value=0, max_value=8 * 86400, allow_nan=False),
    period=st.one_of(st.none(), st.floats(min_value=1, max_value=400 * 86400, allow_nan=False)),
)
def test_offset_is_deterministic_and_under_window_and_period(
    name: str, spread: float, period: float | None
) -> None:
    offset = spread_offset(name, spread, period)
    assert offset == spread_offset(name, spread, period)
    assert offset >= 0
    assert offset < max(1, min(spread, period if period is not None else spread))


def test_a_thousand_clusters_spread_evenly_over_the_window() -> None:
    window = 1800
    offsets = [spread_offset(f"cluster-{i:04d}", window, 86400.0) for i in range(1000)]
    buckets = Counter(offset * 10 // window for offset in offsets)  # ten 3-minute slices
    assert sorted(buckets) == list(range(10))
    # uniform: 100 per slice; a hash this far off would bunch the fires it exists to spread
    assert min(buckets.values()) >= 70 and max(buckets.values()) <= 130, buckets
    # no second gets more than a handful of the thousand starts
    assert max(Counter(offsets).values()) <= 5
    assert len(set(offsets)) >= 600


def test_one_offset_per_cluster_keeps_its_jobs_in_order() -> None:
    """A cluster's full and incremental at the same time move together (same hash)."""
    assert spread_offset("orders", 1800, 86400.0) == spread_offset("orders", 1800, 6 * 3600.0)


def test_default_spread_is_zero_without_named_clusters() -> None:
    assert default_spread(named_clusters=False) == "0s"
    assert default_spread(named_clusters=True) == "30m"


def _fires(trigger: object, start: datetime, count: int) -> list[datetime]:
    out: list[datetime] = []
    previous = None
    now = start
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)  # type: ignore[attr-defined]
        assert fire is not None
        out.append(fire)
        previous, now = fire, fire + timedelta(microseconds=1)
    return out


def test_spread_trigger_is_the_base_plus_the_offset() -> None:
    base = cron_trigger("0 2 * * *", "UTC")
    start = datetime(2026, 6, 1, tzinfo=UTC)
    spread = SpreadTrigger(base, 1234)
    assert [f - timedelta(seconds=1234) for f in _fires(spread, start, 5)] == _fires(base, start, 5)
    # a fire still ahead of "now" by less than the offset is not lost: 02:10 is before 02:20:34
    now = datetime(2026, 6, 1, 2, 10, tzinfo=UTC)
    assert spread.get_next_fire_time(None, now) == datetime(2026, 6, 1, 2, 20, 34, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "label"),
    [
        (datetime(2026, 3, 26, tzinfo=BERLIN), "spring: 02:00-03:00 does not exist on 29 March"),
        (datetime(2026, 10, 22, tzinfo=BERLIN), "autumn: 02:00-03:00 happens twice on 25 October"),
    ],
)
def test_spread_across_a_dst_change_keeps_elapsed_offsets(start: datetime, label: str) -> None:
    base = cron_trigger("50 1 * * *", "Europe/Berlin")  # 01:50 + 20 min lands in the DST hour
    spread = SpreadTrigger(base, 20 * 60)
    base_fires, spread_fires = _fires(base, start, 7), _fires(spread, start, 7)
    for b, s in zip(base_fires, spread_fires, strict=True):
        assert (s.astimezone(UTC) - b.astimezone(UTC)).total_seconds() == 1200, label
        assert s.tzinfo is not None and s.utcoffset() == s.astimezone(BERLIN).utcoffset()
    utc = [s.astimezone(UTC) for s in spread_fires]
    assert utc == sorted(set(utc)), f"{label}: one fire per day, in order"
    assert {s.astimezone(BERLIN).strftime("%H:%M") for s in spread_fires} >= {"02:10"}
    if start.month == 3:  # the spring day's 02:10 does not exist: it is 03:10 in summer time
        assert "03:10" in {s.astimezone(BERLIN).strftime("%H:%M") for s in spread_fires}


def test_spread_trigger_pickles_with_its_offset_and_shows_it() -> None:
    trigger = SpreadTrigger(cron_trigger("0 2 * * *", "Europe/Berlin"), 611)
    assert str(trigger).endswith("spread +611s")
    assert str(SpreadTrigger(cron_trigger("0 2 * * *", "Europe/Berlin"), 612)) != str(trigger)
    back = pickle.loads(pickle.dumps(trigger))
    assert isinstance(back, SpreadTrigger) and isinstance(back.base, CronTrigger)
    assert back.offset == 611 and str(back) == str(trigger)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert _fires(back, start, 3) == _fires(trigger, start, 3)


def test_spread_trigger_refuses_a_newer_pickle() -> None:
    trigger = SpreadTrigger(cron_trigger("0 2 * * *", "UTC"), 5)
    state = trigger.__getstate__()
    state["version"] = 2
    with pytest.raises(ValueError, match="newer"):
        SpreadTrigger.__new__(SpreadTrigger).__setstate__(state)


def _spec(job: str, schedule: str, spread_s: float, cluster: str = "orders") -> JobSpec:
    return JobSpec(job, parse_schedule(schedule), "BACKUPD_SCHEDULE__X", cluster=cluster, spread_s=spread_s)


def test_build_trigger_without_spread_is_todays_trigger() -> None:
    trigger = build_trigger(_spec("full", "0 2 * * *", 0.0), "UTC")
    assert isinstance(trigger, CronTrigger)
    assert str(trigger) == str(cron_trigger("0 2 * * *", "UTC"))  # stored rows keep their fire times


def test_build_trigger_with_spread_bounds_each_job_by_its_period() -> None:
    full = build_trigger(_spec("full", "0 2 * * *", 1800.0), "UTC")
    wal = build_trigger(_spec("wal", "*/15 * * * *", 3600.0), "UTC")
    every = build_trigger(_spec("wal", "every 5m", 3600.0), "UTC")
    assert isinstance(full, SpreadTrigger) and full.offset == spread_offset("orders", 1800, 86400.0)
    assert full.offset < 1800
    assert isinstance(wal, SpreadTrigger) and wal.offset < 900
    assert isinstance(every, SpreadTrigger) and every.offset < 300


def test_build_trigger_still_names_the_setting_of_a_bad_schedule() -> None:
    with pytest.raises(ConfigError, match="BACKUPD_SCHEDULE__X"):
        build_trigger(_spec("full", "61 * * * *", 1800.0), "UTC")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("BACKUPD_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_the_setting_defaults_by_configuration_and_an_explicit_value_wins() -> None:
    implicit = Settings()
    assert implicit.schedule.spread is None
    assert {spec.spread_s for spec in job_specs(implicit)} == {0.0}
    assert {spec.spread_s for spec in job_specs(implicit, named_clusters=True)} == {1800.0}
    assert {spec.cluster for spec in job_specs(implicit)} == {"main"}
    explicit = Settings(schedule={"spread": "10m"})
    assert {spec.spread_s for spec in job_specs(explicit, named_clusters=True)} == {600.0}
    off = Settings(schedule={"spread": "0s"})
    assert {spec.spread_s for spec in job_specs(off, named_clusters=True)} == {0.0}


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("bad", ["soon", "-5m"])
def test_a_bad_spread_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="spread"):
        Settings(schedule={"spread": bad})


@pytest.mark.usefixtures("clean_env")
def test_the_environment_sets_the_spread_and_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUPD_SCHEDULE__SPREAD", "45m")
    monkeypatch.setenv("BACKUPD_MAX_CONCURRENT_JOBS", "8")
    loaded = Settings()
    assert loaded.schedule.spread == "45m" and loaded.max_concurrent_jobs == 8
    assert Settings.model_fields["max_concurrent_jobs"].default == 4
    for bad in ("1", "257"):
        monkeypatch.setenv("BACKUPD_MAX_CONCURRENT_JOBS", bad)
        with pytest.raises(ValueError, match="max_concurrent_jobs"):
            Settings()


def _stored_next_run(tmp_path: Path, spread_s: float) -> tuple[datetime, str]:
    """Start a scheduler on the job table in ``tmp_path`` (as a daemon start does), register the
    daily full of cluster ``orders`` with ``spread_s``, and stop it: (next fire, trigger)."""
    engine = create_engine(f"sqlite:///{tmp_path}/catalog.db")
    sched = Scheduler(engine, "Europe/Berlin", scope=Scope("repo", "orders"), max_workers=2)
    try:
        sched.register([_spec("orders:full", "0 2 * * *", spread_s)])
        job = sched._sched.get_job("orders:full")
        return job.next_run_time, str(job.trigger)
    finally:
        sched.shutdown()
        sched.executor.shutdown(wait=True)
        engine.dispose()


def test_the_stored_job_keeps_its_spread_time_across_restarts(tmp_path: Path) -> None:
    first, trigger = _stored_next_run(tmp_path, 1800.0)
    offset = spread_offset("orders", 1800, 86400.0)
    assert trigger.endswith(f"spread +{offset}s")
    assert first.astimezone(BERLIN).time() == (datetime(2026, 1, 1, 2) + timedelta(seconds=offset)).time()
    again, _ = _stored_next_run(tmp_path, 1800.0)  # the row was unpickled and kept as it was
    assert again == first
    plain, plain_trigger = _stored_next_run(tmp_path, 0.0)  # a changed window plans again
    assert "spread" not in plain_trigger
    assert plain.astimezone(BERLIN).time() == datetime(2026, 1, 1, 2).time()


# -- every <n>: a run fired off the grid does not move the later fires ----------------------------
def test_an_interval_fires_on_its_grid_whatever_fired_before() -> None:
    from contentflow_backupd.scheduling.periods import AlignedIntervalTrigger
    from contentflow_backupd.scheduling.scheduler import _EPOCH

    trigger = AlignedIntervalTrigger(seconds=20, start_date=_EPOCH, timezone="UTC")
    grid = datetime(2026, 12, 8, 1, 0, 0, tzinfo=UTC)  # a multiple of 20 s after the epoch
    assert trigger.get_next_fire_time(grid, grid) == grid + timedelta(seconds=20)  # as APScheduler's
    early = grid + timedelta(seconds=7.5)  # e.g. run_soon at start
    assert trigger.get_next_fire_time(early, early) == grid + timedelta(seconds=20)
    assert trigger.get_next_fire_time(None, early) == grid + timedelta(seconds=20)
    assert str(trigger) == "interval[0:00:20]"  # as stored by earlier versions: rows keep their time


@settings(deadline=None, max_examples=300)
@given(
    st.sampled_from(["orders", "billing", "eu-1", "main"]),
    st.integers(min_value=60, max_value=86400),
    st.floats(min_value=0, max_value=10 * 86400, allow_nan=False),
)
def test_after_any_fire_the_next_is_on_the_clusters_grid(cluster: str, period: int, after_s: float) -> None:
    from contentflow_backupd.scheduling.scheduler import _EPOCH

    spec = _spec(f"{cluster}:full", f"every {period}s", 1800.0, cluster=cluster)
    offset = spread_offset(cluster, 1800.0, float(period))
    previous = datetime(2026, 12, 8, tzinfo=UTC) + timedelta(seconds=after_s)
    fire = build_trigger(spec, "UTC").get_next_fire_time(previous, previous)
    assert fire is not None and previous < fire <= previous + timedelta(seconds=period)
    since = (fire - _EPOCH.replace(tzinfo=UTC)).total_seconds() - offset
    assert abs(since / period - round(since / period)) < 1e-6, (fire, offset)


def test_the_first_full_run_at_start_keeps_the_later_fires_on_the_grid(tmp_path: Path) -> None:
    """``run_soon`` (no full backup yet) fires at once; the next fire is the cluster's own grid
    time, not an interval after the start (which put every cluster started together in step)."""
    import threading

    from contentflow_backupd.scheduling import jobs
    from contentflow_backupd.scheduling.scheduler import _EPOCH

    ran = threading.Event()
    jobs.install(lambda job, trigger: ran.set(), "orders")
    engine = create_engine(f"sqlite:///{tmp_path}/catalog.db")
    sched = Scheduler(engine, "UTC", scope=Scope("repo", "orders"), max_workers=2)
    try:
        sched.register([_spec("orders:full", "every 1h", 1800.0)])
        sched.run_soon("orders:full")
        sched.resume()
        assert ran.wait(60), "run_soon did not fire"
        for _ in range(600):  # APScheduler stores the next fire time right after submitting
            job = sched._sched.get_job("orders:full")
            if job.next_run_time is not None and job.next_run_time > datetime.now(UTC):
                break
            ran.wait(0.1)
        offset = spread_offset("orders", 1800.0, 3600.0)
        since = (job.next_run_time - _EPOCH.replace(tzinfo=UTC)).total_seconds() - offset
        assert since % 3600 == 0, (job.next_run_time, offset)
    finally:
        jobs.install(None, "orders")
        sched.shutdown()
        sched.executor.shutdown(wait=True)
        engine.dispose()
