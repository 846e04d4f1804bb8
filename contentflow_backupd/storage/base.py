"""The storage contract: opaque bytes under string keys.

Storage never sees plaintext: the repository layer compresses and encrypts before ``put`` and
authenticates after ``open``. Drivers (``local``, ``s3``, ``memory``) and wrappers (``retry``)
all implement :class:`Storage`; one conformance suite (``tests/storage/contract.py``) runs against
each of them.

Keys are relative, ``/``-separated, without a leading slash, ``.`` or ``..`` segments; a driver
maps them under its own root (a directory, a bucket prefix). A key may not also be a "folder" of
other keys (``a/b`` and ``a/b/c``): a filesystem cannot hold both, so drivers may refuse the
second with a non-retryable ``StorageError``. Every driver must honour:

- ``put(key, stream)``: reads ``stream`` to EOF and stores it as the whole object under ``key``,
  replacing any existing object. Atomic: a reader sees the old object, the new object, or (if
  there was none) ``ObjectNotFound``; never a partial object, also after a crash mid-write. Returns
  only once the object is durable. Returns the number of bytes stored. If the backend acknowledged
  the write but the stored object is not whole, raise ``IncompleteWrite``. ``stream`` is read from
  its current position, and may be read more than once by a retrying wrapper (which rewinds to
  that position): callers pass a seekable stream (``io.BytesIO`` or a file).
- ``put(key, stream, sync=False)``: as above, but the driver may postpone making the object
  durable until the next ``flush()`` (the object is visible and whole at once either way; only
  its survival of a power loss is postponed). Used for chunks, which only matter once the
  manifest that names them is written, after a ``flush()``. Drivers whose puts are durable when
  acknowledged (S3) ignore it.
- ``flush()``: makes every put made with ``sync=False`` durable before it returns.
- ``put(key, stream, if_absent=True)``: as above, but raises ``ObjectExists`` and leaves the
  existing object untouched when ``key`` already exists. Drivers whose ``features.create_only`` is
  False emulate it with ``stat`` then ``put`` (racy; documented). When a retried attempt finds
  the object already there with identical bytes (an earlier attempt landed), it succeeds.
- ``open(key, offset=0, length=None)``: a readable binary stream of the object's bytes from
  ``offset``, at most ``length`` bytes; the caller closes it. Missing key: ``ObjectNotFound``.
  An offset at or past the end gives an empty stream; a negative offset or length is a
  ``StorageError``.
- ``get(key)``: the whole object as ``bytes`` (convenience over ``open``).
- ``stat(key)``: ``ObjectInfo`` with size; missing key: ``ObjectNotFound``.
- ``list(prefix)``: lazily yields ``ObjectInfo`` for every key that starts with ``prefix``
  (a plain string prefix, not a directory), in ascending byte order of the key. Objects being
  written and temp files are never listed; a prefix that no valid key can start with yields
  nothing.
- ``delete(key)``: removes the object; deleting a missing key succeeds (idempotent).
- ``features``: what the backend can do, as data. Callers branch on it, never on the class.

Optional abilities are separate protocols, small and named after what they answer; a storage
that has one says so in its ``features`` (a wrapper forwards both the flag and the call), and
callers reach it through the helper beside the protocol, never through ``isinstance``:

- :class:`ObjectLockReport` (``features.lock_report``): the bucket's Object Lock configuration
  for ``check``; :func:`object_lock_status` asks it of any storage.

Errors: only ``contentflow_backupd.errors.StorageError`` subclasses leave a driver; transient
failures are ``StorageUnavailable`` (``retryable``), permanent ones are not retryable.
Drivers hold no retry loops: :mod:`contentflow_backupd.storage.retry` wraps them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol, cast, runtime_checkable

from contentflow_backupd.errors import StorageError


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None


@dataclass(frozen=True)
class StorageFeatures:
    """Capabilities of a backend, as data."""

    atomic_put: bool = True
    """A reader never observes a partially written object."""
    ranged_get: bool = True
    """``open`` with offset/length is served by the backend, not by reading and discarding."""
    create_only: bool = False
    """``put(..., if_absent=True)`` is atomic in the backend (no stat-then-put race)."""
    object_lock: bool = False
    """Objects can be made immutable until a date (S3 Object Lock)."""
    max_concurrency: int = 8
    """A sensible upper bound of parallel requests for this backend."""
    local_path: bool = False
    """Objects live on this machine's filesystem."""
    lock_report: bool = False
    """It answers :class:`ObjectLockReport` (the bucket's Object Lock configuration)."""


@runtime_checkable
class Storage(Protocol):
    """Opaque-bytes object storage. See the module docstring for the full contract."""

    @property
    def features(self) -> StorageFeatures: ...

    @property
    def url(self) -> str:
        """A display URL of the storage root, without credentials."""
        ...

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False, sync: bool = True) -> int: ...

    def flush(self) -> None:
        """Make every ``put(..., sync=False)`` that returned before this call durable.

        Callable from any thread while other puts go on (a writer flushes in the background as
        it streams, then once more before its commit marker); it returns only when those objects
        are durable, also while another flush runs at the same time."""
        ...

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO: ...

    def get(self, key: str) -> bytes: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def close(self) -> None:
        """Release connections and threads. Idempotent."""
        ...


class ObjectLockReport(Protocol):
    """Optional ability (``features.lock_report``): what the store says about Object Lock."""

    def object_lock_status(self) -> tuple[bool, str | None, str]:
        """``(supported, mode, detail)``: ``supported``, the store has Object Lock enabled;
        ``mode``, the mode objects are written with (lower case), None when none is set;
        ``detail``, one sentence for the user. Storage errors propagate."""
        ...


def object_lock_status(storage: Storage) -> tuple[bool, str | None, str]:
    """:meth:`ObjectLockReport.object_lock_status` of ``storage``; a storage without the ability
    (``features.lock_report`` False) gives ``(False, None, ...)``."""
    if not storage.features.lock_report:
        return False, None, f"{storage.url} is not an S3 bucket: no object lock"
    return cast(ObjectLockReport, storage).object_lock_status()


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid relative object key, else raise ``StorageError``."""
    if not key or key.startswith("/") or key.endswith("/") or "\\" in key or "\x00" in key:
        raise StorageError(f"invalid object key {key!r}", key=key)
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise StorageError(f"invalid object key {key!r}", key=key)
    return key


def put_bytes(storage: Storage, key: str, data: bytes, *, if_absent: bool = False, sync: bool = True) -> int:
    """``put`` for data already in memory."""
    return storage.put(key, io.BytesIO(data), if_absent=if_absent, sync=sync)


def read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, fewer only at EOF (``read`` may return short counts)."""
    buf = bytearray()
    while len(buf) < size:
        chunk = stream.read(size - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)
