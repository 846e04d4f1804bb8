"""Key hierarchy: KEKs, keyset versions, rotation and retirement (in-memory store)."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import timedelta

import pytest

from contentflow_backupd.errors import KeyMissing, RepositoryError, WrongKey
from contentflow_backupd.model import utcnow
from contentflow_backupd.ops.repo.keys import (
    add_kek,
    count_key_users,
    list_keys,
    remove_kek,
    retire_unused_data_keys,
    rotate_data_key,
)
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import (
    KekSecret,
    Keyset,
    derive_kek,
    envelope_key_id,
    new_kdf,
    wrap_keyset,
)
from contentflow_backupd.repository.keys import KEYSET_PREFIX, KeyStore
from contentflow_backupd.repository.repository import Repository, RepositoryConfig
from contentflow_backupd.storage.base import put_bytes
from contentflow_backupd.storage.memory import MemoryStorage

PASS = KekSecret("passphrase", b"keys unit test", "test")
OTHER = KekSecret("passphrase", b"recovery passphrase", "recovery")
KEYFILE = KekSecret("keyfile", os.urandom(32), "keyfile")
SMALL = ChunkerParams(avg_size=64 * 1024)


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStorage(), PASS, chunker=SMALL)


def _snapshot(repo: Repository) -> dict[str, str]:
    return {
        i.key: hashlib.sha256(repo.storage.get(i.key)).hexdigest()
        for i in repo.storage.list("")
        if not i.key.startswith("keys/")
    }


def _kid(repo: Repository, key: str) -> str | None:
    return envelope_key_id(repo.storage.get(key)[:64])


def test_rotation_rewrites_no_object_and_new_objects_use_the_new_key(repo: Repository) -> None:
    repo.put_object("main/chunks/g1/aa/a", b"old data" * 100)
    repo.put_object("main/backups/x.json", b"{}")
    before = _snapshot(repo)
    old = repo.active_data_key_id
    result = rotate_data_key(repo, None, retire_grace_s=0)
    assert result.previous == old and result.active != old and result.retired == []
    assert _snapshot(repo) == before
    repo.put_object("main/chunks/g2/bb/b", b"new data")
    assert _kid(repo, "main/chunks/g2/bb/b") == result.active
    assert _kid(repo, "main/chunks/g1/aa/a") == old
    again = Repository.open(repo.storage, PASS)  # a new process reads both
    assert again.get_object("main/chunks/g1/aa/a") == b"old data" * 100
    assert again.get_object("main/chunks/g2/bb/b") == b"new data"
    keys = {d["id"]: d for d in list_keys(again).to_json()["data_keys"]}
    assert keys[old]["objects"] == 3 and not keys[old]["active"]  # with repo.seal (written by init)
    assert keys[result.active]["objects"] == 1 and keys[result.active]["active"]


def test_a_process_opened_before_the_rotation_reads_and_then_seals_with_the_new_key(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = Repository.open(repo.storage, PASS)
    new = rotate_data_key(repo, None).active
    repo.put_object("main/wal/x", b"sealed with the new key")
    assert stale.get_object("main/wal/x") == b"sealed with the new key"  # refreshed on demand
    stale2 = Repository.open(repo.storage, PASS)
    newer = rotate_data_key(repo, None).active
    assert stale2.active_data_key_id == new
    monkeypatch.setattr("contentflow_backupd.repository.repository.KEY_REFRESH_S", 0.0)
    stale2.put_object("main/wal/y", b"y")
    assert _kid(repo, "main/wal/y") == newer


def test_retire_waits_for_the_last_user_and_the_grace(repo: Repository) -> None:
    repo.put_object("main/chunks/g1/aa/a", b"needs the first key")
    first = repo.active_data_key_id
    assert rotate_data_key(repo, None, retire_grace_s=3600).retired == []
    repo.storage.delete("main/chunks/g1/aa/a")
    assert retire_unused_data_keys(repo, None) == []  # unused, but within the grace
    later = utcnow() + timedelta(hours=2)
    assert retire_unused_data_keys(repo, None, now=later) == [first]
    assert first not in Repository.open(repo.storage, PASS).opened_keys.keyset.data_keys  # type: ignore[union-attr]
    assert [i.key for i in repo.storage.list(KEYSET_PREFIX)] == ["keys/keyset/000000000003.json"]


def test_rotate_retires_at_once_what_nothing_needs_and_reseals_audit_copies(repo: Repository) -> None:
    first = repo.active_data_key_id
    repo.put_object("audit/2026-01-01/x.json", b'{"records": []}')
    chunk = "main/chunks/g1/aa/a"
    repo.put_object(chunk, b"backup data")
    second = rotate_data_key(repo, None, retire_grace_s=0).active
    assert _kid(repo, "audit/2026-01-01/x.json") == first  # a backup object still pins the key
    chunk_bytes = repo.storage.get(chunk)
    repo.storage.delete(chunk)
    result = rotate_data_key(repo, None, retire_grace_s=0)
    assert set(result.retired) == {first, second}
    assert _kid(repo, "audit/2026-01-01/x.json") == result.active
    assert Repository.open(repo.storage, PASS).get_object("audit/2026-01-01/x.json") == b'{"records": []}'
    put_bytes(repo.storage, chunk, chunk_bytes)
    with pytest.raises(Exception, match=f"data key {first}"):
        Repository.open(repo.storage, PASS).get_object(chunk)


def test_count_stops_early_when_watching(repo: Repository) -> None:
    for i in range(600):
        repo.put_object(f"main/chunks/g/{i:04x}", b"x")
    full = count_key_users(repo.storage)
    assert full[repo.active_data_key_id].objects == 601  # and repo.seal
    partial = count_key_users(repo.storage, watch={repo.active_data_key_id})
    assert 0 < partial[repo.active_data_key_id].objects < 600


def test_add_open_with_each_kek_and_remove_rules(repo: Repository) -> None:
    first = repo.kek_id
    second = add_kek(repo, OTHER, None)
    third = add_kek(repo, KEYFILE, None)
    for secret, kek in ((PASS, first), (OTHER, second), (KEYFILE, third)):
        opened = Repository.open(repo.storage, secret)
        assert opened.kek_id == kek and opened.active_data_key_id == repo.active_data_key_id
    with pytest.raises(RepositoryError, match="already opens key"):
        add_kek(repo, OTHER, None)
    with pytest.raises(RepositoryError, match="opened the repository with"):
        remove_kek(repo, first, None)
    with pytest.raises(KeyMissing, match="no key kek-nope"):
        remove_kek(repo, "kek-nope", None)
    remove_kek(repo, second, None)
    with pytest.raises(WrongKey, match=f"does not open key {first}"):
        Repository.open(repo.storage, OTHER)
    via_keyfile = Repository.open(repo.storage, KEYFILE)
    remove_kek(via_keyfile, first, None)
    with pytest.raises(RepositoryError, match="last key"):
        remove_kek(via_keyfile, third, None)
    with pytest.raises(WrongKey, match=f"has no key of kind passphrase.*{third} \\(keyfile\\)"):
        Repository.open(repo.storage, PASS)


def test_kek_added_before_a_rotation_opens_the_new_keyset(repo: Repository) -> None:
    add_kek(repo, OTHER, None)
    new = rotate_data_key(repo, None).active
    assert Repository.open(repo.storage, OTHER).active_data_key_id == new


def test_concurrent_keyset_updates_lose_nothing(repo: Repository) -> None:
    a = Repository.open(repo.storage, PASS)
    b = Repository.open(repo.storage, PASS)
    ka = rotate_data_key(a, None).active
    kb = rotate_data_key(b, None).active  # b's keyset was stale: re-read, re-applied
    keys = Repository.open(repo.storage, PASS).opened_keys.keyset.data_keys  # type: ignore[union-attr]
    assert {ka, kb} <= set(keys) and len(keys) == 3


def test_last_use_is_recorded_and_listed(repo: Repository) -> None:
    keks = list_keys(repo).to_json()["key_encryption_keys"]
    assert keks[0]["id"] == repo.kek_id and keks[0]["kind"] == "passphrase"
    assert keks[0]["last_used"] is not None and keks[0]["opened_with"]
    other = add_kek(repo, OTHER, None)
    unused = next(k for k in list_keys(repo).to_json()["key_encryption_keys"] if k["id"] == other)
    assert unused["last_used"] is None
    Repository.open(repo.storage, OTHER)
    used = next(k for k in list_keys(repo).to_json()["key_encryption_keys"] if k["id"] == other)
    assert used["last_used"] is not None


def test_format_1_repository_opens_and_upgrades_on_the_first_key_operation() -> None:
    storage = MemoryStorage()
    config = RepositoryConfig.new(SMALL)
    keyset = Keyset.generate(config.created_at)
    kdf = new_kdf(PASS)
    doc = {
        "format": 1,
        "id": "kek-00000001",
        "kind": "passphrase",
        "created_at": config.created_at,
        "kdf": kdf,
        "wrapped_keyset": wrap_keyset(keyset, derive_kek(PASS, kdf), config.repository_id, "kek-00000001"),
    }
    put_bytes(storage, layout.key_file("kek-00000001"), json.dumps(doc).encode())
    put_bytes(storage, layout.REPO_FILE, json.dumps(config.raw).encode())
    old = Repository.open(storage, PASS)
    old.put_object("main/chunks/g/aa/a", b"format 1 object")
    assert old.opened_keys is not None and old.opened_keys.master is None
    rotated = rotate_data_key(old, None)
    assert json.loads(storage.get(layout.key_file("kek-00000001")))["format"] == 2
    again = Repository.open(storage, PASS)
    assert again.active_data_key_id == rotated.active
    assert again.get_object("main/chunks/g/aa/a") == b"format 1 object"
    assert KeyStore(storage, config.repository_id).keks()[0].format == 2


def test_a_wrong_key_writes_nothing(repo: Repository) -> None:
    before = {i.key: repo.storage.get(i.key) for i in repo.storage.list("")}
    with pytest.raises(WrongKey, match=repo.kek_id):
        Repository.open(repo.storage, KekSecret("passphrase", b"wrong", "test"))
    assert {i.key: repo.storage.get(i.key) for i in repo.storage.list("")} == before


def test_an_altered_keyset_version_fails_to_open(repo: Repository) -> None:
    key = next(iter(repo.storage.list(KEYSET_PREFIX))).key
    doc = json.loads(repo.storage.get(key))
    put_bytes(repo.storage, "keys/keyset/000000000009.json", json.dumps(doc).encode())  # copied
    with pytest.raises(Exception, match="keyset version 9"):
        Repository.open(repo.storage, PASS)
