"""Object versions of an S3 bucket, for :mod:`contentflow_backupd.storage.s3` only.

A bucket with Object Lock is versioned: a ``DeleteObject`` without a version id only adds a
delete marker (the data stays, and keeps costing), and a ``PutObject`` over an existing key adds
a version. Object Lock protects versions, not keys. These helpers speak botocore and raise its
errors as they come: :class:`~contentflow_backupd.storage.s3.S3Storage` calls them inside its one
error-translating context.

- :func:`key_versions`: every version and delete marker of one exact key.
- :func:`versions_as_of`: for each key under a prefix, the version that was current at a given
  time (the newest one written at or before it), unless that is a delete marker: the bucket as
  it was then, for restoring after tampering (``BACKUPD_S3__AS_OF``).
- :func:`lock_of`: the lock mode and retain-until date of one version (from ``HeadObject``).
- :func:`lock_detail`: the sentence ``object_lock_status`` reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    size: int
    modified: datetime | None
    delete_marker: bool = False


def _versions(client: S3Client, bucket: str, prefix: str) -> Iterator[Version]:
    """Versions and delete markers under ``prefix``: by key, newest first within a key."""
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        found = [
            Version(v["Key"], v["VersionId"], v.get("Size", 0), v.get("LastModified"))
            for v in page.get("Versions", [])
        ] + [
            Version(m["Key"], m["VersionId"], 0, m.get("LastModified"), delete_marker=True)
            for m in page.get("DeleteMarkers", [])
        ]
        # Within a key, S3 lists newest first; markers come in their own list: merge by time.
        found.sort(key=lambda v: (v.key, -(v.modified.timestamp() if v.modified else 0.0)))
        yield from found


def key_versions(client: S3Client, bucket: str, key: str) -> list[Version]:
    """Every version and delete marker of exactly ``key`` (not of keys it is a prefix of)."""
    return [v for v in _versions(client, bucket, key) if v.key == key]


def versions_as_of(client: S3Client, bucket: str, prefix: str, as_of: datetime) -> dict[str, Version]:
    """Key -> the version current at ``as_of``, for every key under ``prefix`` that existed then
    (its newest version written at or before ``as_of`` is not a delete marker)."""
    current: dict[str, Version] = {}
    seen: set[str] = set()
    for v in _versions(client, bucket, prefix):
        if v.key in seen or v.modified is None or v.modified > as_of:
            continue
        seen.add(v.key)  # the first one at or before as_of is the newest of them
        if not v.delete_marker:
            current[v.key] = v
    return current


def lock_of(
    client: S3Client, bucket: str, key: str, version_id: str
) -> tuple[str | None, datetime | None, bool]:
    """``(mode, retain_until, legal_hold)`` of one version. S3 returns the lock fields only to
    callers allowed ``s3:GetObjectRetention`` / ``s3:GetObjectLegalHold``; otherwise they are
    None / False."""
    head = client.head_object(Bucket=bucket, Key=key, VersionId=version_id)
    return (
        head.get("ObjectLockMode"),
        head.get("ObjectLockRetainUntilDate"),
        head.get("ObjectLockLegalHoldStatus") == "ON",
    )


def lock_detail(
    bucket: str, enabled: bool, mode: str | None, default_mode: str | None, period: str | None
) -> str:
    """What ``check`` says about the bucket's Object Lock and ``BACKUPD_S3__OBJECT_LOCK``."""
    default = f"; bucket default retention {default_mode} {period}" if default_mode else ""
    if enabled and mode:
        return f"bucket {bucket!r} has Object Lock enabled; objects are written in {mode} mode{default}"
    if enabled:
        return (
            f"bucket {bucket!r} has Object Lock enabled{default}, but BACKUPD_S3__OBJECT_LOCK is "
            "not set: backups are written without a retain-until date"
        )
    if mode:
        return (
            f"BACKUPD_S3__OBJECT_LOCK={mode} but bucket {bucket!r} does not have Object Lock "
            "enabled: enable it (versioning, then PutObjectLockConfiguration) or unset the setting"
        )
    return f"bucket {bucket!r} does not have Object Lock enabled (BACKUPD_S3__OBJECT_LOCK is not set)"
