"""One retry policy for every loop that waits and tries again (stdlib only, pure).

:class:`Backoff` is the policy, as data: the delay before retry ``n`` (1-based) is
``min(cap, first * factor ** (n - 1))``, multiplied by a random number in ``[0, 1)`` when
``jitter`` is set ("full jitter"); ``attempts`` bounds the tries (the first one included), None
for no bound. :class:`Pacer` is the state a loop keeps: how many failures in a row, and (for loops
that poll rather than block) when the next try is due.

The policies of the loops that use it:

=============================  ===========================================================  =========
loop                           delays (seconds)                                             attempts
=============================  ===========================================================  =========
storage retry wrapper          full jitter of ``min(10, 0.2 x 2^(n-1))`` (configurable)     5
webhook notifier               ``min(60, backoff x 2^(n-1))``; a 429's Retry-After raises   retries+1
                               it (up to 60)
``migrate batch`` lock retry   ``max(0.1, lock_timeout) x 2^(n-1)``                         retries+1
``wal-stream`` restarts and    ``min(30, 2^(n-1))``, reset by a success (a restart: by a    unbounded
upload retries                 run of at least 30 s)
daemon's wal-stream restarts   ``min(60, 2^(n-1))``, reset when a run returns normally      unbounded
=============================  ===========================================================  =========

Waiting is the caller's: a loop that a signal or ``stop()`` must end waits with its stop event's
``wait(delay)`` (``threading.Event`` or ``migrate.batch.StopFlag``), never with ``time.sleep``,
so that a stop ends the wait at once.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff", "Pacer"]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: see the module docstring."""

    first: float
    """The delay before the first retry."""
    cap: float = math.inf
    """No delay is longer (before jitter)."""
    factor: float = 2.0
    jitter: bool = False
    """Full jitter: each delay is a uniformly random share of the computed one."""
    attempts: int | None = None
    """Tries in all, the first one included; None: retry for ever."""

    def __post_init__(self) -> None:
        if self.first < 0 or self.cap < 0 or self.factor < 1:
            raise ValueError("first and cap must be >= 0 and factor >= 1")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """The wait before retry number ``retry`` (1-based)."""
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        if self.first == 0:
            base = 0.0
        else:
            try:
                base = min(self.cap, self.first * self.factor ** (retry - 1))
            except OverflowError:  # a long outage: far past the cap
                base = self.cap
        return rng() * base if self.jitter else base

    def may_retry(self, tried: int) -> bool:
        """Whether another try is allowed after ``tried`` tries."""
        return self.attempts is None or tried < self.attempts


class Pacer:
    """A loop's backoff state: failures in a row, and when the next try is due.

    ``failed()`` counts a failure and returns the delay before the next try (also kept as the due
    time, for loops that poll ``ready()`` instead of waiting); ``succeeded()`` starts over.
    ``clock`` and ``rng`` are injectable so that tests need no real time.
    """

    def __init__(
        self,
        policy: Backoff,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.failures = 0
        self._clock = clock
        self._rng = rng
        self._due = -math.inf

    def failed(self) -> float:
        """Count a failure; the delay before the next try (the next try is due then)."""
        self.failures += 1
        delay = self.policy.delay(self.failures, self._rng)
        self._due = self._clock() + delay
        return delay

    def succeeded(self) -> None:
        """Start over: the next failure waits ``policy.first`` again."""
        self.failures = 0

    def ready(self) -> bool:
        """Whether the delay after the last failure has passed."""
        return self._clock() >= self._due
