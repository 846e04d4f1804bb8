"""Storage in a dict: for unit tests and dry runs. Thread-safe; contents die with the process."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import BinaryIO

from contentflow_backupd.errors import ObjectExists, ObjectNotFound, StorageError
from contentflow_backupd.storage.base import ObjectInfo, StorageFeatures, validate_key

_FEATURES = StorageFeatures(
    atomic_put=True,
    ranged_get=True,
    create_only=True,
    object_lock=False,
    max_concurrency=8,
    local_path=False,
)


class MemoryStorage:
    """Objects in a dict guarded by a lock. A ``put`` reads the whole stream before storing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, datetime]] = {}

    @property
    def features(self) -> StorageFeatures:
        return _FEATURES

    @property
    def url(self) -> str:
        return f"memory://{id(self):x}"

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False, sync: bool = True) -> int:
        validate_key(key)
        data = stream.read()
        entry = (bytes(data), datetime.now(UTC))
        with self._lock:
            if if_absent and key in self._objects:
                raise ObjectExists(f"object already exists: {key}", key=key)
            self._objects[key] = entry
        return len(data)

    def _data(self, key: str) -> tuple[bytes, datetime]:
        validate_key(key)
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise ObjectNotFound(f"no such object: {key}", key=key) from None

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"invalid range offset={offset} length={length}", key=key)
        data, _ = self._data(key)
        end = len(data) if length is None else offset + length
        return io.BytesIO(data[offset:end])

    def get(self, key: str) -> bytes:
        return self._data(key)[0]

    def stat(self, key: str) -> ObjectInfo:
        data, modified = self._data(key)
        return ObjectInfo(key=key, size=len(data), modified=modified)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # A snapshot taken at the first ``next``; Python's str order is code point order,
        # which is the byte order of the keys' UTF-8.
        with self._lock:
            items = sorted(
                (key, len(data), modified)
                for key, (data, modified) in self._objects.items()
                if key.startswith(prefix)
            )
        for key, size, modified in items:
            yield ObjectInfo(key=key, size=size, modified=modified)

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
