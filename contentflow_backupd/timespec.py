"""Durations (``30d``, ``24h``, ``90s``) and schedule values (crontab, ``every 6h``, ``off``).

Pure parsing, no scheduler: ``scheduling`` turns a parsed :class:`Schedule` into an APScheduler
trigger (and APScheduler's own crontab parser has the last word on crontab fields).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_EVERY = re.compile(r"^every\s+(\d+)\s*([smhd])$")


def parse_duration(value: str | int | float, *, allow_zero: bool = False) -> float:
    """Seconds in ``value``: a number (seconds) or a number with a unit ``s``, ``m``, ``h``, ``d``.

    Raises ``ValueError`` with a message fit for the user."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value.lower())
        if not m:
            raise ValueError(f"{value!r} is not a duration: use a number with a unit s, m, h or d (e.g. 30d)")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{value!r}: a duration must be greater than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact form: 86400 -> ``1d``, 5400 -> ``90m``, 42 -> ``42s``."""
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule value."""

    kind: Literal["cron", "every", "off"]
    cron: str | None = None
    """The 5 crontab fields (minute hour day month day-of-week), single-spaced."""
    seconds: float | None = None
    """The interval of ``every``."""

    def __str__(self) -> str:
        if self.kind == "cron":
            return self.cron or ""
        if self.kind == "every":
            return f"every {format_duration(self.seconds or 0)}"
        return "off"


def parse_schedule(value: str) -> Schedule:
    """``off``, ``every <n>s|m|h|d`` or a 5-field crontab expression.

    Crontab fields are checked for shape here (five fields of digits, ``*``, ``/``, ``,``, ``-``
    and month/day names); ``scheduling`` validates their ranges with APScheduler."""
    text = " ".join(value.strip().split()).lower()
    if text == "off":
        return Schedule("off")
    m = _EVERY.match(text)
    if m:
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if seconds <= 0:
            raise ValueError(f"{value!r}: the interval must be greater than zero")
        return Schedule("every", seconds=float(seconds))
    if text.startswith("every"):
        raise ValueError(f"{value!r}: write every <n>s, every <n>m, every <n>h or every <n>d (e.g. every 6h)")
    fields = text.split(" ")
    if len(fields) != 5 or not all(re.fullmatch(r"[0-9a-z*/,\-?]+", f) for f in fields):
        raise ValueError(
            f"{value!r} is not a schedule: use a 5-field crontab expression (minute hour day month "
            "weekday, e.g. '0 2 * * *'), 'every <n>s|m|h|d' or 'off'"
        )
    return Schedule("cron", cron=text)


_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def cron_weekdays(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday, names allowed, lists, ranges, steps) as an
    explicit list of day names, e.g. ``1-5`` -> ``mon,tue,wed,thu,fri``.

    APScheduler 3 numbers weekdays from Monday = 0, so ``0 4 * * 0`` handed to it as is would
    fire on Mondays; names mean the same to both. ``*`` stays ``*``. Raises ``ValueError``."""
    if field in ("*", "?"):
        return "*"

    def day(text: str) -> int:
        if text in _DAY_NAMES:
            return _DAY_NAMES.index(text)
        if text.isdigit() and 0 <= int(text) <= 7:
            return int(text) % 7 if text != "7" else 7
        raise ValueError(f"{text!r} is not a day of the week (0-7 or sun-sat)")

    days: set[int] = set()
    for token in field.split(","):
        part, _, step_text = token.partition("/")
        step = int(step_text) if step_text else 1
        if step_text and (not step_text.isdigit() or step < 1):
            raise ValueError(f"bad step in {token!r}")
        if part == "*":
            first, last = 0, 6
        elif "-" in part:
            a, b = part.split("-", 1)
            first, last = day(a), day(b)
            if last < first:
                raise ValueError(f"{token!r}: a range must go upwards (write 5-7 or fri-sun, not 5-0)")
        else:
            first = last = day(part)
            if step_text:
                last = 6
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(_DAY_NAMES[d] for d in sorted(days))
