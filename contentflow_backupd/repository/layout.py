"""Where things live in a repository: pure functions from names to object keys.

::

    repo.json                                   format, repository id, chunker (plaintext)
    keys/<kek-id>.json                          the keyset wrapped by one key-encryption key
    <cluster>/backups/<backup-id>.json          encrypted manifest: the commit marker of a backup
    <cluster>/chunks/<generation>/<xx>/<id>     encrypted, compressed data chunks
    <cluster>/chunks/<generation>/packs/<id>    encrypted, compressed packs of small chunks
    <cluster>/chunks/<generation>/packs/<id>.index   each pack's chunk ids (for dedup)
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from contentflow_backupd.errors import BackupNotFound, ConfigError

if TYPE_CHECKING:
    from contentflow_backupd.repository.manifest import ChunkRef

REPO_FILE = "repo.json"
KEYS_PREFIX = "keys/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z-(full|incr)-[0-9a-f]{6}$")
_CHUNK_ID = re.compile(r"^[0-9a-f]{64}$")


def check_cluster(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"BACKUPD_CLUSTER: {name!r} is not a valid cluster name",
            hint="use 1-64 characters: letters, digits, '_', '.', '-'",
        )
    return name


def is_backup_id(text: str) -> bool:
    return bool(_BACKUP_ID.match(text))


def check_backup_id(text: str) -> str:
    if not is_backup_id(text):
        raise BackupNotFound(
            f"backup {text!r} not found: it is not a backup id",
            hint="backup ids look like 20261124T054459Z-full-3a9c1b; see `contentflow-backupd backup list`",
        )
    return text


def key_file(kek_id: str) -> str:
    return f"{KEYS_PREFIX}{kek_id}.json"


def backups_prefix(cluster: str) -> str:
    return f"{cluster}/backups/"


def manifest_key(cluster: str, backup_id: str) -> str:
    return f"{cluster}/backups/{backup_id}.json"


def backup_id_from_manifest_key(cluster: str, key: str) -> str | None:
    prefix = backups_prefix(cluster)
    if not key.startswith(prefix) or not key.endswith(".json"):
        return None
    candidate = key[len(prefix) : -len(".json")]
    return candidate if is_backup_id(candidate) else None


def chunk_key(cluster: str, generation: str, chunk_id: str) -> str:
    if not _CHUNK_ID.match(chunk_id):
        raise ValueError(f"invalid chunk id {chunk_id!r}")
    return f"{cluster}/chunks/{generation}/{chunk_id[:2]}/{chunk_id}"


_PACK_ID = re.compile(r"^[0-9a-f]{32}$")
PACKS_DIR = "packs"


def pack_key(cluster: str, generation: str, pack_id: str) -> str:
    if not _PACK_ID.match(pack_id):
        raise ValueError(f"invalid pack id {pack_id!r}")
    return f"{cluster}/chunks/{generation}/{PACKS_DIR}/{pack_id}"


PACK_INDEX = ".index"


def pack_index_key(cluster: str, generation: str, pack_id: str) -> str:
    return pack_key(cluster, generation, pack_id) + PACK_INDEX


def object_key(cluster: str, generation: str, ref: ChunkRef) -> str:
    """The object holding ``ref``'s chunk: its own, or its pack."""
    if ref.pack is not None:
        return pack_key(cluster, generation, ref.pack)
    return chunk_key(cluster, generation, ref.id)


def chunks_prefix(cluster: str, generation: str | None = None) -> str:
    return f"{cluster}/chunks/" if generation is None else f"{cluster}/chunks/{generation}/"
