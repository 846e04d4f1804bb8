"""expire / apply_expiry on the in-memory store and a real SQLite catalog: what is deleted, in
which order, what is recorded, and that the backup lock is honoured."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog
from contentflow_backupd.errors import LockedError, StorageUnavailable
from contentflow_backupd.model import (
    BackupKind,
    BackupMode,
    Scope,
    new_backup_id,
    utcnow,
)
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.ops.retention.apply import collect_inventory, expire, expiry_report
from contentflow_backupd.ops.retention.plan import WAL_HELD, RetentionPolicy
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.manifest import ChunkRef, Manifest, StreamEntry
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.storage.base import put_bytes
from contentflow_backupd.storage.memory import MemoryStorage

REPO_ID = "repo-test"
"""The repository id of the scope these tests read and write."""

DAY = 86400.0
# Objects are written "now"; planning 3 days later makes them 3 days old.
LATER = utcnow() + timedelta(days=3)
POLICY = RetentionPolicy(full_s=10 * DAY, incremental_s=5 * DAY, wal_s=2 * DAY, min_full=1, gc_grace_s=DAY)


@pytest.fixture
def repo() -> Repository:
    secret = KekSecret("passphrase", b"retention tests", "test")
    return Repository.init(MemoryStorage(), secret, chunker=ChunkerParams(avg_size=64 * 1024))


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SqlCatalog]:
    with open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}") as cat:
        yield cat


def add_backup(
    repo: Repository,
    catalog: SqlCatalog,
    age_days: float,
    kind: BackupKind = "full",
    mode: BackupMode = "logical",
    generation: str | None = None,
    wal: tuple[str, str] | None = None,
) -> Manifest:
    finished = LATER - timedelta(days=age_days)
    bid = new_backup_id(kind, finished - timedelta(minutes=1))
    gen = generation or bid
    refs = []
    for i in range(3):
        data = os.urandom(100) + bid.encode() + bytes([i])
        cid = repo.chunk_id(data)
        stored = repo.put_object(layout.chunk_key("main", gen, cid), data)
        refs.append(ChunkRef(cid, len(data), stored))
    details = {"wal_first": wal[0], "wal_last": wal[1]} if wal else {}
    manifest = Manifest(
        id=bid,
        cluster="main",
        kind=kind,
        mode=mode,
        generation=gen,
        parent_id=None if kind == "full" else gen,
        database="db",
        started_at=finished - timedelta(minutes=1),
        finished_at=finished,
        source_bytes=300,
        stored_bytes=sum(r.stored for r in refs),
        chunks_total=3,
        chunks_new=3,
        streams=[StreamEntry("dump", "pg_dump-custom", 300, "0" * 64, refs)],
        details=details,
    )
    key = repo.write_manifest(manifest)
    catalog.upsert_backup(manifest.to_record(key).copy(repository_id=repo.id))
    return manifest


def seg(n: int) -> str:
    return f"00000001{n // 256:08X}{n % 256:08X}"


def put_wal(repo: Repository, name: str) -> str:
    key = f"main/wal/{name[:8]}/{name}"
    put_bytes(repo.storage, key, b"w" * 64)
    return key


def keys(repo: Repository, prefix: str = "main/") -> set[str]:
    return {i.key for i in repo.storage.list(prefix)}


def test_a_plan_deletes_nothing_and_applying_it_deletes_in_order(
    repo: Repository, catalog: SqlCatalog, tmp_path: Path
) -> None:
    old_full = add_backup(repo, catalog, 20)
    old_incr = add_backup(repo, catalog, 6, "incremental", generation=old_full.id)
    new_full = add_backup(repo, catalog, 1)
    new_incr = add_backup(repo, catalog, 0.5, "incremental", generation=new_full.id)
    wal_old = put_wal(repo, seg(1))
    history = put_wal(repo, "00000002.history")
    before = keys(repo)
    sizes = {i.key: i.size for i in repo.storage.list("main/")}

    plan, result = expire(repo, catalog, "main", POLICY, LATER, apply=False, lock_dir=tmp_path / "locks")
    assert result is None and keys(repo) == before
    assert [b.id for b in plan.backups_to_delete] == [old_full.id, old_incr.id]
    assert [g.generation for g in plan.generations_to_delete] == [old_full.id]

    plan, result = expire(
        repo, catalog, "main", POLICY, LATER, apply=True, lock_dir=tmp_path / "locks", run_id=42
    )
    assert result is not None
    after = keys(repo)
    assert layout.manifest_key("main", old_full.id) not in after
    assert layout.manifest_key("main", old_incr.id) not in after
    assert not {k for k in after if k.startswith(layout.chunks_prefix("main", old_full.id))}
    assert {layout.manifest_key("main", b.id) for b in (new_full, new_incr)} <= after
    assert len([k for k in after if k.startswith(layout.chunks_prefix("main", new_full.id))]) == 6
    assert wal_old not in after and history in after
    assert [b.id for b in catalog.list_backups(Scope(repo.id, "main"))] == [new_full.id, new_incr.id]

    assert result.deleted_backups == {"full": 1, "incremental": 1}
    assert (result.deleted_generations, result.deleted_chunk_objects, result.deleted_wal_files) == (1, 6, 1)
    assert result.deleted_bytes == sum(sizes[k] for k in before - after) == plan.delete_bytes
    assert result.stored_bytes_after == sum(i.size for i in repo.storage.list("main/"))

    records = catalog.list_deletions(Scope(repo.id, "main"))
    assert [(r.what, r.name) for r in records] == [
        ("backup", old_full.id),
        ("backup", old_incr.id),
        ("generation", old_full.id),
        ("wal", seg(1)),
    ]
    assert {r.run_id for r in records} == {42} and all(r.reason for r in records)
    assert records[2].bytes > 0

    report = expiry_report(plan, result)
    assert report["applied"] is True and report["deleted_bytes"] == result.deleted_bytes

    plan, result = expire(repo, catalog, "main", POLICY, LATER, apply=True)  # nothing left to do
    assert plan.empty and result is not None and result.deleted_bytes == 0


def test_applying_refuses_while_a_backup_holds_the_lock(
    repo: Repository, catalog: SqlCatalog, tmp_path: Path
) -> None:
    add_backup(repo, catalog, 20)
    add_backup(repo, catalog, 1)
    before = keys(repo)
    with exclusive(tmp_path / "locks", "backup-main", what="a backup"):
        with pytest.raises(LockedError, match="already running"):
            expire(repo, catalog, "main", POLICY, LATER, apply=True, lock_dir=tmp_path / "locks")
        plan, _ = expire(repo, catalog, "main", POLICY, LATER, apply=False, lock_dir=tmp_path / "locks")
    assert keys(repo) == before and len(plan.backups_to_delete) == 1


def test_a_manual_run_is_recorded(repo: Repository, catalog: SqlCatalog) -> None:
    add_backup(repo, catalog, 20)
    add_backup(repo, catalog, 1)
    expire(repo, catalog, "main", POLICY, LATER, apply=True, trigger="manual")
    (run,) = catalog.list_runs(Scope(repo.id, "main"))
    assert (run.job, run.trigger, run.status) == ("retention", "manual", "succeeded")
    assert {r.run_id for r in catalog.list_deletions(Scope(repo.id, "main"))} == {run.id}


def test_an_unreadable_manifest_is_kept_and_holds_wal(repo: Repository, catalog: SqlCatalog) -> None:
    old = add_backup(repo, catalog, 20)
    add_backup(repo, catalog, 1)
    damaged_key = layout.manifest_key("main", old.id)
    put_bytes(repo.storage, damaged_key, b"garbage")
    put_wal(repo, seg(1))
    plan, result = expire(repo, catalog, "main", POLICY, LATER, apply=True)
    assert result is not None and result.deleted_bytes == 0
    assert damaged_key in keys(repo) and plan.warnings
    assert [d.reason for d in plan.wal] == [WAL_HELD]
    assert [g.action for g in plan.generations] == ["keep", "keep"]


def test_a_storage_failure_stops_the_run_after_the_manifest_and_records_it(
    repo: Repository, catalog: SqlCatalog
) -> None:
    old = add_backup(repo, catalog, 20)
    add_backup(repo, catalog, 1)
    failing = _FailingDeletes(repo.storage, "/chunks/")  # type: ignore[arg-type]
    repo.storage = failing  # type: ignore[assignment]
    with pytest.raises(StorageUnavailable):
        expire(repo, catalog, "main", POLICY, LATER, apply=True, trigger="manual")
    assert layout.manifest_key("main", old.id) not in keys(repo)  # the backup is gone first
    assert [r.what for r in catalog.list_deletions(Scope(repo.id, "main"))] == ["backup"]
    (run,) = catalog.list_runs(Scope(repo.id, "main"))
    assert run.status == "failed" and run.error and "refused" in run.error
    repo.storage = failing.inner  # type: ignore[assignment]
    _, result = expire(repo, catalog, "main", POLICY, LATER, apply=True)  # the next run finishes the job
    assert result is not None and result.deleted_generations == 1


def test_inventory_counts_every_object_of_the_cluster_and_no_other(
    repo: Repository, catalog: SqlCatalog
) -> None:
    add_backup(repo, catalog, 1)
    put_wal(repo, seg(3))
    put_bytes(repo.storage, "main/identity.json", b"{}")
    put_bytes(repo.storage, "main2/backups/x.json", b"other cluster")
    inv = collect_inventory(repo, "main")
    assert len(inv.backups) == 1 and len(inv.generations) == 1 and len(inv.wal) == 1
    assert inv.other_bytes == 2
    total = sum(i.size for i in repo.storage.list("main/"))
    plan, _ = expire(repo, catalog, "main", POLICY, datetime.now().astimezone(), apply=False)
    assert plan.stored_bytes == total


class _FailingDeletes:
    """Delegates to a real store; deletes of keys containing ``marker`` fail as unavailable."""

    def __init__(self, inner: MemoryStorage, marker: str) -> None:
        self.inner = inner
        self.marker = marker

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def delete(self, key: str) -> None:
        if self.marker in key:
            raise StorageUnavailable("delete refused (test)", key=key)
        self.inner.delete(key)
