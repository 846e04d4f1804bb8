"""Durations, schedule values and crontab weekdays: pure parsing, as tables and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentflow_backupd.scheduling.periods import cron_trigger
from contentflow_backupd.timespec import (
    Schedule,
    cron_weekdays,
    format_duration,
    parse_duration,
    parse_schedule,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86400),
        ("24h", 86400),
        ("90m", 5400),
        ("45s", 45),
        ("45", 45),
        (" 2 h ", 7200),
        (1.5, 1.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "1w", "h", "1.5.2h", "30 days"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_zero_only_when_allowed() -> None:
    assert parse_duration("0s", allow_zero=True) == 0


@pytest.mark.parametrize(("seconds", "text"), [(86400, "1d"), (5400, "90m"), (42, "42s"), (7200, "2h")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("off", Schedule("off")),
        ("OFF", Schedule("off")),
        ("every 6h", Schedule("every", seconds=21600.0)),
        ("every  10s", Schedule("every", seconds=10.0)),
        ("0 2 * * *", Schedule("cron", cron="0 2 * * *")),
        ("*/15   *  * * *", Schedule("cron", cron="*/15 * * * *")),
        ("0 4 * * sun", Schedule("cron", cron="0 4 * * sun")),
    ],
)
def test_parse_schedule(text: str, expected: Schedule) -> None:
    assert parse_schedule(text) == expected


@pytest.mark.parametrize(
    "text", ["every 0h", "every 5x", "every", "0 2 * *", "0 2 * * * *", "daily", "0 2 * * $"]
)
def test_parse_schedule_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(text)


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("5-7", "sun,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("1/3", "mon,thu"),
        ("sat,sun", "sun,sat"),
        ("mon-wed", "mon,tue,wed"),
    ],
)
def test_cron_weekdays(field: str, names: str) -> None:
    assert cron_weekdays(field) == names


@pytest.mark.parametrize("field", ["8", "5-1", "x", "*/0", "1-"])
def test_cron_weekdays_rejects(field: str) -> None:
    with pytest.raises(ValueError):
        cron_weekdays(field)


@given(st.sets(st.integers(0, 6), min_size=1))
def test_weekday_lists_fire_on_the_cron_days(days: set[int]) -> None:
    """A list of crontab weekday numbers fires on exactly those days (Sunday = 0), whatever
    APScheduler's own numbering."""
    trigger = cron_trigger(f"0 4 * * {','.join(map(str, sorted(days)))}", "UTC")
    start = datetime(2026, 11, 22, tzinfo=UTC)  # a Sunday
    fired: set[int] = set()
    when = trigger.get_next_fire_time(None, start)
    while when is not None and when < start + timedelta(days=7):
        fired.add(int(when.strftime("%w")))  # %w: Sunday = 0, as in crontab
        when = trigger.get_next_fire_time(when, when + timedelta(seconds=1))
    assert fired == days
