"""Encryption of repository objects, and the key hierarchy. ``cryptography`` lives here only.

Key hierarchy (see docs/security.md):

- A **key-encryption key** (KEK) comes from the operator: scrypt of a passphrase, a 32-byte key
  file, or a random 32-byte key wrapped by AWS KMS (``Encrypt``/``Decrypt``, with the repository
  id and the KEK id as encryption context). The passphrase, the key file and the KMS key never
  touch storage; each KEK has a plaintext description in ``keys/<kek-id>.json`` (kind, KDF or
  KMS key id and the KMS-wrapped key, created) holding the **master key** wrapped by that KEK.
- The **master key** (32 random bytes, fixed for the life of the repository) wraps the keyset,
  stored once in ``keys/keyset/<seq>.json`` (the highest ``seq`` is current). So a KEK is added
  or removed without touching the keyset, and a rotation rewrites the keyset without needing the
  secrets of every KEK.
- A **keyset** holds the repository's secrets: the chunk-id key (BLAKE3 key for chunk ids, fixed
  for the life of the repository so that dedup works across rotations) and the data keys
  (AES-256) with the id of the active one. Inactive data keys stay until no object needs them.
- Format 1 repositories (before key rotation existed) stored the keyset wrapped directly by their
  only KEK (``wrapped_keyset`` in the KEK file); they are read as they are and upgraded to the
  master-key form by the first key operation (``keys add``/``rotate``).
- Every object is sealed with a data key: AES-256-GCM, a random 96-bit nonce, and associated data
  binding the repository id, the object's own key and the envelope header. A swapped, renamed,
  truncated or altered object therefore fails to open.

Object envelope (version 1)::

    b"CFB1" | u8 len(key_id) | key_id (ascii) | nonce (12) | ciphertext || tag (16)

The plaintext inside starts with one byte: 0 = stored as is, 1 = zstd-compressed, so the
compression choice is authenticated too.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from contentflow_backupd.errors import IntegrityError, KeyMissing, RepositoryError, WrongKey

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
ENVELOPE_MAGIC = b"CFB1"
ENVELOPE_HEAD_MAX = 5 + 255
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1

KekKind = Literal["passphrase", "keyfile", "kms"]
KEK_KINDS: tuple[KekKind, ...] = ("passphrase", "keyfile", "kms")


class KmsWrapper(Protocol):
    """A KMS key that wraps small secrets (``repository.kms.KmsKeyService``). ``encrypt`` and
    ``decrypt`` raise ``WrongKey`` when the key refuses (wrong key, no permission, disabled), and
    ``KeyMissing`` when the KMS cannot be reached."""

    @property
    def key_id(self) -> str: ...

    def encrypt(self, plaintext: bytes, context: Mapping[str, str]) -> bytes: ...

    def decrypt(self, blob: bytes, context: Mapping[str, str]) -> bytes: ...


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True, repr=False)
class KekSecret:
    """The operator's secret: a passphrase or the raw 32 bytes of a key file. Never printed."""

    kind: KekKind
    material: bytes
    """The passphrase, the 32 key bytes, or (``kms``) the KMS key id as ASCII."""
    source: str
    """Where it came from (``BACKUPD_ENCRYPTION__PASSPHRASE_FILE=/path``): for messages."""
    kms: KmsWrapper | None = field(default=None, compare=False)
    """The KMS client of a ``kms`` secret."""

    @classmethod
    def for_kms(cls, service: KmsWrapper, source: str) -> KekSecret:
        return cls("kms", service.key_id.encode(), source, kms=service)

    def __repr__(self) -> str:
        return f"KekSecret(kind={self.kind!r}, source={self.source!r}, material=**********)"


def read_key_file(data: bytes, source: str) -> bytes:
    """A key file holds 32 raw bytes, or 64 hex digits, or base64 of 32 bytes (whitespace ok)."""
    if len(data) == KEY_LEN:
        return data
    text = data.strip()
    for decode in (bytes.fromhex, lambda t: base64.b64decode(t, validate=True)):
        try:
            key = decode(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            continue
        if len(key) == KEY_LEN:
            return bytes(key)
    raise KeyMissing(
        f"the key file {source} does not hold a 32-byte key",
        hint="create one with: head -c 32 /dev/urandom > keyfile && chmod 600 keyfile",
    )


def kek_context(repository_id: str, kek_id: str) -> dict[str, str]:
    """The KMS encryption context of a KEK: binds the wrapped key to its repository and id."""
    return {"repository_id": repository_id, "kek_id": kek_id}


def derive_kek(secret: KekSecret, kdf: dict[str, Any], context: Mapping[str, str] | None = None) -> bytes:
    """The 32-byte KEK for ``secret`` with the KDF parameters stored in a key file (``context``:
    the KMS encryption context, see :func:`kek_context`)."""
    name = kdf.get("name")
    wanted = {"scrypt": "passphrase", "none": "keyfile", "aws-kms": "kms"}.get(str(name))
    if wanted is None:
        raise RepositoryError(f"unknown key derivation {name!r}")
    if secret.kind != wanted:
        raise WrongKey(
            f"this repository key is opened by a {wanted} secret, but a {secret.kind} is configured"
        )
    if name == "scrypt":
        return Scrypt(
            salt=b64d(kdf["salt"]),
            length=KEY_LEN,
            n=int(kdf["n"]),
            r=int(kdf["r"]),
            p=int(kdf["p"]),
        ).derive(secret.material)
    if name == "none":
        return secret.material
    if secret.kms is None:
        raise KeyMissing(f"{secret.source}: no KMS client configured")
    kek = secret.kms.decrypt(b64d(kdf["ciphertext"]), context or {})
    if len(kek) != KEY_LEN:
        raise WrongKey(f"KMS key {kdf.get('key_id')} returned a {len(kek)}-byte key, not {KEY_LEN}")
    return kek


def new_kdf(secret: KekSecret) -> dict[str, Any]:
    """KDF parameters for a passphrase or key file KEK (see :func:`new_kek` for every kind)."""
    if secret.kind == "passphrase":
        return {
            "name": "scrypt",
            "salt": b64e(os.urandom(16)),
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
        }
    if secret.kind == "kms":
        raise ValueError("a KMS KEK is created with new_kek")
    return {"name": "none"}


def new_kek(secret: KekSecret, context: Mapping[str, str]) -> tuple[dict[str, Any], bytes]:
    """The parameters to store and the 32-byte KEK of a new KEK for ``secret``. For KMS: a random
    key, wrapped by the KMS key with ``context`` (nothing is written if KMS refuses)."""
    if secret.kind != "kms":
        kdf = new_kdf(secret)
        return kdf, derive_kek(secret, kdf)
    if secret.kms is None:
        raise KeyMissing(f"{secret.source}: no KMS client configured")
    kek = os.urandom(KEY_LEN)
    blob = secret.kms.encrypt(kek, context)
    return {"name": "aws-kms", "key_id": secret.kms.key_id, "ciphertext": b64e(blob)}, kek


@dataclass
class DataKey:
    id: str
    key: bytes = field(repr=False)
    created_at: str
    deactivated_at: str | None = None
    """When a rotation made another key active (None: never active-then-replaced)."""
    retire_after: str | None = None
    """Not retired before this time even when no object needs it: processes that opened the
    keyset before the rotation may still seal with it until they see the new keyset."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "key": b64e(self.key), "created_at": self.created_at}
        if self.deactivated_at is not None:
            out["deactivated_at"] = self.deactivated_at
        if self.retire_after is not None:
            out["retire_after"] = self.retire_after
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DataKey:
        return cls(
            id=str(raw["id"]),
            key=b64d(raw["key"]),
            created_at=str(raw["created_at"]),
            deactivated_at=raw.get("deactivated_at"),
            retire_after=raw.get("retire_after"),
        )


def new_data_key(created_at: str) -> DataKey:
    return DataKey(id="dk-" + secrets.token_hex(4), key=os.urandom(KEY_LEN), created_at=created_at)


@dataclass
class Keyset:
    """The repository's secrets, as they are stored wrapped (by the master key, or in format 1
    by a KEK). ``data_keys`` keep their creation order."""

    chunk_id_key: bytes = field(repr=False)
    data_keys: dict[str, DataKey]
    active: str

    @classmethod
    def generate(cls, created_at: str) -> Keyset:
        dk = new_data_key(created_at)
        return cls(chunk_id_key=os.urandom(KEY_LEN), data_keys={dk.id: dk}, active=dk.id)

    def rotated(self, now: str, retire_after: str) -> Keyset:
        """A copy with a new active data key; the previous active one is marked deactivated
        ``now`` and not retired before ``retire_after``. Every data key is kept."""
        keys = {kid: DataKey(**vars(k)) for kid, k in self.data_keys.items()}
        old = keys[self.active]
        old.deactivated_at, old.retire_after = now, retire_after
        dk = new_data_key(now)
        keys[dk.id] = dk
        return Keyset(chunk_id_key=self.chunk_id_key, data_keys=keys, active=dk.id)

    def without(self, key_ids: set[str]) -> Keyset:
        """A copy without ``key_ids``; the active key cannot be removed (``ValueError``)."""
        if self.active in key_ids:
            raise ValueError(f"data key {self.active} is active")
        keys = {kid: DataKey(**vars(k)) for kid, k in self.data_keys.items() if kid not in key_ids}
        return Keyset(chunk_id_key=self.chunk_id_key, data_keys=keys, active=self.active)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "chunk_id_key": b64e(self.chunk_id_key),
                "data_keys": [k.to_dict() for k in self.data_keys.values()],
                "active": self.active,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Keyset:
        raw = json.loads(data)
        keys = {str(k["id"]): DataKey.from_dict(k) for k in raw["data_keys"]}
        if raw["active"] not in keys:
            raise IntegrityError(f"the keyset's active data key {raw['active']} is not in it", key="keys/")
        return cls(chunk_id_key=b64d(raw["chunk_id_key"]), data_keys=keys, active=raw["active"])


def _keyset_aad(repository_id: str, kek_id: str) -> bytes:
    return b"contentflow-backupd/keyset\x00" + repository_id.encode() + b"\x00" + kek_id.encode()


def _master_aad(repository_id: str, kek_id: str) -> bytes:
    return b"contentflow-backupd/master\x00" + repository_id.encode() + b"\x00" + kek_id.encode()


def _keyset_v2_aad(repository_id: str, seq: int) -> bytes:
    return b"contentflow-backupd/keyset-v2\x00" + repository_id.encode() + b"\x00" + str(seq).encode()


def _seal(key: bytes, plain: bytes, aad: bytes) -> str:
    nonce = os.urandom(NONCE_LEN)
    return b64e(nonce + AESGCM(key).encrypt(nonce, plain, aad))


def _unseal(key: bytes, wrapped: str, aad: bytes) -> bytes | None:
    """The plaintext, or None when ``wrapped`` does not authenticate (also: not base64)."""
    try:
        blob = b64d(wrapped)
    except ValueError:
        return None
    try:
        return AESGCM(key).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], aad)
    except InvalidTag:
        return None


def wrap_keyset(keyset: Keyset, kek: bytes, repository_id: str, kek_id: str) -> str:
    """Format 1: the keyset wrapped directly by a KEK (kept for tests and old repositories)."""
    return _seal(kek, keyset.to_bytes(), _keyset_aad(repository_id, kek_id))


def unwrap_keyset(wrapped: str, kek: bytes, repository_id: str, kek_id: str) -> Keyset:
    """Format 1. Raises ``WrongKey`` when ``kek`` does not open the keyset."""
    plain = _unseal(kek, wrapped, _keyset_aad(repository_id, kek_id))
    if plain is None:
        raise WrongKey(f"the configured secret does not open repository key {kek_id}")
    return Keyset.from_bytes(plain)


def wrap_master(master: bytes, kek: bytes, repository_id: str, kek_id: str) -> str:
    return _seal(kek, master, _master_aad(repository_id, kek_id))


def unwrap_master(wrapped: str, kek: bytes, repository_id: str, kek_id: str) -> bytes:
    """Raises ``WrongKey`` when ``kek`` does not open KEK ``kek_id``'s copy of the master key."""
    plain = _unseal(kek, wrapped, _master_aad(repository_id, kek_id))
    if plain is None:
        raise WrongKey(f"the configured secret does not open repository key {kek_id}")
    return plain


def seal_keyset(keyset: Keyset, master: bytes, repository_id: str, seq: int) -> str:
    """The keyset version ``seq`` wrapped by the master key (``seq`` is authenticated: an old
    version copied under a newer name fails to open)."""
    return _seal(master, keyset.to_bytes(), _keyset_v2_aad(repository_id, seq))


def open_keyset(wrapped: str, master: bytes, repository_id: str, seq: int) -> Keyset:
    plain = _unseal(master, wrapped, _keyset_v2_aad(repository_id, seq))
    if plain is None:
        raise IntegrityError(
            f"keyset version {seq} of repository {repository_id} failed authentication "
            "(altered, or copied from another version)",
            key="keys/keyset/",
        )
    return Keyset.from_bytes(plain)


def envelope_key_id(head: bytes) -> str | None:
    """The data key id in the envelope header at the start of an object (the first
    ``ENVELOPE_HEAD_MAX`` bytes are always enough); None if ``head`` is no envelope."""
    if len(head) < 5 or head[:4] != ENVELOPE_MAGIC or len(head) < 5 + head[4]:
        return None
    return head[5 : 5 + head[4]].decode("ascii", errors="replace")


class ObjectCipher:
    """Seals and opens repository objects with the data keys of a keyset. Thread-safe."""

    def __init__(self, keyset: Keyset, repository_id: str) -> None:
        self._repository_id = repository_id.encode()
        self._aeads = {kid: AESGCM(k.key) for kid, k in keyset.data_keys.items()}
        self._active = keyset.active

    @property
    def active_key_id(self) -> str:
        return self._active

    def holds(self, key_id: str) -> bool:
        return key_id in self._aeads

    def _aad(self, object_key: str, header: bytes) -> bytes:
        return b"cfb1\x00" + self._repository_id + b"\x00" + object_key.encode() + b"\x00" + header

    def seal(self, object_key: str, plaintext: bytes) -> bytes:
        kid = self._active.encode("ascii")
        header = ENVELOPE_MAGIC + bytes([len(kid)]) + kid
        nonce = os.urandom(NONCE_LEN)
        return (
            header
            + nonce
            + self._aeads[self._active].encrypt(nonce, plaintext, self._aad(object_key, header))
        )

    def open(self, object_key: str, blob: bytes) -> bytes:
        """The plaintext of ``blob`` stored under ``object_key``; ``IntegrityError`` otherwise."""
        if len(blob) < len(ENVELOPE_MAGIC) + 1 or blob[:4] != ENVELOPE_MAGIC:
            raise IntegrityError(f"object {object_key} is not a contentflow-backupd object", key=object_key)
        n = blob[4]
        header_len = 5 + n
        if len(blob) < header_len + NONCE_LEN + TAG_LEN:
            raise IntegrityError(f"object {object_key} is truncated", key=object_key)
        header = blob[:header_len]
        kid = header[5:].decode("ascii", errors="replace")
        aead = self._aeads.get(kid)
        if aead is None:
            raise IntegrityError(
                f"object {object_key} is sealed with data key {kid}, which this repository's keyset "
                "does not hold (an object from another repository, or a lost key)",
                key=object_key,
            )
        nonce = blob[header_len : header_len + NONCE_LEN]
        sealed = memoryview(blob)[header_len + NONCE_LEN :]  # not a copy of the whole object
        try:
            return aead.decrypt(nonce, sealed, self._aad(object_key, header))
        except InvalidTag:
            raise IntegrityError(
                f"object {object_key} failed authentication (altered, truncated, swapped or renamed)",
                key=object_key,
            ) from None
