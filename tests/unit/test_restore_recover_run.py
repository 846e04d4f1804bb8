"""``restore_physical`` and ``recover`` without a PostgreSQL server: the in-memory PostgreSQL of
tests/support/fake_pg.py for the server side; the repository (MemoryStorage), the catalog
(SQLite) and the restored files (tmp_path, real ``LocalDataDirectories``) are real. The end-to-end
paths are in tests/e2e/test_recover.py, test_pitr.py and test_restore_interrupted.py."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog
from contentflow_backupd.errors import BackupdError, IntegrityError, UsageError
from contentflow_backupd.ops.backup.run import BackupOptions, run_backup
from contentflow_backupd.ops.drill.checks import CheckResult
from contentflow_backupd.ops.restore.physical import (
    PhysicalRestoreOptions,
    PhysicalRestoreResult,
    restore_physical,
)
from contentflow_backupd.ops.restore.recover import recover_logical, recover_physical
from contentflow_backupd.ops.restore.recover_report import ServerState
from contentflow_backupd.ops.restore.target import RecoveryTarget
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.manifest import Manifest
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.source.base import ExtractStats, Owner, RecoveryConfig
from contentflow_backupd.source.drivers import LocalDataDirectories
from contentflow_backupd.storage.memory import MemoryStorage
from contentflow_backupd.wal import format_lsn, parse_lsn
from tests.support.fake_pg import (
    CONTENT_FILE,
    Content,
    FakeDatabase,
    FakeLogicalSource,
    FakePhysicalSource,
    FakePostgres,
    FakeRestoreTarget,
)

PASS = KekSecret("passphrase", b"restore unit tests", "test")
CLUSTER = "main"


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStorage(), PASS, chunker=ChunkerParams(avg_size=64 * 1024))


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SqlCatalog]:
    opened = open_catalog(f"sqlite:///{tmp_path}/catalog/catalog.sqlite")
    yield opened
    opened.close()


@pytest.fixture
def archive(repo: Repository) -> WalArchive:
    return WalArchive(repo, CLUSTER)


@pytest.fixture
def source(archive: WalArchive) -> FakePhysicalSource:
    return FakePhysicalSource(Content(), archive)


def backup(repo: Repository, catalog: SqlCatalog, source: FakePhysicalSource | FakeLogicalSource) -> str:
    if isinstance(source, FakeLogicalSource):
        opts = BackupOptions(cluster=CLUSTER, kind="full", mode="logical")
        return run_backup(repo, catalog, opts, logical=source).id
    opts = BackupOptions(cluster=CLUSTER, kind="full", mode="physical", archive_timeout=5)
    return run_backup(repo, catalog, opts, physical=source, archive=WalArchive(repo, CLUSTER)).id


def options(
    pgdata: Path, backup_id: str = "latest", target: RecoveryTarget | None = None
) -> PhysicalRestoreOptions:
    return PhysicalRestoreOptions(
        cluster=CLUSTER,
        backup=backup_id,
        pgdata=pgdata,
        target=target or RecoveryTarget(),
        tool=["contentflow-backupd"],
        recovery=RecoveryConfig(document={"repository": {"url": "memory://"}}),
    )


def damage_first_chunk(repo: Repository, backup_id: str, *, remove: bool = False) -> str:
    manifest = repo.read_manifest(CLUSTER, backup_id)
    ref = manifest.streams[0].chunks[0]
    key = layout.chunk_key(CLUSTER, manifest.generation, ref.id)
    if remove:
        repo.storage.delete(key)
    else:
        raw = bytearray(repo.storage.get(key))
        raw[-1] ^= 0xFF
        repo.storage.put(key, io.BytesIO(bytes(raw)))
    return key


# -- physical restore ------------------------------------------------------------------------------
def test_physical_restore_writes_the_files_and_the_recovery_settings(
    repo: Repository, catalog: SqlCatalog, archive: WalArchive, source: FakePhysicalSource, tmp_path: Path
) -> None:
    backup_id = backup(repo, catalog, source)
    m = repo.read_manifest(CLUSTER, backup_id)
    lsn = format_lsn(parse_lsn(m.details["stop_lsn"]) + 100)
    target = RecoveryTarget.parse(lsn=lsn, action="promote")
    pgdata = tmp_path / "restored"
    result = restore_physical(repo, archive, options(pgdata, target=target), pg=FakePostgres(), audit=catalog)
    assert result.backup_id == backup_id and result.chain == []
    assert {"backup_label", "PG_VERSION", CONTENT_FILE, "base", "global"} <= {
        p.name for p in pgdata.iterdir()
    }
    assert (pgdata / "recovery.signal").exists()
    auto = (pgdata / "postgresql.auto.conf").read_text()
    assert f"recovery_target_lsn = '{lsn}'" in auto
    assert "archive_mode = 'off'" in auto
    assert "wal-fetch" in auto and "restore_command" in auto
    assert result.recovery_dir is not None and (result.recovery_dir / "backupd.toml").exists()
    assert result.wal == {"first": m.details["wal_first"], "last": m.details["wal_last"]}
    assert any("pg_ctl -D" in step for step in result.next_steps)
    assert [e.action for e in catalog.list_audit_events()][-1] == "restore"


def test_a_non_empty_data_directory_is_refused_before_anything_is_written(
    repo: Repository, catalog: SqlCatalog, archive: WalArchive, source: FakePhysicalSource, tmp_path: Path
) -> None:
    backup(repo, catalog, source)
    pgdata = tmp_path / "restored"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("15\n")
    with pytest.raises(UsageError, match="is not empty"):
        restore_physical(repo, archive, options(pgdata), pg=FakePostgres())
    assert [p.name for p in pgdata.iterdir()] == ["PG_VERSION"]
    assert not (tmp_path / "restored.recovery").exists()


def test_a_missing_chunk_is_found_before_anything_is_written(
    repo: Repository, catalog: SqlCatalog, archive: WalArchive, source: FakePhysicalSource, tmp_path: Path
) -> None:
    backup_id = backup(repo, catalog, source)
    key = damage_first_chunk(repo, backup_id, remove=True)
    with pytest.raises(IntegrityError, match="nothing was written") as raised:
        restore_physical(repo, archive, options(tmp_path / "restored"), pg=FakePostgres())
    assert raised.value.key == key
    assert not (tmp_path / "restored").exists()


def test_a_damaged_chunk_found_while_extracting_removes_what_was_written(
    repo: Repository, catalog: SqlCatalog, archive: WalArchive, source: FakePhysicalSource, tmp_path: Path
) -> None:
    backup_id = backup(repo, catalog, source)
    damage_first_chunk(repo, backup_id)
    with pytest.raises(BackupdError):
        restore_physical(repo, archive, options(tmp_path / "restored"), pg=FakePostgres())
    assert not (tmp_path / "restored").exists()
    assert not (tmp_path / "restored.recovery").exists()


def test_missing_wal_refuses_the_restore(
    repo: Repository, catalog: SqlCatalog, archive: WalArchive, source: FakePhysicalSource, tmp_path: Path
) -> None:
    backup_id = backup(repo, catalog, source)
    last = repo.read_manifest(CLUSTER, backup_id).details["wal_last"]
    repo.storage.delete(archive.key(last))
    with pytest.raises(BackupdError, match=last):
        restore_physical(repo, archive, options(tmp_path / "restored"), pg=FakePostgres())
    assert not (tmp_path / "restored").exists()


class Interrupting(LocalDataDirectories):
    """Real files; a Ctrl-C arrives after ``after`` chunks of the tar stream were extracted."""

    def __init__(self, after: int) -> None:
        self.after = after

    def extract_tar(self, chunks: Iterable[bytes], dest: Path, owner: Owner) -> ExtractStats:
        def interrupted() -> Iterator[bytes]:
            for n, chunk in enumerate(chunks):
                if n == self.after:
                    raise KeyboardInterrupt
                yield chunk

        return super().extract_tar(interrupted(), dest, owner)


@pytest.mark.parametrize("existed", [False, True])
def test_an_interrupted_restore_leaves_the_directory_as_it_found_it(
    repo: Repository,
    catalog: SqlCatalog,
    archive: WalArchive,
    source: FakePhysicalSource,
    tmp_path: Path,
    existed: bool,
) -> None:
    backup(repo, catalog, source)
    pgdata = tmp_path / "restored"
    if existed:
        pgdata.mkdir()
    pg = FakePostgres()
    pg.datadir = Interrupting(after=1)
    with pytest.raises(KeyboardInterrupt):
        restore_physical(repo, archive, options(pgdata), pg=pg)
    if existed:
        assert list(pgdata.iterdir()) == [], "an existing empty directory is emptied again, not removed"
    else:
        assert not pgdata.exists()


# -- recover ---------------------------------------------------------------------------------------
def test_recover_falls_back_to_an_older_backup_when_the_newest_is_damaged(
    repo: Repository, catalog: SqlCatalog, archive: WalArchive, source: FakePhysicalSource, tmp_path: Path
) -> None:
    older = backup(repo, catalog, source)
    newest = backup(repo, catalog, source)
    key = damage_first_chunk(repo, newest, remove=True)
    result = recover_physical(
        repo, archive, options(tmp_path / "restored"), catalog=catalog, excluded={}, pg=FakePostgres()
    )
    assert result.backup_id == older
    assert [s.backup_id for s in result.skipped] == [newest]
    assert key in result.skipped[0].reason
    assert (tmp_path / "restored" / "backup_label").exists()
    assert result.status == "succeeded" and not result.started


def test_recover_skips_excluded_backups_and_names_every_one_when_none_is_left(
    repo: Repository, catalog: SqlCatalog, archive: WalArchive, source: FakePhysicalSource, tmp_path: Path
) -> None:
    older = backup(repo, catalog, source)
    newest = backup(repo, catalog, source)
    damage_first_chunk(repo, older, remove=True)
    excluded = {newest: "it holds an open corrupt object"}
    with pytest.raises(UsageError) as raised:
        recover_physical(
            repo,
            archive,
            options(tmp_path / "restored"),
            catalog=catalog,
            excluded=excluded,
            pg=FakePostgres(),
        )
    assert newest in raised.value.message and "open corrupt object" in raised.value.message
    assert older in raised.value.message and "nothing was written" in raised.value.message
    assert not (tmp_path / "restored").exists()


def test_recover_of_one_named_backup_does_not_fall_back(
    repo: Repository, catalog: SqlCatalog, archive: WalArchive, source: FakePhysicalSource, tmp_path: Path
) -> None:
    backup(repo, catalog, source)
    newest = backup(repo, catalog, source)
    damage_first_chunk(repo, newest, remove=True)
    with pytest.raises(UsageError, match="recover without --backup"):
        recover_physical(
            repo,
            archive,
            options(tmp_path / "restored", newest),
            catalog=catalog,
            excluded={},
            pg=FakePostgres(),
        )


def test_recover_starts_the_server_runs_the_checks_and_reports_a_failed_one(
    repo: Repository, catalog: SqlCatalog, archive: WalArchive, source: FakePhysicalSource, tmp_path: Path
) -> None:
    backup_id = backup(repo, catalog, source)
    started: list[Path] = []

    def start(restored: PhysicalRestoreResult) -> ServerState:
        started.append(restored.pgdata)
        return ServerState("promoted", detail="recovery ended")

    def check(manifest: Manifest) -> list[CheckResult]:
        assert manifest.id == backup_id
        return [CheckResult("schema", "passed", "same"), CheckResult("row_counts", "failed", "3 != 2")]

    result = recover_physical(
        repo,
        archive,
        options(tmp_path / "restored"),
        catalog=catalog,
        excluded={},
        pg=FakePostgres(),
        start=start,
        check=check,
    )
    assert started == [tmp_path / "restored"]
    assert result.status == "failed"
    assert [c.name for c in result.checks_failed] == ["row_counts"]


def test_recover_logical_falls_back_and_restores_the_older_content(
    repo: Repository, catalog: SqlCatalog, tmp_path: Path
) -> None:
    older = backup(repo, catalog, FakeLogicalSource(Content(tables={"public.users": 1})))
    newest = backup(repo, catalog, FakeLogicalSource(Content(tables={"public.users": 2})))
    damage_first_chunk(repo, newest)
    pg = FakePostgres()
    db = FakeDatabase("target", "app")
    result = recover_logical(repo, CLUSTER, FakeRestoreTarget(pg, db), excluded={})
    assert result.backup_id == older
    assert [s.backup_id for s in result.skipped] == [newest]
    assert pg.served[db.display()].content.tables == {"public.users": 1}
