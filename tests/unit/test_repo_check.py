"""ops/verify/repo_check.py, repository/seal.py and ops/audit.py's ``check_audit_copy`` on a real SQLite
catalog and an in-memory storage (a shipped fake, as code): every kind that ``verify --all``
reads besides the backups, without a PostgreSQL server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog
from contentflow_backupd.model import BackupRecord, utcnow
from contentflow_backupd.ops.audit import check_audit_copy, record_event
from contentflow_backupd.ops.repo.keys import add_kek
from contentflow_backupd.ops.verify.repo_check import check_repository
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.seal import SEAL_KEY, check_seal
from contentflow_backupd.storage.base import put_bytes
from contentflow_backupd.storage.memory import MemoryStorage

PASS = KekSecret("passphrase", b"repo check passphrase", "test")
OTHER = KekSecret("passphrase", b"another passphrase", "other")
SMALL = ChunkerParams(avg_size=64 * 1024)


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStorage(), PASS, chunker=SMALL)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SqlCatalog]:
    opened = open_catalog(f"sqlite:///{tmp_path}/a/catalog.sqlite")
    yield opened
    opened.close()


def _edit_json(repo: Repository, key: str, **changes: object) -> None:
    doc = json.loads(repo.storage.get(key))
    put_bytes(repo.storage, key, json.dumps({**doc, **changes}, indent=2).encode())


def test_a_new_repository_is_sealed_and_checks_clean(repo: Repository, catalog: SqlCatalog) -> None:
    assert check_seal(repo).present and not check_seal(repo).problems
    add_kek(repo, OTHER, None)  # a key operation re-seals
    check = check_repository(repo, "main", catalog=catalog)
    assert check.ok, check.faults
    assert {"repo.json", "repo.seal", "key file", "keyset"} <= set(check.kinds)
    assert check.kinds["key file"] == 2


def test_a_changed_description_or_key_file_breaks_the_seal(repo: Repository) -> None:
    add_kek(repo, OTHER, None)
    other = next(k.id for k in repo.keys.keks() if k.id != repo.kek_id)
    _edit_json(repo, "repo.json", created_by="someone else")
    _edit_json(repo, f"keys/{other}.json", created_at="2020-01-01T00:00:00Z")
    problems = check_seal(repo).problems
    assert set(problems) == {"repo.json", f"keys/{other}.json"}
    faults = {f.key: f for f in check_repository(repo, "main").faults}
    assert "repo.json" in faults and f"keys/{other}.json" in faults


def test_a_missing_seal_is_written_with_a_warning(repo: Repository) -> None:
    repo.storage.delete(SEAL_KEY)
    check = check_repository(repo, "main")
    assert check.ok and any(SEAL_KEY in w for w in check.warnings)
    assert check_seal(repo).present and not check_seal(repo).problems


def test_a_keyset_version_replayed_under_another_name_fails(repo: Repository) -> None:
    key = "keys/keyset/000000000001.json"
    put_bytes(repo.storage, "keys/keyset/000000000002.json", repo.storage.get(key))
    faults = [f for f in check_repository(repo, "main").faults if f.key.startswith("keys/keyset/")]
    assert [f.key for f in faults] == ["keys/keyset/000000000002.json"]


def test_audit_copy_names_a_damaged_object_and_the_first_difference(
    repo: Repository, catalog: SqlCatalog
) -> None:
    for n in range(3):
        record_event(catalog, action="backup", outcome="succeeded", objects=[f"b{n}"], repo=repo)
    assert check_audit_copy(repo, catalog).ok
    keys = sorted(i.key for i in repo.storage.list("audit/"))
    assert len(keys) == 3
    put_bytes(repo.storage, keys[1], repo.storage.get(keys[1])[:-1])
    check = check_audit_copy(repo, catalog)
    assert not check.ok
    assert any(p.key == keys[1] and "unreadable" in p.problem for p in check.problems)
    assert check.first_difference is not None and check.first_difference.seq == 2
    repo.storage.delete(keys[1])
    repo.storage.delete(keys[2])  # the newest: the chain alone still holds, the catalog knows
    check = check_audit_copy(repo, catalog)
    assert check.first_difference is not None and check.first_difference.seq == 2
    assert "missing from the repository" in check.first_difference.problem


class _FlushMeanwhile:
    """The catalog, where another cluster's job on the same repository records (and copies) an
    event just as the check asks how far the copy goes: the race a daemon of many clusters on one
    repository met (bench/fleet.py, ~40 false "missing" records a verify at 1,000 clusters)."""

    def __init__(self, inner: SqlCatalog, repo: Repository) -> None:
        self.inner, self.repo, self.done = inner, repo, False

    def get_audit_flushed_seq(self, repository_id: str) -> int | None:
        if not self.done:
            self.done = True
            record_event(self.inner, action="backup", outcome="succeeded", objects=["other"], repo=self.repo)
        return self.inner.get_audit_flushed_seq(repository_id)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_audit_copy_is_not_fooled_by_a_flush_during_the_check(repo: Repository, catalog: SqlCatalog) -> None:
    for n in range(2):
        record_event(catalog, action="backup", outcome="succeeded", objects=[f"b{n}"], repo=repo)
    racing = _FlushMeanwhile(catalog, repo)
    check = check_audit_copy(repo, racing)  # type: ignore[arg-type]
    assert racing.done and check.ok, check.to_json()
    assert check_audit_copy(repo, catalog).records == 3


def test_a_backup_the_catalog_lists_without_its_manifest_is_a_fault(
    repo: Repository, catalog: SqlCatalog
) -> None:
    catalog.upsert_backup(
        BackupRecord(
            id="20261207T000000Z-full-abcdef",
            cluster="main",
            repository_id=repo.id,
            kind="full",
            mode="logical",
            status="succeeded",
            generation="20261207T000000Z-full-abcdef",
            started_at=utcnow(),
        )
    )
    faults = check_repository(repo, "main", catalog=catalog).faults
    assert [f.key for f in faults] == ["main/backups/20261207T000000Z-full-abcdef.json"]
    assert "manifest is gone" in faults[0].problem and faults[0].needed_by == "the catalog"
