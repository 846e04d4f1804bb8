"""How often a schedule fires: the period that health objectives and misfire grace derive from.

``schedule_period`` is deterministic for a given ``now``: a crontab expression is expanded by
``cron_trigger``, the trigger the scheduler runs, so the period
always matches what the daemon really does, time zone and daylight saving time included.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from contentflow_backupd.timespec import Schedule, cron_weekdays

HORIZON = timedelta(days=8)
"""Fire times of a crontab schedule are examined over this window (a weekly schedule fires at
least twice in it)."""
_WIDER = (timedelta(days=400), timedelta(days=8 * 366 + 8))
"""Windows tried in turn when a schedule fires fewer than twice in ``HORIZON`` (monthly, yearly,
29 February)."""
_STEP = timedelta(microseconds=1)


def schedule_period(spec: Schedule, timezone: str, *, now: datetime | None = None) -> float | None:
    """Seconds between runs of ``spec``, or None for ``off``.

    ``every <n>``: the interval. A crontab expression: the largest gap between two consecutive fire
    times, over every gap that starts in the 8 days from the start of the hour of ``now``
    (default: the current time; computed once per hour and cached), in real elapsed seconds
    (``0 2 * * *`` is 86400; ``0 2,3 * * *`` is 82800; ``0 0 * * 1-5`` is 3 days; a daily job
    gives 25 h across the autumn DST change). A schedule that does not fire in those 8 days is
    examined over about 13 months (monthly), then over 8 years (29 February).

    Raises ``ValueError`` when APScheduler rejects a crontab field (``61 * * * *``), when the time
    zone is unknown, or when the schedule never fires twice (``0 0 30 2 *``).
    """
    if spec.kind == "off":
        return None
    if spec.kind == "every":
        if spec.seconds is None or spec.seconds <= 0:
            raise ValueError(f"{spec}: the interval must be greater than zero")
        return float(spec.seconds)
    if spec.cron is None:
        raise ValueError("a crontab schedule without its expression")
    start = (now or datetime.now(UTC)).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return _cron_period(spec.cron, timezone, start)


def cron_trigger(cron: str, timezone: str | ZoneInfo) -> CronTrigger:
    """The APScheduler trigger of a 5-field crontab expression, with crontab's weekday numbers
    (0 or 7 = Sunday; APScheduler's own ``from_crontab`` counts from Monday = 0). Day of month
    and day of week both restricted means both must match (APScheduler), not either (cron).
    ``ValueError`` for a field APScheduler rejects."""
    minute, hour, day, month, weekday = cron.split()
    return CronTrigger(
        minute=minute, hour=hour, day=day, month=month, day_of_week=cron_weekdays(weekday), timezone=timezone
    )


class AlignedIntervalTrigger(IntervalTrigger):  # type: ignore[misc]
    """``every <n>``: fires at ``start_date + k * n`` only, whatever fired before.

    APScheduler's ``IntervalTrigger`` plans the next fire at the previous one + n, so a run fired
    off its grid (``Scheduler.run_soon``: the first full backup at start) moved every later fire
    to the daemon's start time: fifty clusters started together kept firing together, whatever
    their spread offsets. This one returns the first grid time after the previous fire (the same
    as APScheduler's when the previous fire was on the grid, as every scheduled one is). ``str``
    is the parent's, so a stored job of an earlier version keeps its next fire time."""

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if previous_fire_time is None:
            first: datetime | None = super().get_next_fire_time(None, now)
            return first
        start = self.start_date.timestamp()
        steps = math.floor((previous_fire_time.timestamp() - start) / self.interval_length) + 1
        fire = start + self.interval_length * steps
        if self.end_date and fire > self.end_date.timestamp():
            return None
        return datetime.fromtimestamp(fire, tz=self.timezone)


@lru_cache(maxsize=64)
def _cron_period(cron: str, timezone: str, start: datetime) -> float:
    """Cached per (expression, zone, hour): an every-minute schedule has 11520 fire times in
    8 days, and /healthz asks on every request."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r} (use an IANA name such as UTC)") from None
    trigger = cron_trigger(cron, zone)
    for horizon in (HORIZON, *_WIDER):
        gap = _largest_gap(trigger, start, start + horizon)
        if gap is not None:
            return gap
    raise ValueError(f"{cron}: the schedule never fires twice (check the day and month fields)")


def _largest_gap(trigger: CronTrigger, start: datetime, end: datetime) -> float | None:
    """The largest gap between consecutive fire times, over every gap that starts in
    [start, end] (the gap that ends after ``end`` included); None when nothing fires in
    [start, end] or nothing fires after the first fire time."""
    previous: datetime | None = None
    largest: float | None = None
    cursor = start
    while True:
        fire = trigger.get_next_fire_time(previous, cursor)
        if fire is None or (previous is None and fire > end):
            return largest
        if previous is not None:
            # Aware datetimes with the same tzinfo subtract as wall clocks: compare in UTC.
            gap = (fire.astimezone(UTC) - previous.astimezone(UTC)).total_seconds()
            largest = gap if largest is None else max(largest, gap)
        if fire > end:
            return largest
        previous = fire
        cursor = fire + _STEP
