"""Retain-until dates of S3 Object Lock, as pure functions of the retention policy.

With ``BACKUPD_S3__OBJECT_LOCK`` set, the S3 driver writes every object for which
:func:`retain_until` gives a date with that date as its ``ObjectLockRetainUntilDate``, and
retention (``retention_plan``) uses the same functions, applied to an object's modified time, to
know until when it may not delete it. The contract of every rule: the date is never later than
the earliest moment retention could delete the object, plus ``policy.lock_margin_s``; so
retention is never held up by more than the margin (unless the retention settings were shortened
after the object was written: apply then meets a refusal, records it and plans again next run).

Which objects are locked (``written`` is when the object was written):

- ``<cluster>/backups/<id>.json`` (manifests): ``written`` + ``retention.full`` for a full
  backup, + ``retention.incremental`` for an incremental, + margin. A backup is deleted only once
  it finished more than that long ago, and it finished before its manifest was written.
- ``<cluster>/chunks/<generation>/...``: the later of ``written`` + the shorter of the two
  backup periods and the generation's start (its name is the id of the full backup that started
  it) + ``retention.full``, + margin. A chunk lives as long as its generation, which lives at
  least as long as the backup that wrote it and as its full backup. A generation whose name is
  not a backup id: ``written`` + the shorter period + margin.
- ``<cluster>/wal/...``: ``written`` + ``retention.wal`` + margin (a WAL file is deleted once
  older than ``retention.wal``; ``.history`` files, never deleted, get the same date).
- ``audit/...`` (audit trail copies, written once and never deleted): ``written`` +
  ``retention.full`` + margin.
- Everything else is not locked: ``repo.json`` and ``keys/`` must stay replaceable (key
  rotation, ``keys add``/``remove``).

Locks may end before retention deletes an object (the newest full backup is kept whatever its
age; WAL a kept backup needs outlives ``retention.wal``): from then on such an object is no longer
immutable, only retained. docs/security.md says so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from contentflow_backupd.repository.layout import is_backup_id

if TYPE_CHECKING:
    from contentflow_backupd.ops.retention.plan import RetentionPolicy


def _after(written: datetime, seconds: float) -> datetime:
    return written + timedelta(seconds=seconds)


def manifest_until(policy: RetentionPolicy, backup_id: str, written: datetime) -> datetime | None:
    """Retain-until of the manifest of ``backup_id`` written at ``written`` (None: no lock)."""
    if policy.lock_margin_s is None:
        return None
    period = policy.full_s if "-full-" in backup_id else policy.incremental_s
    return _after(written, period + policy.lock_margin_s)


def generation_start(generation: str) -> datetime | None:
    """The start time in a generation's name (the id of its full backup), if it is one."""
    if not is_backup_id(generation):
        return None
    return datetime.strptime(generation[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def chunk_until(policy: RetentionPolicy, generation: str, written: datetime) -> datetime | None:
    """Retain-until of a chunk of ``generation`` written at ``written`` (None: no lock)."""
    if policy.lock_margin_s is None:
        return None
    until = _after(written, min(policy.full_s, policy.incremental_s))
    start = generation_start(generation)
    if start is not None:
        until = max(until, _after(start, policy.full_s))
    return _after(until, policy.lock_margin_s)


def wal_until(policy: RetentionPolicy, written: datetime) -> datetime | None:
    """Retain-until of an archived WAL file written at ``written`` (None: no lock)."""
    if policy.lock_margin_s is None:
        return None
    return _after(written, policy.wal_s + policy.lock_margin_s)


def retain_until(policy: RetentionPolicy, key: str, written: datetime) -> datetime | None:
    """Retain-until of the object under repository ``key`` written at ``written``; None for
    objects that are not locked (see the module docstring)."""
    if policy.lock_margin_s is None:
        return None
    parts = key.split("/")
    if len(parts) < 3:
        return None
    if parts[1] == "backups" and len(parts) == 3 and parts[2].endswith(".json"):
        return manifest_until(policy, parts[2].removesuffix(".json"), written)
    if parts[1] == "chunks" and len(parts) > 3:
        return chunk_until(policy, parts[2], written)
    if parts[1] == "wal":
        return wal_until(policy, written)
    if parts[0] == "audit":
        return _after(written, policy.full_s + policy.lock_margin_s)
    return None
