"""RetryingStorage beyond the contract: which errors, how often, how long, and put's subtleties.

Most tests wrap :class:`ScriptedStorage`, a MemoryStorage that fails on cue; the last ones go
through the fault proxy to moto for the lost-answer case of ``if_absent``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import BinaryIO

import pytest
from structlog.testing import capture_logs

from contentflow_backupd.errors import (
    IncompleteWrite,
    ObjectExists,
    ObjectNotFound,
    StorageAccessDenied,
    StorageError,
    StorageUnavailable,
)
from contentflow_backupd.storage.base import ObjectInfo, put_bytes
from contentflow_backupd.storage.memory import MemoryStorage
from contentflow_backupd.storage.retry import RetryingStorage
from tests.storage.conftest import make_s3
from tests.support.faultproxy import FaultProxy


class ScriptedStorage(MemoryStorage):
    """Raises the queued errors of an operation, one per call, before doing the real work."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: dict[str, list[StorageError]] = {}
        self.calls: dict[str, int] = {}
        self.land_before_failing = False  # put stores the object, then raises (a lost answer)
        self.list_fail_after: int | None = None  # list fails once after yielding this many

    def fail(self, operation: str, *errors: StorageError) -> None:
        self.errors.setdefault(operation, []).extend(errors)

    def _enter(self, operation: str) -> StorageError | None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        queue = self.errors.get(operation)
        return queue.pop(0) if queue else None

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False, sync: bool = True) -> int:
        error = self._enter("put")
        if error is None:
            return super().put(key, stream, if_absent=if_absent, sync=sync)
        if self.land_before_failing:
            super().put(key, stream, if_absent=if_absent, sync=sync)
        else:
            stream.read(3)  # a partial read before the failure
        raise error

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        if error := self._enter("open"):
            raise error
        return super().open(key, offset, length)

    def get(self, key: str) -> bytes:
        if error := self._enter("get"):
            raise error
        return super().get(key)

    def stat(self, key: str) -> ObjectInfo:
        if error := self._enter("stat"):
            raise error
        return super().stat(key)

    def delete(self, key: str) -> None:
        if error := self._enter("delete"):
            raise error
        super().delete(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        error = self._enter("list")
        if error is not None:
            raise error
        return self._scripted_list(prefix)

    def _scripted_list(self, prefix: str) -> Iterator[ObjectInfo]:
        for n, info in enumerate(super().list(prefix)):
            if self.list_fail_after is not None and n == self.list_fail_after:
                self.list_fail_after = None
                raise StorageUnavailable("connection reset mid-listing")
            yield info


def unavailable(n: int) -> list[StorageError]:
    return [StorageUnavailable(f"blip {i}") for i in range(1, n + 1)]


@pytest.fixture
def inner() -> ScriptedStorage:
    return ScriptedStorage()


@pytest.fixture
def delays() -> list[float]:
    return []


@pytest.fixture
def storage(inner: ScriptedStorage, delays: list[float]) -> RetryingStorage:
    return RetryingStorage(inner, attempts=4, sleep=delays.append, rng=lambda: 1.0)


# -- which errors, how often ------------------------------------------------------------------


def test_transient_errors_are_retried(inner: ScriptedStorage, storage: RetryingStorage) -> None:
    inner.fail("put", *unavailable(3))
    assert put_bytes(storage, "k", b"value") == 5
    assert inner.calls["put"] == 4
    assert inner.get("k") == b"value"


def test_gives_up_after_attempts_with_the_last_error(
    inner: ScriptedStorage, storage: RetryingStorage
) -> None:
    inner.fail("stat", *unavailable(10))
    with pytest.raises(StorageUnavailable, match="blip 4"):
        storage.stat("k")
    assert inner.calls["stat"] == 4


def test_incomplete_write_is_retried(inner: ScriptedStorage, storage: RetryingStorage) -> None:
    inner.fail("put", IncompleteWrite("etag mismatch"))
    put_bytes(storage, "k", b"v")
    assert inner.calls["put"] == 2


@pytest.mark.parametrize(
    "error",
    [
        ObjectNotFound("gone"),
        StorageAccessDenied("no"),
        ObjectExists("there"),
        StorageError("full disk"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_permanent_errors_are_not_retried(
    inner: ScriptedStorage, storage: RetryingStorage, delays: list[float], error: StorageError
) -> None:
    for operation in ("stat", "open", "get", "delete", "put"):
        inner.fail(operation, error)
    calls: list[Callable[[], object]] = [
        lambda: storage.stat("k"),
        lambda: storage.open("k"),
        lambda: storage.get("k"),
        lambda: storage.delete("k"),
        lambda: put_bytes(storage, "k", b"v"),
    ]
    for call in calls:
        with pytest.raises(type(error)):
            call()
    assert set(inner.calls.values()) == {1}
    assert delays == []


def test_other_exceptions_pass_straight_through(inner: ScriptedStorage) -> None:
    class BoomError(Exception):
        pass

    class Exploding(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise BoomError

    storage = RetryingStorage(inner, sleep=lambda _: None)
    with pytest.raises(BoomError):
        storage.put("k", Exploding())
    assert inner.calls.get("put") == 1


# -- how long ---------------------------------------------------------------------------------


def test_backoff_doubles_up_to_max_delay_with_full_jitter(inner: ScriptedStorage) -> None:
    delays: list[float] = []
    storage = RetryingStorage(
        inner, attempts=8, base_delay=0.2, max_delay=3.0, sleep=delays.append, rng=lambda: 1.0
    )
    inner.fail("get", *unavailable(7))
    put_bytes(inner, "k", b"v")
    assert storage.get("k") == b"v"
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0])

    jittered: list[float] = []
    values = iter([0.5, 0.0, 0.25])
    storage = RetryingStorage(inner, base_delay=1.0, sleep=jittered.append, rng=lambda: next(values))
    inner.fail("get", *unavailable(3))
    storage.get("k")
    assert jittered == pytest.approx([0.5, 0.0, 1.0])  # rng() * 1, * 2, * 4


def test_default_delays_are_bounded(inner: ScriptedStorage) -> None:
    delays: list[float] = []
    storage = RetryingStorage(inner, attempts=30, sleep=delays.append)
    inner.fail("delete", *unavailable(29))
    storage.delete("k")
    assert len(delays) == 29
    assert all(0 <= d <= 10.0 for d in delays)


def test_each_retry_is_logged(inner: ScriptedStorage, storage: RetryingStorage) -> None:
    inner.fail("stat", *unavailable(2))
    put_bytes(inner, "k", b"v")
    with capture_logs() as logs:
        storage.stat("k")
    assert [(e["event"], e["key"], e["attempt"]) for e in logs] == [
        ("storage_retry", "k", 1),
        ("storage_retry", "k", 2),
    ]
    assert logs[0]["error"] == "blip 1"
    assert logs[0]["log_level"] == "warning"


# -- put's stream -----------------------------------------------------------------------------


def test_put_rewinds_the_stream_to_where_it_started(inner: ScriptedStorage, storage: RetryingStorage) -> None:
    stream = io.BytesIO(b"headerPAYLOAD")
    stream.seek(6)
    inner.fail("put", *unavailable(2))
    assert storage.put("k", stream) == 7
    assert inner.get("k") == b"PAYLOAD"


def test_put_from_an_unseekable_stream_gets_one_attempt(
    inner: ScriptedStorage, storage: RetryingStorage
) -> None:
    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def tell(self) -> int:
            raise OSError("illegal seek")

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            return 0

    inner.fail("put", StorageUnavailable("blip"))
    with pytest.raises(StorageUnavailable):
        storage.put("k", Pipe())  # type: ignore[arg-type]
    assert inner.calls["put"] == 1


# -- if_absent after a lost answer ------------------------------------------------------------


def test_if_absent_finds_its_own_earlier_write(inner: ScriptedStorage, storage: RetryingStorage) -> None:
    inner.land_before_failing = True
    inner.fail("put", StorageUnavailable("answer lost"))
    with capture_logs() as logs:
        assert put_bytes(storage, "k", b"mine", if_absent=True) == 4
    assert inner.calls["put"] == 2
    assert "storage_put_found_own_write" in [e["event"] for e in logs]


@pytest.mark.parametrize("theirs", [b"their", b"yours", b"mine!"], ids=["smaller", "same-size", "prefix"])
def test_if_absent_after_a_blip_still_refuses_someone_elses_object(
    inner: ScriptedStorage, storage: RetryingStorage, theirs: bytes
) -> None:
    put_bytes(inner, "k", theirs)
    inner.fail("put", StorageUnavailable("blip"))
    with pytest.raises(ObjectExists):
        put_bytes(storage, "k", b"mine", if_absent=True)
    assert inner.get("k") == theirs


def test_if_absent_without_an_earlier_failure_does_not_compare(
    inner: ScriptedStorage, storage: RetryingStorage
) -> None:
    put_bytes(inner, "k", b"same")
    with pytest.raises(ObjectExists):
        put_bytes(storage, "k", b"same", if_absent=True)
    assert "stat" not in inner.calls and "open" not in inner.calls


@pytest.mark.s3
def test_if_absent_own_write_through_a_lost_s3_answer(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    inner = make_s3(fault_proxy.url, s3_bucket)
    storage = RetryingStorage(inner, sleep=lambda _: None)
    fault_proxy.fail_next("drop_after")  # moto stores the object, the answer never arrives
    assert put_bytes(storage, "k", b"payload", if_absent=True) == 7
    assert fault_proxy.injected == {"drop_after": 1}
    fault_proxy.fail_next("500")
    with pytest.raises(ObjectExists):
        put_bytes(storage, "k", b"PAYLOAD", if_absent=True)
    assert storage.get("k") == b"payload"
    inner.close()


# -- open, get, list --------------------------------------------------------------------------


def test_open_and_get_are_retried(inner: ScriptedStorage, storage: RetryingStorage) -> None:
    put_bytes(inner, "k", b"0123456789")
    inner.fail("open", *unavailable(2))
    inner.fail("get", *unavailable(2))
    with storage.open("k", 2, 3) as f:
        assert f.read() == b"234"
    assert storage.get("k") == b"0123456789"
    assert inner.calls["open"] == inner.calls["get"] == 3


def test_list_retries_its_start_and_resumes_after_a_failure_mid_listing(
    inner: ScriptedStorage, storage: RetryingStorage
) -> None:
    keys = [f"k{i}" for i in range(6)]
    for key in keys:
        put_bytes(inner, key, b"v")
    inner.fail("list", *unavailable(2))
    inner.list_fail_after = 3
    assert [i.key for i in storage.list("k")] == keys
    assert inner.calls["list"] == 4  # two failed starts, one cut short, one resumed


def test_list_gives_up_when_it_cannot_start(inner: ScriptedStorage, storage: RetryingStorage) -> None:
    inner.fail("list", *unavailable(4))
    listing = storage.list()
    with pytest.raises(StorageUnavailable, match="blip 4"):
        next(listing)


def test_wrapper_passes_features_url_and_close_through(inner: ScriptedStorage) -> None:
    storage = RetryingStorage(inner)
    assert storage.features is inner.features
    assert storage.url == inner.url
    assert storage.inner is inner
    storage.close()
    with pytest.raises(ValueError, match="attempts"):
        RetryingStorage(inner, attempts=0)
