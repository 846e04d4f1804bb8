"""The ``keys/`` part of a repository: KEK files, keyset versions and last-use marks.

::

    keys/<kek-id>.json          one key-encryption key: kind, KDF (scrypt salt, or the KMS key id
                                and the KMS-wrapped key), created, and the master key wrapped by it
    keys/keyset/<seq>.json      keyset version <seq> (12 digits), wrapped by the master key; the
                                highest one is current, older ones are deleted once a newer landed
    keys/used/<kek-id>.json     last-use mark of a KEK: rewritten (plaintext, no secret) when the
                                KEK opens the repository and the mark is older than an hour

Contracts:

- Nothing is written before the secret has opened the repository: ``open`` raises ``WrongKey``
  naming the repository's KEK ids when the secret opens none of them.
- Keyset updates are optimistic: the next version is written create-only (``if_absent``); a
  concurrent writer makes the loser re-read and re-apply its change, so no update is lost
  (drivers without ``features.create_only`` emulate it with stat-then-put: racy, documented there).
- The last-use mark is best effort: a storage error writing it is logged, never raised (a
  read-only restore machine can still open the repository).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from contentflow_backupd.errors import (
    BackupdError,
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    RepositoryError,
    StorageError,
    WrongKey,
)
from contentflow_backupd.model import iso, utcnow
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.crypto import (
    KEY_LEN,
    KekSecret,
    Keyset,
    derive_kek,
    kek_context,
    new_kek,
    open_keyset,
    seal_keyset,
    unwrap_keyset,
    unwrap_master,
    wrap_master,
)
from contentflow_backupd.storage.base import ObjectInfo, Storage, put_bytes

log = structlog.get_logger(__name__)

KEYSET_PREFIX = f"{layout.KEYS_PREFIX}keyset/"
USED_PREFIX = f"{layout.KEYS_PREFIX}used/"
USED_RESOLUTION = timedelta(hours=1)
"""A KEK's last-use mark is rewritten only when older than this: one small put per hour at most."""
_UPDATE_ATTEMPTS = 8


def keyset_key(seq: int) -> str:
    return f"{KEYSET_PREFIX}{seq:012d}.json"


def used_key(kek_id: str) -> str:
    return f"{USED_PREFIX}{kek_id}.json"


def _kek_id_of(key: str) -> str | None:
    rest = key[len(layout.KEYS_PREFIX) :]
    if not key.startswith(layout.KEYS_PREFIX) or "/" in rest or not rest.endswith(".json"):
        return None
    return rest[: -len(".json")]


def _seq_of(key: str) -> int | None:
    name = key[len(KEYSET_PREFIX) :]
    if not key.startswith(KEYSET_PREFIX) or not name.endswith(".json") or not name[:-5].isdigit():
        return None
    return int(name[:-5])


@dataclass(frozen=True)
class KekInfo:
    """One KEK file's plaintext description (no secret)."""

    id: str
    kind: str
    created_at: str | None
    doc: dict[str, Any] = field(repr=False)
    last_used_at: datetime | None = None
    kms_key_id: str | None = None

    @property
    def format(self) -> int:
        return 1 if "wrapped_keyset" in self.doc else 2

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "created": self.created_at,
            "last_used": iso(self.last_used_at),
        }
        if self.kms_key_id is not None:
            out["kms_key_id"] = self.kms_key_id
        return out


@dataclass(frozen=True)
class OpenedKeys:
    """What opening the repository's keys yields. ``master`` is None for a format 1 repository
    (keyset wrapped by the KEK itself; ``seq`` 0)."""

    kek_id: str
    kek: bytes = field(repr=False)
    master: bytes | None = field(repr=False)
    keyset: Keyset
    seq: int


@dataclass
class _Listing:
    keks: dict[str, ObjectInfo] = field(default_factory=dict)
    used: dict[str, ObjectInfo] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)


class KeyStore:
    """Reads and writes ``keys/`` of the repository ``repository_id`` on ``storage``."""

    def __init__(self, storage: Storage, repository_id: str) -> None:
        self.storage = storage
        self.repository_id = repository_id

    # -- reading ----------------------------------------------------------------------------
    def _list(self) -> _Listing:
        out = _Listing()
        for info in self.storage.list(layout.KEYS_PREFIX):
            if (kek_id := _kek_id_of(info.key)) is not None:
                out.keks[kek_id] = info
            elif info.key.startswith(USED_PREFIX) and info.key.endswith(".json"):
                out.used[info.key[len(USED_PREFIX) : -len(".json")]] = info
            elif (seq := _seq_of(info.key)) is not None:
                out.seqs.append(seq)
        out.seqs.sort()
        return out

    def _read_kek(self, kek_id: str, used: ObjectInfo | None = None) -> KekInfo | None:
        try:
            doc = json.loads(self.storage.get(layout.key_file(kek_id)))
        except (ValueError, ObjectNotFound):
            return None
        if not isinstance(doc, dict):
            return None
        raw_kdf = doc.get("kdf")
        kdf: dict[str, Any] = raw_kdf if isinstance(raw_kdf, dict) else {}
        return KekInfo(
            id=str(doc.get("id", kek_id)),
            kind=str(doc.get("kind")),
            created_at=doc.get("created_at"),
            doc=doc,
            last_used_at=used.modified if used is not None else None,
            kms_key_id=kdf.get("key_id") if kdf.get("name") == "aws-kms" else None,
        )

    def keks(self) -> list[KekInfo]:
        """Every KEK of the repository, by id."""
        listing = self._list()
        found = (self._read_kek(k, listing.used.get(k)) for k in sorted(listing.keks))
        return [k for k in found if k is not None]

    def _latest(self, master: bytes, seqs: Iterable[int] | None = None) -> tuple[int, Keyset]:
        for _ in range(_UPDATE_ATTEMPTS):
            known = sorted(seqs) if seqs is not None else self._list().seqs
            seqs = None
            if not known:
                raise RepositoryError(
                    f"repository {self.repository_id} has no keyset (keys/keyset/ is empty)",
                    hint="restore keys/ from a copy of the repository: without it the backups are lost",
                )
            seq = known[-1]
            try:
                doc = json.loads(self.storage.get(keyset_key(seq)))
                keyset = open_keyset(str(doc["wrapped_keyset"]), master, self.repository_id, seq)
            except ObjectNotFound:
                continue  # replaced by a newer version meanwhile: list again
            except (ValueError, KeyError, TypeError) as exc:
                raise RepositoryError(
                    f"keyset version {seq} of repository {self.repository_id} ({keyset_key(seq)}) is "
                    f"damaged: {type(exc).__name__}: {exc}",
                    hint="restore keys/ from a copy of the repository: without it the backups are lost",
                ) from None
            return seq, keyset
        raise RepositoryError(f"the keyset of repository {self.repository_id} keeps changing; try again")

    def _unlock(self, info: KekInfo, secret: KekSecret, seqs: list[int] | None = None) -> OpenedKeys:
        """Open with KEK ``info``; ``WrongKey`` when ``secret`` is not its secret."""
        doc = info.doc
        try:
            kek = derive_kek(secret, doc["kdf"], kek_context(self.repository_id, info.id))
            if "wrapped_keyset" in doc:
                keyset = unwrap_keyset(doc["wrapped_keyset"], kek, self.repository_id, info.id)
                return OpenedKeys(info.id, kek, None, keyset, 0)
            master = unwrap_master(doc["wrapped_master"], kek, self.repository_id, info.id)
        except (ValueError, KeyError, TypeError, MemoryError) as exc:
            raise IntegrityError(
                f"key file {layout.key_file(info.id)} of repository {self.repository_id} is damaged: "
                f"{type(exc).__name__}: {exc}",
                key=layout.key_file(info.id),
                hint="restore keys/ from a copy of the repository, or open it with another key",
            ) from None
        seq, keyset = self._latest(master, seqs)
        return OpenedKeys(info.id, kek, master, keyset, seq)

    def open(self, secret: KekSecret, *, mark_used: bool = True) -> OpenedKeys:
        """Open with the operator's secret, trying every KEK of its kind (for KMS, those of the
        configured key id first). ``WrongKey`` names the KEKs tried, or the kinds there are."""
        listing = self._list()
        infos = [i for k in sorted(listing.keks) if (i := self._read_kek(k, listing.used.get(k)))]
        mine = [i for i in infos if i.kind == secret.kind]
        if secret.kind == "kms":
            wanted = secret.material.decode()
            mine.sort(key=lambda i: i.kms_key_id != wanted)
        refusals: list[str] = []
        for info in mine:
            try:
                opened = self._unlock(info, secret, listing.seqs)
            except WrongKey as exc:
                refusals.append(exc.message)
                continue
            if mark_used:
                self.mark_used(info.id, listing.used.get(info.id))
            return opened
        if mine:
            detail = f" ({refusals[-1]})" if secret.kind == "kms" and refusals else ""
            raise WrongKey(
                f"the encryption key is wrong: the {secret.kind} from {secret.source} does not "
                f"open key {', '.join(i.id for i in mine)} of repository {self.repository_id}{detail}",
                hint="check BACKUPD_ENCRYPTION__* ; a lost key means the backups cannot be read",
            )
        others = ", ".join(f"{i.id} ({i.kind})" for i in infos) or "none"
        raise WrongKey(
            f"repository {self.repository_id} has no key of kind {secret.kind} "
            f"(it has: {others}); {secret.source} cannot open it",
            hint="configure the secret of one of these keys (BACKUPD_ENCRYPTION__*)",
        )

    def reload(self, opened: OpenedKeys) -> OpenedKeys:
        """``opened`` with the current keyset (another process may have rotated or retired)."""
        if opened.master is not None:
            seq, keyset = self._latest(opened.master)
            return OpenedKeys(opened.kek_id, opened.kek, opened.master, keyset, seq)
        info = self._read_kek(opened.kek_id)
        if info is None:
            raise WrongKey(f"key {opened.kek_id} was removed from repository {self.repository_id}")
        if "wrapped_keyset" in info.doc:
            keyset = unwrap_keyset(info.doc["wrapped_keyset"], opened.kek, self.repository_id, info.id)
            return OpenedKeys(opened.kek_id, opened.kek, None, keyset, 0)
        master = unwrap_master(info.doc["wrapped_master"], opened.kek, self.repository_id, info.id)
        seq, keyset = self._latest(master)
        return OpenedKeys(opened.kek_id, opened.kek, master, keyset, seq)

    # -- writing ----------------------------------------------------------------------------
    def mark_used(self, kek_id: str, previous: ObjectInfo | None = None, now: datetime | None = None) -> None:
        """Record that ``kek_id`` opened the repository (skipped when the mark is recent)."""
        now = now or utcnow()
        last = previous.modified if previous is not None else None
        if last is not None and now - last < USED_RESOLUTION:
            return
        doc = {"kek_id": kek_id, "last_used_at": iso(now)}
        try:
            put_bytes(self.storage, used_key(kek_id), json.dumps(doc).encode())
        except StorageError as exc:
            log.info("key_use_not_recorded", kek_id=kek_id, error=exc.message)

    def create(self, secret: KekSecret, created_at: str) -> OpenedKeys:
        """A new repository's keys: master key, keyset version 1 and the first KEK. The KEK
        (for KMS: the ``Encrypt`` call) is made before anything is written."""
        kek_id = "kek-" + secrets.token_hex(4)
        kdf, kek = new_kek(secret, kek_context(self.repository_id, kek_id))
        master = secrets.token_bytes(KEY_LEN)
        keyset = Keyset.generate(created_at)
        self._put_keyset(keyset, master, 1)
        self._put_kek(kek_id, secret.kind, created_at, kdf, kek, master)
        self.mark_used(kek_id)
        return OpenedKeys(kek_id, kek, master, keyset, 1)

    def _put_keyset(self, keyset: Keyset, master: bytes, seq: int) -> None:
        wrapped = seal_keyset(keyset, master, self.repository_id, seq)
        doc = {"format": 2, "seq": seq, "wrapped_keyset": wrapped}
        put_bytes(self.storage, keyset_key(seq), json.dumps(doc, indent=2).encode(), if_absent=True)

    def _put_kek(
        self,
        kek_id: str,
        kind: str,
        created_at: str,
        kdf: dict[str, Any],
        kek: bytes,
        master: bytes,
        *,
        replace: bool = False,
    ) -> None:
        doc = {
            "format": 2,
            "id": kek_id,
            "kind": kind,
            "created_at": created_at,
            "kdf": kdf,
            "wrapped_master": wrap_master(master, kek, self.repository_id, kek_id),
        }
        data = json.dumps(doc, indent=2).encode()
        put_bytes(self.storage, layout.key_file(kek_id), data, if_absent=not replace)

    def upgrade(self, opened: OpenedKeys) -> OpenedKeys:
        """A format 1 repository to the master-key form (no-op otherwise): the keyset is written
        as the next keyset version, then the opening KEK's file is rewritten to wrap the master."""
        if opened.master is not None:
            return opened
        listing = self._list()
        others = [k for k in listing.keks if k != opened.kek_id]
        if others:
            raise RepositoryError(
                f"repository {self.repository_id} has format 1 keys {', '.join(others)} besides "
                f"{opened.kek_id}; cannot upgrade it"
            )
        info = self._read_kek(opened.kek_id)
        if info is None:
            raise WrongKey(f"key {opened.kek_id} was removed from repository {self.repository_id}")
        master = secrets.token_bytes(KEY_LEN)
        seq = (listing.seqs[-1] if listing.seqs else 0) + 1
        self._put_keyset(opened.keyset, master, seq)
        created = str(info.created_at or iso(utcnow()))
        self._put_kek(opened.kek_id, info.kind, created, info.doc["kdf"], opened.kek, master, replace=True)
        log.info("repository_keys_upgraded", kek_id=opened.kek_id, keyset_version=seq)
        return OpenedKeys(opened.kek_id, opened.kek, master, opened.keyset, seq)

    def update_keyset(self, opened: OpenedKeys, change: Callable[[Keyset], Keyset]) -> OpenedKeys:
        """Write ``change(current keyset)`` as the next keyset version; re-read and re-apply when
        another process wrote one first. Older versions are then deleted (best effort)."""
        opened = self.upgrade(opened)
        assert opened.master is not None
        for _ in range(_UPDATE_ATTEMPTS):
            seq, current = self._latest(opened.master)
            new = change(current)
            try:
                self._put_keyset(new, opened.master, seq + 1)
            except ObjectExists:
                continue
            self._prune(seq + 1)
            return OpenedKeys(opened.kek_id, opened.kek, opened.master, new, seq + 1)
        raise RepositoryError(f"the keyset of repository {self.repository_id} keeps changing; try again")

    def _prune(self, keep: int) -> None:
        for seq in self._list().seqs:
            if seq < keep:
                try:
                    self.storage.delete(keyset_key(seq))
                except BackupdError as exc:
                    log.warning("old_keyset_not_deleted", keyset_version=seq, error=exc.message)

    def find_opening(self, secret: KekSecret) -> str | None:
        """The id of an existing KEK that ``secret`` opens, if any (without marking it used)."""
        try:
            return self.open(secret, mark_used=False).kek_id
        except WrongKey:
            return None

    def add_kek(self, opened: OpenedKeys, secret: KekSecret, created_at: str) -> tuple[str, OpenedKeys]:
        """A new KEK wrapping the same master key; returns its id. The KEK is made (KMS
        ``Encrypt``) before anything is written."""
        kek_id = "kek-" + secrets.token_hex(4)
        kdf, kek = new_kek(secret, kek_context(self.repository_id, kek_id))
        opened = self.upgrade(opened)
        assert opened.master is not None
        self._put_kek(kek_id, secret.kind, created_at, kdf, kek, opened.master)
        return kek_id, opened

    def remove_kek(self, kek_id: str) -> None:
        self.storage.delete(layout.key_file(kek_id))
        try:
            self.storage.delete(used_key(kek_id))
        except BackupdError as exc:
            log.warning("key_use_mark_not_deleted", kek_id=kek_id, error=exc.message)
