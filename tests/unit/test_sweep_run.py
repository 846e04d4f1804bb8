"""``verify_since_last`` and the daemon's helpers on the in-memory store and a real SQLite catalog:
what is read, what is recorded and resolved, which backups need which object (chunks, WAL,
manifests), and that nothing is saved when a run cannot finish."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from contentflow_backupd.catalog.base import VerifyState
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
from contentflow_backupd.ops.verify.sweep import (
    REPAIRED,
    UNNEEDED,
    SweepResult,
    open_corrupt_count,
    quick_check_backup,
    record_faults,
    verify_since_last,
)
from contentflow_backupd.ops.verify.sweep_index import build_index
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.manifest import ChunkRef, Manifest, StreamEntry
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.storage.base import put_bytes
from contentflow_backupd.storage.memory import MemoryStorage

REPO_ID = "repo-test"
"""The repository id of the scope these tests read and write."""

DAY = 86400.0
SEG_SIZE = 1024 * 1024
SYSID = 7_000_000_000_000_000_001
T0 = utcnow()


class OutageStorage(MemoryStorage):
    """Memory storage that cannot be reached for one key while ``down`` is set."""

    down: str | None = None

    def get(self, key: str) -> bytes:
        if key == self.down:
            raise StorageUnavailable(f"connection reset reading {key}", key=key)
        return super().get(key)


@pytest.fixture
def repo() -> Repository:
    secret = KekSecret("passphrase", b"sweep tests", "test")
    return Repository.init(OutageStorage(), secret, chunker=ChunkerParams(avg_size=64 * 1024))


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SqlCatalog]:
    with open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}") as cat:
        yield cat


def add_backup(
    repo: Repository,
    kind: BackupKind = "full",
    generation: str | None = None,
    *,
    chunks: int = 3,
    shared: list[ChunkRef] | None = None,
    mode: BackupMode = "logical",
    wal: tuple[str, str] | None = None,
) -> Manifest:
    bid = new_backup_id(kind, T0 + timedelta(seconds=len(list(repo.iter_backup_ids("main")))))
    gen = generation or bid
    refs = list(shared or [])
    for i in range(chunks):
        data = os.urandom(200) + bid.encode() + bytes([i])
        cid = repo.chunk_id(data)
        refs.append(ChunkRef(cid, len(data), repo.put_object(layout.chunk_key("main", gen, cid), data)))
    details = {"wal_first": wal[0], "wal_last": wal[1], "wal_segment_size": SEG_SIZE} if wal else {}
    manifest = Manifest(
        id=bid,
        cluster="main",
        kind=kind,
        mode=mode,
        generation=gen,
        parent_id=None if kind == "full" else gen,
        database="db",
        started_at=T0,
        finished_at=T0,
        source_bytes=1,
        stored_bytes=1,
        chunks_total=len(refs),
        chunks_new=chunks,
        streams=[StreamEntry("dump", "pg_dump-custom", 1, "0" * 64, refs)],
        details=details,
    )
    repo.write_manifest(manifest)
    return manifest


def chunk_key(m: Manifest, i: int) -> str:
    return layout.chunk_key("main", m.generation, m.chunk_refs()[i].id)


def damage(repo: Repository, key: str) -> bytes:
    original = repo.storage.get(key)
    blob = bytearray(original)
    blob[len(blob) // 2] ^= 0xFF
    put_bytes(repo.storage, key, bytes(blob))
    return original


def segment(n: int, sysid: int = SYSID) -> tuple[str, bytes]:
    name = f"00000001{n // 4096:08X}{n % 4096:08X}"
    header = struct.pack("<HHIQIIQII", 0xD116, 0x0002, 1, n * SEG_SIZE, 0, 0, sysid, SEG_SIZE, 8192)
    return name, header + b"\0" * (SEG_SIZE - len(header))


def sweep(repo: Repository, catalog: SqlCatalog, full_sweep_days: float = 1, **kw: object) -> SweepResult:
    return verify_since_last(
        repo,
        catalog,
        "main",
        full_sweep_s=full_sweep_days * DAY,
        interval_s=DAY,
        **kw,  # type: ignore[arg-type]
    )


def test_new_backups_are_read_once_then_the_sweep_covers_the_rest(
    repo: Repository, catalog: SqlCatalog
) -> None:
    full = add_backup(repo)
    incr = add_backup(repo, "incremental", full.id, shared=full.chunk_refs()[:2])
    first = sweep(repo, catalog, full_sweep_days=4)
    assert first.ok and first.new_backups == [full.id, incr.id]
    assert first.new_objects_read == 6 + 2  # six chunks, two manifests
    assert first.manifests_read == 2 and first.referenced_checked == 6 and first.bytes_read > 0
    state = catalog.get_verify_state(Scope(repo.id, "main"))
    assert state.verified_backups == tuple(sorted([full.id, incr.id])) and state.sweep_objects_total == 8

    second = sweep(repo, catalog, full_sweep_days=4)
    assert second.new_backups == [] and second.new_objects_read == 0
    assert second.plan.share == 2 and second.sweep_objects_read == 2  # ceil(8 objects / 4)
    assert (
        second.to_json()["sweep"]["cursor"]
        == second.plan.cursor
        == catalog.get_verify_state(Scope(repo.id, "main")).sweep_cursor
    )

    incr2 = add_backup(repo, "incremental", full.id, chunks=1)
    third = sweep(repo, catalog, full_sweep_days=4)
    assert third.new_backups == [incr2.id] and third.new_objects_read == 2
    assert third.plan.keys[0] > (second.plan.cursor or "")  # the sweep went on from its cursor


def test_a_damaged_chunk_names_every_backup_that_needs_it_and_a_repair_resolves_it(
    repo: Repository, catalog: SqlCatalog
) -> None:
    full = add_backup(repo)
    incr = add_backup(repo, "incremental", full.id, shared=full.chunk_refs()[:1])
    sweep(repo, catalog)
    key = chunk_key(full, 0)
    original = damage(repo, key)
    found = sweep(repo, catalog)  # full_sweep = interval: everything is read every run
    assert not found.ok
    (finding,) = found.found
    assert finding.key == key and finding.backup_ids == tuple(sorted([full.id, incr.id]))
    assert "failed authentication" in finding.problem
    assert open_corrupt_count(catalog, Scope(repo.id, "main")) == 1

    again = sweep(repo, catalog)
    assert again.rechecked == 1 and len(catalog.list_corrupt(Scope(repo.id, "main"), open_only=False)) == 1

    put_bytes(repo.storage, key, original)
    repaired = sweep(repo, catalog)
    assert repaired.ok and [(r.key, r.resolution) for r in repaired.resolved] == [(key, REPAIRED)]
    (record,) = catalog.list_corrupt(Scope(repo.id, "main"), open_only=False)
    assert record.resolution == REPAIRED and record.resolved_at is not None


def test_a_chunk_with_the_wrong_content_or_size_is_found(repo: Repository, catalog: SqlCatalog) -> None:
    full = add_backup(repo)
    sweep(repo, catalog)
    # A validly sealed object whose plaintext is not the chunk its id names.
    key = chunk_key(full, 1)
    repo.put_object(key, b"other data")
    result = sweep(repo, catalog)
    assert [(f.key, f.problem) for f in result.found] == [
        (key, f"object {key} does not hold the data its id names")
    ]
    # A stored size that differs from the manifest's is seen in the listing alone.
    key2 = chunk_key(full, 2)
    put_bytes(repo.storage, key2, repo.storage.get(key2) + b"x")
    stored = full.chunk_refs()[2].stored
    assert build_index(repo, "main").referenced_problems()[key2] == f"size {stored + 1}, expected {stored}"
    result = sweep(repo, catalog)
    assert {f.key for f in result.found} == {key, key2}  # reading it fails too, and says why


def test_bad_objects_no_backup_needs_are_ignored_and_records_of_them_resolved(
    repo: Repository, catalog: SqlCatalog
) -> None:
    full = add_backup(repo)
    # A chunk of a crashed backup (no manifest names it), damaged.
    data = b"orphan chunk"
    orphan = layout.chunk_key("main", full.id, repo.chunk_id(data))
    repo.put_object(orphan, data)
    damage(repo, orphan)
    catalog.record_corrupt(Scope(repo.id, "main"), orphan, [full.id], "recorded earlier")
    result = sweep(repo, catalog)
    assert result.ok and result.found == []
    assert [f.key for f in result.ignored] == [orphan] and result.ignored[0].backup_ids == ()
    assert [(r.key, r.resolution) for r in result.resolved] == [(orphan, UNNEEDED)]


def test_a_deleted_backup_resolves_the_records_only_it_needed(repo: Repository, catalog: SqlCatalog) -> None:
    old = add_backup(repo)
    new = add_backup(repo)
    sweep(repo, catalog)
    key = chunk_key(old, 0)
    repo.storage.delete(key)
    result = sweep(repo, catalog)
    assert [(f.key, f.problem, f.backup_ids) for f in result.found] == [(key, "missing", (old.id,))]
    repo.storage.delete(layout.manifest_key("main", old.id))  # retention removed the old backup
    result = sweep(repo, catalog)
    assert result.ok and [(r.key, r.resolution) for r in result.resolved] == [(key, UNNEEDED)]
    assert catalog.get_verify_state(Scope(repo.id, "main")).verified_backups == (new.id,)


def test_wal_needs_follow_the_physical_backups(repo: Repository, catalog: SqlCatalog) -> None:
    archive = WalArchive(repo, "main")
    names = {}
    for n in range(1, 7):
        name, data = segment(n)
        archive.push(name, data)
        names[n] = name
    archive.push("00000002.history", b"1\t0/3000000\tno recovery target specified\n")
    backup = add_backup(repo, mode="physical", wal=(names[3], names[4]))
    assert sweep(repo, catalog).ok

    damage(repo, archive.key(names[1]))  # older than every backup: nobody needs it
    damage(repo, archive.key(names[6]))  # after the backup: needed to roll forward
    damage(repo, archive.key("00000002.history"))
    repo.storage.delete(archive.key(names[4]))  # inside the consistency range
    _, other = segment(5, sysid=SYSID + 1)
    put_bytes(repo.storage, archive.key(names[5]), repo.encode(archive.key(names[5]), other))
    result = sweep(repo, catalog)
    found = {f.key: f for f in result.found}
    assert set(found) == {archive.key(names[n]) for n in (4, 5, 6)} | {archive.key("00000002.history")}
    assert all(f.backup_ids == (backup.id,) for f in found.values())
    assert found[archive.key(names[4])].problem == "WAL needed for consistency: missing"
    assert "from PostgreSQL system" in found[archive.key(names[5])].problem
    assert [f.key for f in result.ignored] == [archive.key(names[1])]

    # Retention removes the old segment and the roll-forward one: only the consistency one stays
    # needed when gone.
    repo.storage.delete(archive.key(names[6]))
    result = sweep(repo, catalog)
    assert archive.key(names[6]) in {r.key for r in result.resolved}
    assert archive.key(names[4]) in {r.key for r in result.open_corrupt}


def test_an_unreadable_manifest_is_found_and_holds_every_chunk(repo: Repository, catalog: SqlCatalog) -> None:
    full = add_backup(repo)
    data = b"a chunk only the damaged manifest may know"
    orphan = layout.chunk_key("main", full.id, repo.chunk_id(data))
    repo.put_object(orphan, data)
    damage(repo, orphan)
    damage(repo, layout.manifest_key("main", full.id))
    result = sweep(repo, catalog)
    found = {f.key: f for f in result.found}
    mkey = layout.manifest_key("main", full.id)
    assert found[mkey].problem.startswith("manifest unreadable") and found[mkey].backup_ids == (full.id,)
    assert found[orphan].backup_ids == (full.id,)  # held while the manifest is unreadable


def test_an_unreachable_storage_aborts_the_run_and_saves_nothing(
    repo: Repository, catalog: SqlCatalog
) -> None:
    full = add_backup(repo)
    storage = repo.storage
    assert isinstance(storage, OutageStorage)
    storage.down = chunk_key(full, 1)
    with pytest.raises(StorageUnavailable):
        sweep(repo, catalog)
    assert catalog.get_verify_state(Scope(repo.id, "main")) == VerifyState("main")
    assert catalog.list_corrupt(Scope(repo.id, "main"), open_only=False) == []
    storage.down = None
    result = sweep(repo, catalog)
    assert result.ok and result.new_backups == [full.id]  # the work is repeated, not skipped


def test_quick_check_faults_are_recorded_and_completed_by_the_next_run(
    repo: Repository, catalog: SqlCatalog
) -> None:
    full = add_backup(repo)
    incr = add_backup(repo, "incremental", full.id, shared=full.chunk_refs()[:1])
    assert quick_check_backup(repo, "main", incr.id) == []
    key = chunk_key(full, 0)
    original = repo.storage.get(key)
    repo.storage.delete(key)
    faults = quick_check_backup(repo, "main", incr.id, concurrency=2)
    assert [(f.key, f.problem) for f in faults] == [(key, "missing")]
    (record,) = record_faults(catalog, Scope(repo.id, "main"), faults + faults)
    assert record.backup_ids == (incr.id,) and open_corrupt_count(catalog, Scope(repo.id, "main")) == 1

    result = sweep(repo, catalog)
    (open_record,) = result.open_corrupt
    assert open_record.backup_ids == tuple(sorted([full.id, incr.id])) and open_record.id == record.id
    put_bytes(repo.storage, key, original)
    assert sweep(repo, catalog).ok and open_corrupt_count(catalog, Scope(repo.id, "main")) == 0


def test_one_run_per_cluster_at_a_time(repo: Repository, catalog: SqlCatalog, tmp_path: Path) -> None:
    add_backup(repo)
    with exclusive(tmp_path / "locks", "verify-main", what="test"), pytest.raises(LockedError):
        sweep(repo, catalog, lock_dir=tmp_path / "locks")
    assert sweep(repo, catalog, lock_dir=tmp_path / "locks").ok


def test_the_json_report(repo: Repository, catalog: SqlCatalog) -> None:
    full = add_backup(repo)
    out = sweep(repo, catalog, full_sweep_days=7).to_json()
    assert out["status"] == "ok" and out["read"]["new_backups"] == [full.id]
    assert set(out["sweep"]) >= {
        "cursor",
        "share",
        "objects_total",
        "remaining_in_pass",
        "estimated_pass_end",
    }
    assert out["found"] == out["resolved"] == out["open_corrupt"] == []
