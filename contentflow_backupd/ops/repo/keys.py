"""Key management: list, add and remove key-encryption keys, rotate and retire data keys.

- ``list_keys``: every KEK (id, kind, created, last used) and every data key (id, created,
  ``active``, how many objects need it). The count reads the envelope header of every encrypted
  object of the repository (a ranged read of its first bytes): exact whatever wrote the object
  (backups, WAL, audit copies, other clusters), and affordable for a command run by hand.
- ``add_kek`` / ``remove_kek``: another KEK wrapping the same master key; removing refuses the
  last KEK and the KEK that opened the repository in this very command (so the KEKs that remain
  include one whose secret is known to work: run ``keys remove`` with another key configured).
- ``rotate_data_key``: a new active data key in a new keyset version; no object is rewritten.
  The previous key is marked deactivated, and is not retired before ``retire_grace`` has passed
  (processes that opened the keyset earlier re-read it within ``KEY_REFRESH_S``).
- ``retire_unused_data_keys``: removes from the keyset every inactive data key past its grace
  that no backup object (chunk, manifest, WAL) needs any more. It runs at the end of ``keys
  rotate`` and after retention deleted something. The scan stops as soon as every candidate is
  seen in use. Audit copies (``audit/``, kept for ever) would otherwise pin an old key for ever:
  those sealed with a candidate key are re-sealed (same records, active key) before it retires;
  backup objects are never rewritten.

Every change is logged and audited (``key_add``, ``key_remove``, ``key_rotate``, ``key_retire``
with the key ids as objects).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

import structlog

from contentflow_backupd.errors import BackupdError, KeyMissing, ObjectNotFound, RepositoryError
from contentflow_backupd.model import iso, utcnow
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.crypto import ENVELOPE_HEAD_MAX, KekSecret, envelope_key_id
from contentflow_backupd.repository.keys import KekInfo
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.seal import write_seal
from contentflow_backupd.storage.base import Storage, read_up_to

if TYPE_CHECKING:
    from contentflow_backupd.catalog.base import AuditCatalog

log = structlog.get_logger(__name__)

DEFAULT_RETIRE_GRACE_S = 15 * 60.0
"""Default of ``keys rotate --retire-grace``: far above ``KEY_REFRESH_S`` (60 s), so a process
that sealed with the previous key before seeing the rotation has landed its object by then."""
RESEALABLE_PREFIXES = ("audit/", "repo.seal")
"""Objects that may be re-sealed with the active key to let an old data key retire."""
_BATCH = 256


@dataclass
class KeyUsers:
    """Objects sealed with one data key: how many, and which of them are re-sealable."""

    objects: int = 0
    pinned: int = 0
    """Objects that cannot be re-sealed (backup data)."""
    resealable: list[str] = field(default_factory=list)


def _encrypted_objects(storage: Storage) -> Iterator[str]:
    for info in storage.list(""):
        if info.key != layout.REPO_FILE and not info.key.startswith(layout.KEYS_PREFIX):
            yield info.key


def _head_key_id(storage: Storage, key: str) -> str | None:
    """The data key id of object ``key`` (a ranged read of its envelope header; None: deleted
    meanwhile, or not an envelope)."""
    try:
        with storage.open(key, 0, ENVELOPE_HEAD_MAX) as stream:
            return envelope_key_id(read_up_to(stream, ENVELOPE_HEAD_MAX))
    except ObjectNotFound:
        return None


def count_key_users(
    storage: Storage, *, watch: set[str] | None = None, concurrency: int | None = None
) -> dict[str, KeyUsers]:
    """Users of every data key, from the envelope header of every object (objects deleted
    meanwhile are skipped). With ``watch``, stops once each watched key has a pinned user (the
    counts are then partial)."""
    users: dict[str, KeyUsers] = {}
    workers = max(1, concurrency or storage.features.max_concurrency)

    def head(key: str) -> tuple[str, str | None]:
        return key, _head_key_id(storage, key)

    keys = _encrypted_objects(storage)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyscan") as pool:
        while batch := list(islice(keys, _BATCH)):
            for key, kid in pool.map(head, batch):
                if kid is None:
                    continue
                u = users.setdefault(kid, KeyUsers())
                u.objects += 1
                if key.startswith(RESEALABLE_PREFIXES):
                    u.resealable.append(key)
                else:
                    u.pinned += 1
            if watch is not None and all(users.get(k, KeyUsers()).pinned for k in watch):
                break
    return users


# -- list --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyReport:
    keks: list[KekInfo]
    data_keys: list[dict[str, Any]]
    opened_with: str

    def to_json(self) -> dict[str, Any]:
        return {
            "key_encryption_keys": [
                {**k.to_json(), "opened_with": k.id == self.opened_with} for k in self.keks
            ],
            "data_keys": self.data_keys,
        }


def list_keys(repo: Repository) -> KeyReport:
    repo.refresh_keys()
    keyset = _keyset(repo)
    users = count_key_users(repo.storage)
    data = [
        {
            "id": k.id,
            "created": k.created_at,
            "active": k.id == keyset.active,
            "objects": users.get(k.id, KeyUsers()).objects,
            "deactivated": k.deactivated_at,
            "retire_after": k.retire_after,
        }
        for k in keyset.data_keys.values()
    ]
    return KeyReport(repo.keys.keks(), data, repo.kek_id)


def _keyset(repo: Repository) -> Any:
    if repo.opened_keys is None:
        raise RepositoryError("this repository object was built without its key hierarchy")
    return repo.opened_keys.keyset


# -- KEKs ----------------------------------------------------------------------------------------
def _audit(
    catalog: AuditCatalog | None,
    action: str,
    outcome: str,
    objects: Sequence[str],
    details: dict[str, Any],
    repo: Repository,
) -> None:
    if catalog is None:
        return
    from contentflow_backupd.ops.audit import record_event

    record_event(catalog, action=action, outcome=outcome, objects=objects, details=details, repo=repo)


def add_kek(repo: Repository, secret: KekSecret, catalog: AuditCatalog | None) -> str:
    """Add a KEK for ``secret``; returns its id. Refuses a secret that already opens a KEK."""
    try:
        existing = repo.keys.find_opening(secret)
        if existing is not None:
            raise RepositoryError(
                f"{secret.source} already opens key {existing} of repository {repo.id}",
                hint="`keys list` shows the repository's keys",
            )
        assert repo.opened_keys is not None
        kek_id, opened = repo.keys.add_kek(repo.opened_keys, secret, iso(utcnow()) or "")
    except BackupdError as exc:
        _audit(catalog, "key_add", "failed", [], {"kind": secret.kind, "error": exc.message}, repo)
        raise
    repo.use_keys(opened)
    write_seal(repo)
    log.info("key_added", kek_id=kek_id, kind=secret.kind, repository_id=repo.id)
    _audit(catalog, "key_add", "succeeded", [kek_id], {"kind": secret.kind}, repo)
    return kek_id


def remove_kek(repo: Repository, kek_id: str, catalog: AuditCatalog | None) -> None:
    """Remove KEK ``kek_id``. Refuses an unknown id, the last KEK, and the KEK in use."""
    try:
        keks = {k.id: k for k in repo.keys.keks()}
        if kek_id not in keks:
            raise KeyMissing(
                f"repository {repo.id} has no key {kek_id} (it has: {', '.join(keks) or 'none'})",
                hint="`keys list` shows the repository's keys",
            )
        if len(keks) == 1:
            raise RepositoryError(
                f"refusing to remove {kek_id}: it is the last key of repository {repo.id}, and "
                "without a key the backups cannot be read",
                hint="add another key first (`keys add`)",
            )
        if kek_id == repo.kek_id:
            others = ", ".join(k for k in keks if k != kek_id)
            raise RepositoryError(
                f"refusing to remove {kek_id}: it is the key this command opened the repository with",
                hint=f"configure the secret of another key ({others}) and run `keys remove {kek_id}` again",
            )
        repo.keys.remove_kek(kek_id)
    except BackupdError as exc:
        _audit(catalog, "key_remove", "failed", [kek_id], {"error": exc.message}, repo)
        raise
    write_seal(repo)
    log.info("key_removed", kek_id=kek_id, kind=keks[kek_id].kind, repository_id=repo.id)
    _audit(catalog, "key_remove", "succeeded", [kek_id], {"kind": keks[kek_id].kind}, repo)


# -- data keys -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RotateResult:
    previous: str
    active: str
    retired: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"previous": self.previous, "active": self.active, "retired": self.retired}


def rotate_data_key(
    repo: Repository,
    catalog: AuditCatalog | None,
    *,
    retire_grace_s: float = DEFAULT_RETIRE_GRACE_S,
    now: datetime | None = None,
) -> RotateResult:
    """A new active data key; then retire what can be retired. No object is rewritten."""
    now = now or utcnow()
    assert repo.opened_keys is not None
    previous = repo.opened_keys.keyset.active
    retire_after = iso(now + timedelta(seconds=max(0.0, retire_grace_s))) or ""
    try:
        opened = repo.keys.update_keyset(
            repo.opened_keys, lambda ks: ks.rotated(iso(now) or "", retire_after)
        )
    except BackupdError as exc:
        _audit(catalog, "key_rotate", "failed", [previous], {"error": exc.message}, repo)
        raise
    repo.use_keys(opened)
    active = opened.keyset.active
    previous = next(
        (k.id for k in opened.keyset.data_keys.values() if k.deactivated_at == iso(now)), previous
    )
    write_seal(repo)
    log.info("data_key_rotated", previous=previous, active=active, retire_after=retire_after)
    _audit(catalog, "key_rotate", "succeeded", [previous, active], {"retire_after": retire_after}, repo)
    retired = retire_unused_data_keys(repo, catalog, now=now)
    return RotateResult(previous, active, retired)


def retire_unused_data_keys(
    repo: Repository, catalog: AuditCatalog | None, *, now: datetime | None = None
) -> list[str]:
    """Remove from the keyset the inactive data keys past ``retire_after`` that no backup
    object needs (re-sealing the audit copies that still do); returns their ids."""
    now = now or utcnow()
    repo.refresh_keys()
    keyset = _keyset(repo)
    candidates = {
        k.id
        for k in keyset.data_keys.values()
        if k.id != keyset.active and (k.retire_after is None or datetime.fromisoformat(k.retire_after) <= now)
    }
    if not candidates:
        return []
    users = count_key_users(repo.storage, watch=candidates)
    free = {k for k in candidates if not users.get(k, KeyUsers()).pinned}
    for kid in sorted(free):
        for key in users.get(kid, KeyUsers()).resealable:
            repo.put_object(key, repo.get_object(key))  # same plaintext, sealed with the active key
            log.info("object_resealed", key=key, data_key=kid, active=repo.active_data_key_id)
    if not free:
        return []
    assert repo.opened_keys is not None
    try:
        opened = repo.keys.update_keyset(
            repo.opened_keys, lambda ks: ks.without({k for k in free if k in ks.data_keys and k != ks.active})
        )
    except BackupdError as exc:
        _audit(catalog, "key_retire", "failed", sorted(free), {"error": exc.message}, repo)
        raise
    repo.use_keys(opened)
    retired = sorted(free)
    for kid in retired:
        log.info("data_key_retired", data_key=kid, repository_id=repo.id)
    _audit(catalog, "key_retire", "succeeded", retired, {}, repo)
    return retired


def retire_after_retention(repo: Repository, catalog: AuditCatalog | None) -> list[str]:
    """``retire_unused_data_keys`` for retention: never raises (logged as an error)."""
    try:
        return retire_unused_data_keys(repo, catalog)
    except BackupdError as exc:
        log.error("data_key_retirement_failed", error=exc.message)
        return []
