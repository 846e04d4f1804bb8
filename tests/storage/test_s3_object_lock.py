"""S3Storage with Object Lock and the as-of view, on moto's server over HTTP.

moto enforces Object Lock on buckets created with ``ObjectLockEnabledForBucket`` (versioned).
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from contentflow_backupd.errors import ObjectLocked, ObjectNotFound, StorageError
from contentflow_backupd.storage.base import object_lock_status, put_bytes
from contentflow_backupd.storage.local import LocalStorage
from contentflow_backupd.storage.retry import RetryingStorage
from contentflow_backupd.storage.s3 import MiB, S3Storage
from tests.storage.conftest import S3_PREFIX, make_s3

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.s3

UNTIL = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)


def locked_until(key: str) -> datetime | None:
    return None if key in ("repo.json",) or key.startswith("keys/") else UNTIL


@pytest.fixture
def lock_bucket(s3_admin: S3Client) -> str:
    name = f"lock-{uuid.uuid4().hex[:16]}"
    s3_admin.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name  # locked versions cannot be removed: the bucket stays on moto


@pytest.fixture
def locked(moto_endpoint: str, lock_bucket: str) -> Iterator[S3Storage]:
    storage = make_s3(moto_endpoint, lock_bucket, object_lock="GOVERNANCE", retain_until=locked_until)
    yield storage
    storage.close()


def versions(admin: S3Client, bucket: str, key: str) -> list[str]:
    listed = admin.list_object_versions(Bucket=bucket, Prefix=f"{S3_PREFIX}/{key}")
    return [v["VersionId"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])]


def test_puts_carry_the_lock_small_and_multipart_but_not_for_unlocked_keys(
    locked: S3Storage, s3_admin: S3Client, lock_bucket: str
) -> None:
    put_bytes(locked, "main/chunks/g/aa/small", b"small")
    locked.put("main/chunks/g/aa/big", io.BytesIO(b"x" * (6 * MiB)))
    put_bytes(locked, "repo.json", b"{}")
    assert locked.features.object_lock
    for key in ("main/chunks/g/aa/small", "main/chunks/g/aa/big"):
        head = s3_admin.head_object(Bucket=lock_bucket, Key=f"{S3_PREFIX}/{key}")
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert head["ObjectLockRetainUntilDate"] == UNTIL
    assert "ObjectLockMode" not in s3_admin.head_object(Bucket=lock_bucket, Key=f"{S3_PREFIX}/repo.json")


def test_a_locked_delete_is_refused_once_without_retries_and_the_object_stays(
    locked: S3Storage, s3_admin: S3Client, lock_bucket: str
) -> None:
    put_bytes(locked, "main/backups/m.json", b"manifest")
    sleeps: list[float] = []
    retrying = RetryingStorage(locked, attempts=5, sleep=sleeps.append)
    with pytest.raises(ObjectLocked, match="GOVERNANCE object lock until"):
        retrying.delete("main/backups/m.json")
    assert sleeps == []
    assert locked.get("main/backups/m.json") == b"manifest"


def test_delete_removes_every_version_of_an_unlocked_key(
    locked: S3Storage, s3_admin: S3Client, lock_bucket: str
) -> None:
    put_bytes(locked, "keys/k.json", b"1")
    put_bytes(locked, "keys/k.json", b"2")
    put_bytes(locked, "keys/k.json.old", b"other key")
    assert len(versions(s3_admin, lock_bucket, "keys/k.json")) == 3  # includes k.json.old
    locked.delete("keys/k.json")
    assert versions(s3_admin, lock_bucket, "keys/k.json") == versions(
        s3_admin, lock_bucket, "keys/k.json.old"
    )
    with pytest.raises(ObjectNotFound):
        locked.stat("keys/k.json")
    locked.delete("keys/k.json")  # idempotent


def test_object_lock_status(moto_endpoint: str, lock_bucket: str, s3_bucket: str, tmp_path: Path) -> None:
    on = RetryingStorage(
        make_s3(moto_endpoint, lock_bucket, object_lock="COMPLIANCE", retain_until=locked_until)
    )
    supported, mode, detail = object_lock_status(on)
    assert (supported, mode) == (True, "compliance") and "compliance mode" in detail
    assert object_lock_status(make_s3(moto_endpoint, lock_bucket))[:2] == (True, None)
    asked = make_s3(moto_endpoint, s3_bucket, object_lock="GOVERNANCE", retain_until=locked_until)
    supported, mode, detail = object_lock_status(asked)
    assert (supported, mode) == (False, "governance")
    assert "does not have Object Lock enabled" in detail
    with pytest.raises(StorageError, match="object-locked write") as refused:
        put_bytes(asked, "main/wal/1/x", b"x")
    assert refused.value.hint and "BACKUPD_S3__OBJECT_LOCK" in refused.value.hint
    assert object_lock_status(LocalStorage(tmp_path))[:2] == (False, None)


def test_the_as_of_view_reads_the_versions_current_then_and_writes_nothing(
    locked: S3Storage, moto_endpoint: str, lock_bucket: str
) -> None:
    put_bytes(locked, "main/backups/m.json", b"good manifest")
    put_bytes(locked, "main/chunks/g/aa/c", b"good chunk")
    time.sleep(1.1)  # LastModified has a resolution of one second
    then = datetime.now(UTC)
    time.sleep(1.1)
    put_bytes(locked, "main/backups/m.json", b"ransom")
    make_s3(moto_endpoint, lock_bucket).delete("main/chunks/g/aa/c")  # a delete marker, as an attacker
    put_bytes(locked, "main/wal/1/new", b"written later")

    view = make_s3(moto_endpoint, lock_bucket, as_of=then)
    assert view.get("main/backups/m.json") == b"good manifest"
    assert view.get("main/chunks/g/aa/c") == b"good chunk"
    with view.open("main/chunks/g/aa/c", offset=5, length=3) as f:
        assert f.read() == b"chu"
    assert view.stat("main/chunks/g/aa/c").size == len(b"good chunk")
    assert [i.key for i in view.list("main/")] == ["main/backups/m.json", "main/chunks/g/aa/c"]
    with pytest.raises(ObjectNotFound):
        view.get("main/wal/1/new")
    with pytest.raises(StorageError, match="read-only view"):
        put_bytes(view, "x", b"x")
    with pytest.raises(StorageError, match="read-only view"):
        view.delete("main/backups/m.json")
    assert locked.get("main/backups/m.json") == b"ransom"
