"""Encryption of repository objects, and the key hierarchy. ``cryptography`` lives here only.

Key hierarchy (see docs/security.md):

- A **key-encryption key** (KEK) comes from the operator: scrypt of a passphrase, or a 32-byte
  key file. It never touches storage.
- A **keyset** holds the repository's secrets: the chunk-id key (BLAKE3 key for chunk ids, fixed
  for the life of the repository so that dedup works across rotations) and the data keys
  (AES-256) with the id of the active one. The keyset is stored only wrapped (AES-256-GCM) by a
  KEK, in ``keys/<kek-id>.json``; one file per KEK that can open the repository.
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
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from contentflow_backupd.errors import IntegrityError, KeyMissing, RepositoryError, WrongKey

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
ENVELOPE_MAGIC = b"CFB1"
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1

KekKind = Literal["passphrase", "keyfile"]


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True, repr=False)
class KekSecret:
    """The operator's secret: a passphrase or the raw 32 bytes of a key file. Never printed."""

    kind: KekKind
    material: bytes
    source: str
    """Where it came from (``BACKUPD_ENCRYPTION__PASSPHRASE_FILE=/path``): for messages."""

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


def derive_kek(secret: KekSecret, kdf: dict[str, Any]) -> bytes:
    """The 32-byte KEK for ``secret`` with the KDF parameters stored in a key file."""
    if kdf.get("name") == "scrypt":
        if secret.kind != "passphrase":
            raise WrongKey("this repository key is opened by a passphrase, but a key file is configured")
        return Scrypt(
            salt=b64d(kdf["salt"]),
            length=KEY_LEN,
            n=int(kdf["n"]),
            r=int(kdf["r"]),
            p=int(kdf["p"]),
        ).derive(secret.material)
    if kdf.get("name") == "none":
        if secret.kind != "keyfile":
            raise WrongKey("this repository key is opened by a key file, but a passphrase is configured")
        return secret.material
    raise RepositoryError(f"unknown key derivation {kdf.get('name')!r}")


def new_kdf(secret: KekSecret) -> dict[str, Any]:
    if secret.kind == "passphrase":
        return {
            "name": "scrypt",
            "salt": b64e(os.urandom(16)),
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
        }
    return {"name": "none"}


@dataclass
class DataKey:
    id: str
    key: bytes = field(repr=False)
    created_at: str


@dataclass
class Keyset:
    """The repository's secrets, as they are stored inside a wrapped key file."""

    chunk_id_key: bytes = field(repr=False)
    data_keys: dict[str, DataKey]
    active: str

    @classmethod
    def generate(cls, created_at: str) -> Keyset:
        dk = DataKey(id="dk-" + secrets.token_hex(4), key=os.urandom(KEY_LEN), created_at=created_at)
        return cls(chunk_id_key=os.urandom(KEY_LEN), data_keys={dk.id: dk}, active=dk.id)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "chunk_id_key": b64e(self.chunk_id_key),
                "data_keys": [
                    {"id": k.id, "key": b64e(k.key), "created_at": k.created_at}
                    for k in self.data_keys.values()
                ],
                "active": self.active,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Keyset:
        raw = json.loads(data)
        keys = {
            k["id"]: DataKey(id=k["id"], key=b64d(k["key"]), created_at=k["created_at"])
            for k in raw["data_keys"]
        }
        return cls(chunk_id_key=b64d(raw["chunk_id_key"]), data_keys=keys, active=raw["active"])


def _keyset_aad(repository_id: str, kek_id: str) -> bytes:
    return b"contentflow-backupd/keyset\x00" + repository_id.encode() + b"\x00" + kek_id.encode()


def wrap_keyset(keyset: Keyset, kek: bytes, repository_id: str, kek_id: str) -> str:
    nonce = os.urandom(NONCE_LEN)
    sealed = AESGCM(kek).encrypt(nonce, keyset.to_bytes(), _keyset_aad(repository_id, kek_id))
    return b64e(nonce + sealed)


def unwrap_keyset(wrapped: str, kek: bytes, repository_id: str, kek_id: str) -> Keyset:
    """Raises ``WrongKey`` when ``kek`` does not open the keyset."""
    blob = b64d(wrapped)
    try:
        plain = AESGCM(kek).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], _keyset_aad(repository_id, kek_id))
    except InvalidTag:
        raise WrongKey(f"the configured secret does not open repository key {kek_id}") from None
    return Keyset.from_bytes(plain)


class ObjectCipher:
    """Seals and opens repository objects with the data keys of a keyset. Thread-safe."""

    def __init__(self, keyset: Keyset, repository_id: str) -> None:
        self._repository_id = repository_id.encode()
        self._aeads = {kid: AESGCM(k.key) for kid, k in keyset.data_keys.items()}
        self._active = keyset.active

    @property
    def active_key_id(self) -> str:
        return self._active

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
        try:
            return aead.decrypt(nonce, blob[header_len + NONCE_LEN :], self._aad(object_key, header))
        except InvalidTag:
            raise IntegrityError(
                f"object {object_key} failed authentication (altered, truncated, swapped or renamed)",
                key=object_key,
            ) from None
