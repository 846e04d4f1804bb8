"""Retries with exponential backoff and full jitter, around any :class:`Storage`.

Only errors whose ``retryable`` is True are retried (``StorageUnavailable``, ``IncompleteWrite``);
``ObjectNotFound``, ``StorageAccessDenied`` and the like are raised at once. The delay before
retry ``n`` (1-based) is ``rng() * min(max_delay, base_delay * 2 ** (n - 1))`` (the full-jitter
:class:`~contentflow_backupd.backoff.Backoff` policy). After ``attempts`` tries the last error is
raised. Each retry logs a ``storage_retry`` event.

Per operation:

- ``put`` rewinds the stream to where it was at the call (``stream.tell()``) before each retry;
  a stream without ``tell`` gets one attempt.
- ``open`` retries opening; errors while reading the returned stream are the caller's.
  ``get`` retries open-and-read as a whole.
- ``list`` retries until the first key arrives, and after a failure mid-listing restarts the
  listing and skips keys up to the last one yielded (keys come in ascending order), so callers
  see each key once. The attempt budget restarts whenever a key was yielded.
- ``put(..., if_absent=True)`` that fails transiently and then, on a retry, gets
  ``ObjectExists`` may be looking at its own earlier attempt (the service stored it but the
  answer was lost). The wrapper then compares the stored object with the stream: first the size
  (``stat``), then, if equal, the bytes. Equal means our write landed and ``put`` succeeds;
  different means someone else's object is there and ``ObjectExists`` is raised. Without an
  earlier transient failure ``ObjectExists`` is raised as is, without comparing.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

import structlog

from contentflow_backupd.backoff import Backoff
from contentflow_backupd.errors import ObjectExists, ObjectNotFound, StorageError
from contentflow_backupd.storage.base import (
    ObjectInfo,
    Storage,
    StorageFeatures,
    object_lock_status,
    read_up_to,
)

T = TypeVar("T")
_CHUNK = 1 << 20
_log = structlog.get_logger(__name__)


class RetryingStorage:
    """Wraps ``inner`` and retries its transient failures. See the module docstring."""

    def __init__(
        self,
        inner: Storage,
        *,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._inner = inner
        self.policy = Backoff(first=base_delay, cap=max_delay, jitter=True, attempts=attempts)
        self._sleep = sleep
        self._rng = rng

    @property
    def inner(self) -> Storage:
        return self._inner

    @property
    def features(self) -> StorageFeatures:
        return self._inner.features

    @property
    def url(self) -> str:
        return self._inner.url

    def _backoff(self, key: str | None, attempt: int, exc: StorageError) -> None:
        """Raise ``exc`` unless it is retryable and attempts remain; else log and sleep."""
        if not exc.retryable or not self.policy.may_retry(attempt):
            raise exc
        delay = self.policy.delay(attempt, self._rng)
        _log.warning(
            "storage_retry",
            key=key,
            attempt=attempt,
            attempts=self.policy.attempts,
            delay=round(delay, 3),
            error=str(exc),
            error_type=type(exc).__name__,
        )
        self._sleep(delay)

    def _call(self, key: str | None, fn: Callable[[], T]) -> T:
        attempt = 1
        while True:
            try:
                return fn()
            except StorageError as exc:
                self._backoff(key, attempt, exc)
            attempt += 1

    # -- operations -----------------------------------------------------------------------

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False, sync: bool = True) -> int:
        try:
            start = stream.tell()
        except (OSError, ValueError, AttributeError):
            return self._inner.put(key, stream, if_absent=if_absent, sync=sync)
        attempt = 1
        while True:
            try:
                if attempt > 1:
                    stream.seek(start)
                return self._inner.put(key, stream, if_absent=if_absent, sync=sync)
            except ObjectExists:
                if attempt == 1:
                    raise
                size = self._own_write_landed(key, stream, start)
                if size is None:
                    raise
                _log.info("storage_put_found_own_write", key=key, attempt=attempt, size=size)
                return size
            except StorageError as exc:
                self._backoff(key, attempt, exc)
            attempt += 1

    def _own_write_landed(self, key: str, stream: BinaryIO, start: int) -> int | None:
        """The size of ``stream`` if the object under ``key`` holds exactly its bytes."""
        size = stream.seek(0, io.SEEK_END) - start
        try:
            if self._call(key, lambda: self._inner.stat(key)).size != size:
                return None
            stream.seek(start)
            with self._call(key, lambda: self._inner.open(key)) as stored:
                remaining = size
                while remaining:
                    want = min(_CHUNK, remaining)
                    ours = read_up_to(stream, want)
                    if not ours or ours != read_up_to(stored, want):
                        return None
                    remaining -= len(ours)
                return size if not stored.read(1) else None
        except ObjectNotFound:
            return None  # deleted meanwhile: report the ObjectExists we got

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        return self._call(key, lambda: self._inner.open(key, offset, length))

    def get(self, key: str) -> bytes:
        return self._call(key, lambda: self._inner.get(key))

    def stat(self, key: str) -> ObjectInfo:
        return self._call(key, lambda: self._inner.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        last: str | None = None
        attempt = 1
        while True:
            try:
                for info in self._inner.list(prefix):
                    if last is not None and info.key <= last:
                        continue
                    last = info.key
                    attempt = 1
                    yield info
                return
            except StorageError as exc:
                self._backoff(prefix, attempt, exc)
            attempt += 1

    def delete(self, key: str) -> None:
        self._call(key, lambda: self._inner.delete(key))

    def object_lock_status(self) -> tuple[bool, str | None, str]:
        """Forwards the optional :class:`~contentflow_backupd.storage.base.ObjectLockReport`
        (``features`` says whether the inner storage has it), retried like every call."""
        return self._call(None, lambda: object_lock_status(self._inner))

    def flush(self) -> None:
        self._inner.flush()  # not retried: a failed fsync may have lost data, the caller must know

    def close(self) -> None:
        self._inner.close()
