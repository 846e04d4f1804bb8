"""Deterministic spread of fire times over a window, per cluster (``BACKUPD_SCHEDULE__SPREAD``).

Fifty clusters with ``full = "0 2 * * *"`` must not start fifty backups at 02:00:00. Each cluster
gets an offset from a hash of its name, the same on every restart and on every daemon::

    h(c)         = int.from_bytes(blake2b(b"contentflow-backupd:spread:" + c, digest_size=8), "big")
    bound(job)   = min(spread_s, schedule_period(job))
    offset(c, j) = h(c) mod max(1, floor(bound(j)))  seconds

One hash per cluster keeps a cluster's jobs in their relative order (its full and incremental
shift together); the bound keeps a 15-minute WAL job's offset under its period. A spread of 0
gives every job offset 0, and then no :class:`SpreadTrigger` is used at all: the trigger, its
``str`` and so the stored fire times are exactly those of a daemon without spread.

The default window depends on the configuration (:func:`default_spread`): ``0s`` for today's one
implicit cluster (its fire times do not move on upgrade), ``30m`` once named clusters exist.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.base import BaseTrigger

_SALT = b"contentflow-backupd:spread:"

NAMED_CLUSTERS_SPREAD = "30m"
IMPLICIT_CLUSTER_SPREAD = "0s"


def default_spread(*, named_clusters: bool) -> str:
    """The window when ``schedule.spread`` is not set: ``30m`` for a configuration with named
    clusters (``[clusters.<name>]``), ``0s`` for the implicit single cluster, whose fire times
    must not move when it upgrades."""
    return NAMED_CLUSTERS_SPREAD if named_clusters else IMPLICIT_CLUSTER_SPREAD


def cluster_hash(cluster: str) -> int:
    """``h(c)``: 64 bits of BLAKE2b over the cluster name (stable across processes and hosts,
    unlike ``hash()``)."""
    digest = hashlib.blake2b(_SALT + cluster.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def spread_offset(cluster: str, spread_s: float, period_s: float | None) -> int:
    """Seconds the fires of ``cluster``'s job are moved later: in ``[0, min(spread_s, period_s))``
    (0 when either is under 2 s). ``period_s`` None (unknown) bounds by the spread only."""
    bound = spread_s if period_s is None else min(spread_s, period_s)
    if not bound > 0:
        return 0
    return cluster_hash(cluster) % max(1, math.floor(bound))


def _shift(when: datetime, seconds: float) -> datetime:
    """``when`` moved by elapsed seconds (in UTC, so a daylight-saving change in between neither
    makes a wall time that does not exist nor counts an hour twice), in ``when``'s zone."""
    return (when.astimezone(UTC) + timedelta(seconds=seconds)).astimezone(when.tzinfo)


class SpreadTrigger(BaseTrigger):  # type: ignore[misc]
    """``base`` (a cron or interval trigger) fired ``offset`` seconds later:
    ``next(prev, now) = base(prev - offset, now - offset) + offset``.

    Pickled with the job (APScheduler stores triggers in the job table); ``str`` shows the offset,
    so ``Scheduler.register`` sees a changed window as a changed trigger and plans again.
    """

    __slots__ = ("base", "offset")

    def __init__(self, base: BaseTrigger, offset: int) -> None:
        if offset < 0:
            raise ValueError("a spread offset is never negative")
        self.base = base
        self.offset = int(offset)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        previous = None if previous_fire_time is None else _shift(previous_fire_time, -self.offset)
        fire: datetime | None = self.base.get_next_fire_time(previous, _shift(now, -self.offset))
        return None if fire is None else _shift(fire, self.offset)

    def __getstate__(self) -> dict[str, Any]:
        return {"version": 1, "base": self.base, "offset": self.offset}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("version", 1) > 1:
            raise ValueError(f"SpreadTrigger state version {state['version']} is newer than this program")
        self.base = state["base"]
        self.offset = int(state["offset"])

    def __str__(self) -> str:
        return f"{self.base} spread +{self.offset}s"

    def __repr__(self) -> str:
        return f"<SpreadTrigger ({self.base!r}, offset={self.offset})>"
