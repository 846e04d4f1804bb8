"""AWS KMS as a key-encryption key: ``Encrypt`` wraps a random 32-byte KEK, ``Decrypt`` opens it.

The repository's master key is wrapped by that KEK (see ``crypto``), so KMS only ever sees 32
random bytes, once per ``init``/``keys add`` (``Encrypt``) and once per opening (``Decrypt``).
The encryption context (repository id, KEK id) binds the wrapped key to its place: a KMS
ciphertext copied into another repository or KEK file does not decrypt. boto3 for KMS lives here
only; botocore errors are translated once, here:

- the key refuses (wrong key, not found, disabled, access denied, bad ciphertext): ``WrongKey``
  naming the KMS key id;
- KMS cannot be reached (network, throttling after botocore's retries, 5xx): ``KeyMissing``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from contentflow_backupd.errors import KeyMissing, WrongKey

_REFUSALS = {
    "AccessDeniedException",
    "DisabledException",
    "IncorrectKeyException",
    "InvalidCiphertextException",
    "InvalidKeyUsageException",
    "KMSInvalidStateException",
    "NotFoundException",
    "InvalidGrantTokenException",
    "KeyUnavailableException",
}


class KmsKeyService:
    """One symmetric KMS key (id, ARN or alias). Thread-safe (boto3 clients are)."""

    def __init__(
        self,
        key_id: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        ca_bundle: str | None = None,
    ) -> None:
        self._key_id = key_id
        session = boto3.session.Session()
        self._client: Any = session.client(
            "kms",
            region_name=region,
            endpoint_url=endpoint_url,
            verify=ca_bundle if ca_bundle else True,
            config=Config(
                retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=30
            ),
        )

    @property
    def key_id(self) -> str:
        return self._key_id

    def _fail(self, op: str, exc: Exception) -> Exception:
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            text = str(exc.response.get("Error", {}).get("Message", "")) or code
            if code in _REFUSALS or code.endswith("NotFoundException"):
                hint = "check BACKUPD_ENCRYPTION__KMS_KEY_ID and that this role may kms:Encrypt/kms:Decrypt"
                return WrongKey(f"KMS key {self._key_id} refused {op}: {code}: {text}", hint=hint)
            return KeyMissing(f"KMS {op} with key {self._key_id} failed: {code}: {text}")
        return KeyMissing(
            f"KMS {op} with key {self._key_id} failed: {exc}",
            hint="check the network path to KMS and BACKUPD_ENCRYPTION__KMS_REGION / _KMS_ENDPOINT_URL",
        )

    def encrypt(self, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        try:
            out = self._client.encrypt(
                KeyId=self._key_id, Plaintext=plaintext, EncryptionContext=dict(context)
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("Encrypt", exc) from None
        return bytes(out["CiphertextBlob"])

    def decrypt(self, blob: bytes, context: Mapping[str, str]) -> bytes:
        try:
            out = self._client.decrypt(
                CiphertextBlob=blob, KeyId=self._key_id, EncryptionContext=dict(context)
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("Decrypt", exc) from None
        return bytes(out["Plaintext"])

    def close(self) -> None:
        self._client.close()
