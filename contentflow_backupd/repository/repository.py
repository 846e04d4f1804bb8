"""The backup repository: a self-describing, encrypted object layout on top of a Storage.

A new machine with only the storage URL and the key can open the repository, list and restore
everything: ``repo.json`` says how it is laid out, ``keys/`` hold the wrapped keyset, and each
backup's manifest names every chunk it needs.
"""

from __future__ import annotations

import functools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import blake3
import structlog
import zstandard

from contentflow_backupd import __version__
from contentflow_backupd.errors import (
    BackupdError,
    BackupNotFound,
    IntegrityError,
    ObjectNotFound,
    RepositoryError,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
)
from contentflow_backupd.model import iso, utcnow
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret, Keyset, ObjectCipher, envelope_key_id
from contentflow_backupd.repository.keys import KeyStore, OpenedKeys
from contentflow_backupd.repository.manifest import Manifest
from contentflow_backupd.storage.base import Storage, put_bytes

log = structlog.get_logger(__name__)

REPO_FORMAT_NAME = "contentflow-backupd-repository"
REPO_FORMAT_VERSION = 1
KEY_REFRESH_S = 60.0
"""A repository that writes re-reads its keyset at most this often (a rotation by another process
then reaches a long-running daemon within a minute; see ``DataKey.retire_after``)."""
_RAW = b"\x00"
_ZSTD = b"\x01"


@dataclass(frozen=True)
class RepositoryConfig:
    """The plaintext ``repo.json``: no secrets."""

    repository_id: str
    created_at: str
    chunker: ChunkerParams
    raw: dict[str, Any]

    @classmethod
    def new(cls, chunker: ChunkerParams) -> RepositoryConfig:
        rid = secrets.token_hex(16)
        created = iso(utcnow()) or ""
        raw = {
            "format": REPO_FORMAT_NAME,
            "version": REPO_FORMAT_VERSION,
            "repository_id": rid,
            "created_at": created,
            "created_by": f"contentflow-backupd {__version__}",
            "chunker": chunker.to_dict(),
            "compression": {"algorithm": "zstd", "per": "object"},
            "encryption": {"scheme": "aes-256-gcm", "chunk_id": "blake3-keyed-256"},
        }
        return cls(repository_id=rid, created_at=created, chunker=chunker, raw=raw)

    @classmethod
    def parse(cls, data: bytes, where: str) -> RepositoryConfig:
        try:
            raw = json.loads(data)
        except ValueError:
            raise RepositoryError(f"{where}/repo.json is not valid JSON") from None
        if not isinstance(raw, dict) or raw.get("format") != REPO_FORMAT_NAME:
            raise UnsupportedFormat(f"{where} is not a contentflow-backupd repository (repo.json)")
        try:
            version = int(raw.get("version", 0))
        except (TypeError, ValueError):
            raise RepositoryError(f"{where}/repo.json is malformed: version {raw.get('version')!r}") from None
        if version > REPO_FORMAT_VERSION:
            raise UnsupportedFormat(
                f"repository {where} has format version {version}; this contentflow-backupd "
                f"{__version__} supports up to {REPO_FORMAT_VERSION}",
                hint="upgrade contentflow-backupd to open this repository",
            )
        try:
            return cls(
                repository_id=str(raw["repository_id"]),
                created_at=str(raw["created_at"]),
                chunker=ChunkerParams.from_dict(raw["chunker"]),
                raw=raw,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RepositoryError(
                f"{where}/repo.json is malformed: {type(exc).__name__}: {exc}",
                hint="restore repo.json from a copy of the repository (`verify --all` checks it "
                "against repo.seal)",
            ) from None


class _Codec(threading.local):
    def __init__(self, level: int) -> None:
        self.compressor = zstandard.ZstdCompressor(level=level)
        self.decompressor = zstandard.ZstdDecompressor()


class Repository:
    """An opened repository: encodes, stores and reads its objects. Thread-safe."""

    def __init__(
        self,
        storage: Storage,
        config: RepositoryConfig,
        keyset: Keyset,
        kek_id: str,
        *,
        compression_level: int = 1,
        opened: OpenedKeys | None = None,
    ) -> None:
        self.storage = storage
        self.config = config
        self.kek_id = kek_id
        self.keys = KeyStore(storage, config.repository_id)
        self.opened_keys = opened
        """The opened key hierarchy (None: a keyset given directly, never refreshed)."""
        self._chunk_id_key = keyset.chunk_id_key
        self._cipher = ObjectCipher(keyset, config.repository_id)
        self._level = compression_level
        self._codec = _Codec(compression_level)
        self._refresh_lock = threading.Lock()
        self._refreshed_at = time.monotonic()

    # -- creation and opening -------------------------------------------------------------
    @classmethod
    def init(
        cls,
        storage: Storage,
        secret: KekSecret,
        *,
        chunker: ChunkerParams,
        compression_level: int = 1,
    ) -> Repository:
        """Create a repository. Refuses storage that already holds one (or anything else)."""
        try:
            storage.stat(layout.REPO_FILE)
        except ObjectNotFound:
            pass
        else:
            raise RepositoryExists(f"{storage.url} already holds a repository (repo.json exists)")
        existing = next(iter(storage.list("")), None)
        if existing is not None:
            raise RepositoryExists(
                f"{storage.url} is not empty (found {existing.key}); refusing to initialise a "
                "repository over other data",
                hint="point BACKUPD_REPOSITORY at an empty directory or bucket prefix",
            )
        config = RepositoryConfig.new(chunker)
        # The KEK first (for KMS: the Encrypt call), then the keyset, then the KEK file.
        opened = KeyStore(storage, config.repository_id).create(secret, config.created_at)
        # repo.json last: a repository whose key file landed but repo.json did not is not one.
        put_bytes(storage, layout.REPO_FILE, json.dumps(config.raw, indent=2).encode(), if_absent=True)
        repo = cls.from_keys(storage, config, opened, compression_level=compression_level)
        from contentflow_backupd.repository.seal import write_seal

        write_seal(repo)
        return repo

    @classmethod
    def from_keys(
        cls, storage: Storage, config: RepositoryConfig, opened: OpenedKeys, *, compression_level: int = 1
    ) -> Repository:
        return cls(
            storage, config, opened.keyset, opened.kek_id, compression_level=compression_level, opened=opened
        )

    def with_compression(self, level: int) -> Repository:
        """The same opened repository (same storage, keys and key hierarchy), encoding new objects
        at zstd ``level``: the daemon pushes WAL for ``wal push`` at the WAL level."""
        if self.opened_keys is None:
            raise ValueError("a repository built from a bare keyset cannot be re-opened")
        return Repository.from_keys(self.storage, self.config, self.opened_keys, compression_level=level)

    @staticmethod
    def read_config(storage: Storage) -> RepositoryConfig:
        try:
            data = storage.get(layout.REPO_FILE)
        except ObjectNotFound:
            raise RepositoryNotFound(
                f"no repository at {storage.url} (repo.json not found)",
                hint="create one with `contentflow-backupd init`, or check BACKUPD_REPOSITORY",
            ) from None
        return RepositoryConfig.parse(data, storage.url)

    @classmethod
    def open(cls, storage: Storage, secret: KekSecret, *, compression_level: int = 1) -> Repository:
        """Open with the operator's secret. ``WrongKey`` names the keys that were tried."""
        config = cls.read_config(storage)
        opened = KeyStore(storage, config.repository_id).open(secret)
        return cls.from_keys(storage, config, opened, compression_level=compression_level)

    # -- keys ------------------------------------------------------------------------------
    @property
    def active_data_key_id(self) -> str:
        return self._cipher.active_key_id

    def use_keys(self, opened: OpenedKeys) -> None:
        """Seal and open with ``opened`` from now on (after this process changed the keyset)."""
        self.opened_keys = opened
        self._cipher = ObjectCipher(opened.keyset, self.config.repository_id)
        self._refreshed_at = time.monotonic()

    def refresh_keys(self) -> None:
        """Re-read the keyset (another process may have rotated or retired a data key)."""
        with self._refresh_lock:
            if self.opened_keys is not None:
                self.use_keys(self.keys.reload(self.opened_keys))

    def _refresh_if_due(self) -> None:
        if self.opened_keys is None or time.monotonic() - self._refreshed_at < KEY_REFRESH_S:
            return
        try:
            self.refresh_keys()
        except BackupdError as exc:  # keep sealing with the keyset we have; try again later
            self._refreshed_at = time.monotonic()
            log.warning("keyset_not_refreshed", error=exc.message)

    # -- objects -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.config.repository_id

    def chunk_id(self, data: bytes | memoryview) -> str:
        """Keyed BLAKE3 of the plaintext: equal data dedups, the id leaks nothing."""
        return blake3.blake3(data, key=self._chunk_id_key).hexdigest()

    def chunk_hasher(self) -> Callable[[bytes | memoryview], blake3.blake3]:
        """``chunk_id`` for a hot loop: ``chunk_hasher()(data).hexdigest()`` is the same id,
        without a Python call per chunk (a packed stream's loop, ``pipeline._write_packed``)."""
        return functools.partial(blake3.blake3, key=self._chunk_id_key)

    def encode(self, key: str, plaintext: bytes | memoryview, *, compress: bool = True) -> bytes:
        self._refresh_if_due()
        if compress and plaintext:
            packed = self._codec.compressor.compress(plaintext)
            if len(packed) < len(plaintext):
                return self._cipher.seal(key, _ZSTD + packed)
        return self._cipher.seal(key, _RAW + plaintext)  # the copy only when stored as is

    def decode(self, key: str, blob: bytes) -> bytes:
        kid = envelope_key_id(blob[:260])
        if kid is not None and not self._cipher.holds(kid) and self.opened_keys is not None:
            try:
                self.refresh_keys()  # sealed with a data key made after this process opened
            except BackupdError as exc:
                log.warning("keyset_not_refreshed", error=exc.message)
        body = self._cipher.open(key, blob)
        if not body:
            raise IntegrityError(f"object {key} is empty inside its envelope", key=key)
        flag = body[:1]
        if flag == _RAW:
            return body[1:]
        if flag == _ZSTD:
            try:  # from a view: copying the compressed body first costs as much as AES-GCM
                return bytes(self._codec.decompressor.decompress(memoryview(body)[1:]))
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"object {key} failed to decompress: {exc}", key=key) from None
        raise IntegrityError(f"object {key} has an unknown encoding {flag!r}", key=key)

    def put_object(
        self,
        key: str,
        plaintext: bytes | memoryview,
        *,
        compress: bool = True,
        if_absent: bool = False,
        sync: bool = True,
    ) -> int:
        """Encode and store ``plaintext``. ``sync=False`` postpones durability to the next
        ``storage.flush()`` (chunks: the manifest is written after a flush)."""
        blob = self.encode(key, plaintext, compress=compress)
        put_bytes(self.storage, key, blob, if_absent=if_absent, sync=sync)
        return len(blob)

    def get_object(self, key: str) -> bytes:
        return self.decode(key, self.storage.get(key))

    # -- manifests -------------------------------------------------------------------------
    def write_manifest(self, manifest: Manifest) -> str:
        """Commit a backup: make its chunks durable, then write its manifest (durably)."""
        self.storage.flush()
        key = layout.manifest_key(manifest.cluster, manifest.id)
        self.put_object(key, json.dumps(manifest.to_dict(), separators=(",", ":")).encode(), if_absent=True)
        return key

    def read_manifest(self, cluster: str, backup_id: str) -> Manifest:
        key = layout.manifest_key(cluster, backup_id)
        try:
            data = self.get_object(key)
        except ObjectNotFound:
            raise BackupNotFound(
                f"backup {backup_id} not found in cluster {cluster!r} of {self.storage.url}",
                hint="list backups with `contentflow-backupd backup list`",
            ) from None
        try:
            manifest = Manifest.from_dict(json.loads(data))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise IntegrityError(f"manifest {key} is malformed: {exc}", key=key) from None
        if manifest.id != backup_id or manifest.cluster != cluster:
            raise IntegrityError(f"manifest {key} describes another backup ({manifest.id})", key=key)
        return manifest

    def iter_backup_ids(self, cluster: str) -> Iterator[str]:
        """Committed backup ids of ``cluster``, oldest first (ids sort by time)."""
        for info in self.storage.list(layout.backups_prefix(cluster)):
            bid = layout.backup_id_from_manifest_key(cluster, info.key)
            if bid is not None:
                yield bid
