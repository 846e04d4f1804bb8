"""schedule_period: how often a schedule fires, from APScheduler's own crontab trigger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contentflow_backupd.scheduling.periods import schedule_period
from contentflow_backupd.timespec import parse_schedule

NOW = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
DAY = 86400.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0 2 * * *", DAY),
        ("0 */6 * * *", 6 * 3600.0),
        ("*/15 * * * *", 900.0),
        ("30 * * * *", 3600.0),
        ("* * * * *", 60.0),
        ("0 2,3 * * *", 23 * 3600.0),  # the largest gap, 03:00 -> 02:00 next day
        ("0 9-17 * * *", 16 * 3600.0),  # 17:00 -> 09:00
        ("0 0 * * 0", 7 * DAY),
        ("0 0 * * 1-5", 3 * DAY),  # over the weekend
        ("0 0 1 * *", 31 * DAY),  # no fire time in 8 days: examined over 13 months
        ("0 0 1 1 *", 365 * DAY),  # 2027-01-01 -> 2028-01-01
        ("0 0 29 2 *", (366 + 365 * 3) * DAY),  # 2028-02-29 -> 2032-02-29
        ("every 2m", 120.0),
        ("every 90s", 90.0),
        ("every 6h", 6 * 3600.0),
        ("every 1d", DAY),
        ("off", None),
    ],
)
def test_period_table(value: str, expected: float | None) -> None:
    assert schedule_period(parse_schedule(value), "UTC", now=NOW) == expected


def test_dst_autumn_gives_25_hours() -> None:
    # 25 October 2026: Berlin goes from UTC+2 to UTC+1; noon to noon is 25 real hours.
    now = datetime(2026, 10, 22, tzinfo=UTC)
    assert schedule_period(parse_schedule("0 12 * * *"), "Europe/Berlin", now=now) == 25 * 3600.0
    # In UTC the same schedule is exactly daily.
    assert schedule_period(parse_schedule("0 12 * * *"), "UTC", now=now) == DAY


def test_dst_spring_largest_gap_is_a_normal_day() -> None:
    # 29 March 2026: 23 real hours between two noons; the other days have 24.
    now = datetime(2026, 3, 26, tzinfo=UTC)
    assert schedule_period(parse_schedule("0 12 * * *"), "Europe/Berlin", now=now) == DAY


def test_time_zone_shifts_weekday_schedules_consistently() -> None:
    # Weekdays at 23:30 in New York: Friday -> Monday is still three days.
    value = parse_schedule("30 23 * * 1-5")
    assert schedule_period(value, "America/New_York", now=NOW) == 3 * DAY


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("61 * * * *", "61"),
        ("0 25 * * *", "25"),
        ("0 0 30 2 *", "never fires twice"),
        ("0 0 31 4 *", "never fires twice"),
    ],
)
def test_invalid_cron_raises_value_error(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        schedule_period(parse_schedule(value), "UTC", now=NOW)


def test_unknown_time_zone_raises_value_error() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        schedule_period(parse_schedule("0 2 * * *"), "Mars/Olympus", now=NOW)


def test_default_now_is_the_current_time() -> None:
    assert schedule_period(parse_schedule("0 */6 * * *"), "UTC") == 6 * 3600.0


@settings(max_examples=30, deadline=None)  # an every-minute schedule has 11520 fire times in 8 days
@given(
    step=st.sampled_from([1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30]),
    offset=st.integers(min_value=0, max_value=400 * 24),
)
def test_minute_steps_property(step: int, offset: int) -> None:
    """``*/n`` minutes fires every n minutes when n divides 60, whenever we look."""
    now = NOW + timedelta(hours=offset)
    assert schedule_period(parse_schedule(f"*/{step} * * * *"), "UTC", now=now) == step * 60.0


@settings(max_examples=30, deadline=None)
@given(
    step=st.sampled_from([1, 2, 3, 4, 6, 8, 12]),
    zone=st.sampled_from(["UTC", "Asia/Tokyo", "Asia/Kolkata"]),  # no DST in these zones
    offset=st.integers(min_value=0, max_value=400 * 24),
)
def test_hour_steps_property(step: int, zone: str, offset: int) -> None:
    now = NOW + timedelta(hours=offset)
    assert schedule_period(parse_schedule(f"0 */{step} * * *"), zone, now=now) == step * 3600.0


@given(seconds=st.integers(min_value=1, max_value=10**7))
def test_every_is_its_interval(seconds: int) -> None:
    assert schedule_period(parse_schedule(f"every {seconds}s"), "UTC", now=NOW) == float(seconds)
