"""The one retry policy (contentflow_backupd.backoff) and each loop's documented policy, as tables.

Pure: no loop sleeps here; clocks and random numbers are injected."""

from __future__ import annotations

import math

import pytest

from contentflow_backupd.backoff import Backoff, Pacer
from contentflow_backupd.daemon.walwatch import SUPERVISOR_BACKOFF
from contentflow_backupd.migrate.batch import BatchOptions, lock_retry_policy
from contentflow_backupd.observability.notify import WebhookNotifier
from contentflow_backupd.ops.wal.stream import RESTART_BACKOFF
from contentflow_backupd.storage.memory import MemoryStorage
from contentflow_backupd.storage.retry import RetryingStorage


def delays(policy: Backoff, n: int) -> list[float]:
    return [policy.delay(i) for i in range(1, n + 1)]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Backoff(first=1, cap=30), [1, 2, 4, 8, 16, 30, 30]),
        (Backoff(first=1, cap=60), [1, 2, 4, 8, 16, 32, 60]),
        (Backoff(first=0.5), [0.5, 1, 2, 4, 8, 16, 32]),
        (Backoff(first=2, cap=5, factor=1), [2, 2, 2, 2, 2, 2, 2]),
        (Backoff(first=0, cap=60), [0, 0, 0, 0, 0, 0, 0]),
        (Backoff(first=3, cap=1), [1, 1, 1, 1, 1, 1, 1]),
    ],
)
def test_delays_double_up_to_the_cap(policy: Backoff, expected: list[float]) -> None:
    assert delays(policy, len(expected)) == expected


def test_a_long_outage_stays_at_the_cap() -> None:
    assert Backoff(first=1, cap=30).delay(100_000) == 30
    assert Backoff(first=1).delay(100_000) == math.inf  # no cap: unbounded, never an OverflowError


def test_full_jitter_scales_the_delay_by_the_random_number() -> None:
    policy = Backoff(first=0.2, cap=10, jitter=True)
    assert policy.delay(3, lambda: 0.5) == pytest.approx(0.4)
    assert policy.delay(10, lambda: 0.25) == pytest.approx(2.5)
    assert policy.delay(1, lambda: 0.0) == 0
    assert Backoff(first=0.2, cap=10).delay(3, lambda: 0.5) == pytest.approx(0.8)  # no jitter


@pytest.mark.parametrize(("attempts", "allowed"), [(1, []), (3, [1, 2]), (None, [1, 2, 3, 4, 5, 100])])
def test_attempts_bound_the_tries(attempts: int | None, allowed: list[int]) -> None:
    policy = Backoff(first=1, attempts=attempts)
    assert [t for t in [1, 2, 3, 4, 5, 100] if policy.may_retry(t)] == allowed


@pytest.mark.parametrize(
    "kwargs",
    [{"first": -1}, {"first": 1, "cap": -1}, {"first": 1, "factor": 0.5}, {"first": 1, "attempts": 0}],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Backoff(first=1).delay(0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_counts_failures_paces_the_next_try_and_starts_over_on_success() -> None:
    clock = FakeClock()
    pacer = Pacer(Backoff(first=1, cap=4), clock=clock)
    assert pacer.ready()
    assert [pacer.failed(), pacer.failed(), pacer.failed(), pacer.failed()] == [1, 2, 4, 4]
    assert not pacer.ready()
    clock.now += 3.9
    assert not pacer.ready()
    clock.now += 0.1
    assert pacer.ready()
    pacer.succeeded()
    assert pacer.failures == 0
    assert pacer.failed() == 1


def test_pacer_applies_jitter_with_its_injected_random_numbers() -> None:
    pacer = Pacer(Backoff(first=2, cap=8, jitter=True), clock=FakeClock(), rng=lambda: 0.5)
    assert [pacer.failed() for _ in range(4)] == [1, 2, 4, 4]


# -- each loop's documented policy ----------------------------------------------------------


def test_wal_stream_restarts_and_uploads_wait_1_s_doubling_to_30_s() -> None:
    assert RESTART_BACKOFF.attempts is None
    assert delays(RESTART_BACKOFF, 7) == [1, 2, 4, 8, 16, 30, 30]


def test_daemon_restarts_a_failed_wal_stream_after_1_s_doubling_to_60_s() -> None:
    assert SUPERVISOR_BACKOFF.attempts is None
    assert delays(SUPERVISOR_BACKOFF, 8) == [1, 2, 4, 8, 16, 32, 60, 60]


def test_webhook_retries_backoff_doubling_to_60_s_retries_plus_one_tries() -> None:
    notifier = WebhookNotifier(
        "https://hooks.example.com/x", timeout=5, retries=3, backoff=2, cluster="c", host="h"
    )
    assert notifier.policy.attempts == 4
    assert delays(notifier.policy, 3) == [2, 4, 8]
    assert (
        WebhookNotifier(
            "https://hooks.example.com/x", timeout=5, retries=10, backoff=10, cluster="c", host="h"
        ).policy.delay(4)
        == 60
    )


@pytest.mark.parametrize(
    ("lock_timeout", "lock_retries", "expected"), [(5.0, 3, [5, 10, 20]), (0.0, 2, [0.1, 0.2]), (0.05, 0, [])]
)
def test_batch_lock_retries_wait_lock_timeout_doubling(
    lock_timeout: float, lock_retries: int, expected: list[float]
) -> None:
    opts = BatchOptions(
        sql="update t set x = 1", table="t", key="id", batch_size=10, cluster="main",
        lock_timeout=lock_timeout, lock_retries=lock_retries,
    )  # fmt: skip
    policy = lock_retry_policy(opts)
    retries = [n for n in range(1, 10) if policy.may_retry(n)]
    assert [policy.delay(n) for n in retries] == pytest.approx(expected)


def test_storage_retries_use_full_jitter_of_the_doubling_delay() -> None:
    storage = RetryingStorage(MemoryStorage(), attempts=10, base_delay=0.1, max_delay=5.0)
    assert storage.policy == Backoff(first=0.1, cap=5.0, jitter=True, attempts=10)
    assert [storage.policy.delay(n, lambda: 1.0) for n in (1, 2, 7, 8)] == pytest.approx([0.1, 0.2, 5.0, 5.0])
