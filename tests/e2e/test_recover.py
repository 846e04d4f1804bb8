"""``recover``: the one-command disaster recovery, against real PostgreSQL.

Physical: a cluster that archives with ``wal-push`` takes two full backups (two generations) under
a committing workload, then "dies" (it is stopped). ``recover --start`` brings a new data
directory up on the lost server's address and it holds exactly the rows committed before the
target time; with a byte flipped in a chunk of the newest backup, ``recover`` removes what it
wrote, falls back to the older backup, says why, and still reaches the same moment by replaying
more WAL. Logical: ``recover --to-database`` into a new database, and the same fallback.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.repository import layout
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.storage.local import LocalStorage
from tests.conftest import PASSPHRASE
from tests.e2e import helpers
from tests.e2e.physical import PhysicalSetup, physical_setup
from tests.e2e.pitr_helpers import (
    Mark,
    Restored,
    Workload,
    create_table,
    mark,
    rows,
    switch_and_wait_archived,
)
from tests.support.cli import Cli
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg


@dataclass
class Lost:
    """A cluster with two full backups and marks after each, stopped once the WAL is archived."""

    setup: PhysicalSetup
    older: dict[str, Any]
    newer: dict[str, Any]
    after_older: Mark
    after_newer: Mark


@pytest.fixture(scope="module")
def lost() -> Iterator[Lost]:
    with physical_setup() as setup:
        pg = setup.cluster
        create_table(pg)
        app = pg.create_database("app")
        helpers.seed(pg, app, size_mb=1)
        with Workload(pg):
            time.sleep(0.2)
            older = setup.cli.ok_json("backup", "--kind", "full")
            time.sleep(0.3)
            after_older = mark(pg)
            next_second()
            newer = setup.cli.ok_json("backup", "--kind", "full")
            time.sleep(0.3)
            after_newer = mark(pg)
            time.sleep(0.3)  # commits after the mark: recovery needs one to stop at the target
        switch_and_wait_archived(pg)
        assert older["generation"] != newer["generation"]
        pg.stop()  # the disaster: the server is gone, the repository is all that is left
        yield Lost(setup, older, newer, after_older, after_newer)


def next_second() -> None:
    """Backup ids name their start to the second, and the newest full backup is found by id:
    two backups in one second are ambiguous (a known limitation), so tests keep them apart."""
    now = time.time()
    time.sleep(math.floor(now) + 1.01 - now)


def upto(max_id: int) -> list[int]:
    return list(range(1, max_id + 1))


def _as_postgres() -> dict[str, Any]:
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


@contextmanager
def stopped_afterwards(pg: PgCluster, pgdata: Path) -> Iterator[None]:
    """Stop whatever server runs in ``pgdata`` when the block ends."""
    try:
        yield
    finally:
        subprocess.run(
            [str(pg.bin / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            check=False,
            **_as_postgres(),
        )


@contextmanager
def flipped_byte(path: Path) -> Iterator[None]:
    """Flip one byte in the middle of ``path`` (same size: only reading it finds the damage)."""
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    try:
        yield
    finally:
        path.write_bytes(original)


def chunk_of(repo: Path, generation: str) -> Path:
    # Chunks, or packs (not their indexes, which only the dedup of a later backup reads).
    found = (repo / "main" / "chunks" / generation).rglob("*")
    files = sorted(p for p in found if p.is_file() and not p.name.endswith(".index"))
    assert files, f"no chunks in generation {generation}"
    return files[len(files) // 2]


# -- physical ----------------------------------------------------------------------------------
def test_recover_to_a_time_starts_the_server_with_exactly_the_rows_committed_before_it(lost: Lost) -> None:
    target = lost.after_newer
    pgdata = lost.setup.base / "recovered-start"
    with stopped_afterwards(lost.setup.cluster, pgdata):
        result = lost.setup.cli.run(
            "recover", "--pgdata", str(pgdata), "--target-time", target.time, "--start", "--json"
        )
        assert result.returncode == 0, str(result)
        out = result.json()
        assert out["status"] == "succeeded" and out["mode"] == "physical"
        assert out["backup_id"] == lost.newer["id"] and out["skipped"] == []
        assert out["target"]["kind"] == "time" and out["target"]["action"] == "promote"
        assert out["started"] is True and out["server"]["reached"] == "promoted"
        assert out["server"]["replayed_to"] is not None
        assert set(out["duration_seconds"]) == {"restore", "recovery", "total"}
        assert out["duration_seconds"]["recovery"] is not None
        checks = {c["name"]: c["status"] for c in out["checks"]}
        assert checks["connect"] == "passed" and checks["read_tables"] == "passed", out["checks"]
        assert "failed" not in checks.values(), out["checks"]
        assert any("point the applications" in s for s in out["next_steps"])
        # the recovered server took the lost one's address: BACKUPD_DATABASE_URL reaches it
        assert rows(lost.setup.cluster) == upto(target.max_id)
        assert lost.setup.cluster.execute("select pg_is_in_recovery()")[0][0] is False


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the command as root")
def test_recover_as_root_with_a_private_state_directory_starts_and_checks_the_server(lost: Lost) -> None:
    """As root (a rescue shell, a container) with a state directory the command makes (0700 in a
    0700 parent): the restored directory goes to postgres (--owner), the server starts as postgres,
    restore_command fetches WAL as postgres, and the checks run against it."""
    import shutil
    import tempfile

    target = lost.after_older
    parent = Path(tempfile.mkdtemp(prefix="backupd-root-state-"))
    pgdata = lost.setup.base / "recovered-as-root"
    cli = Cli(env={"BACKUPD_CONFIG": str(lost.setup.config), "BACKUPD_STATE_DIR": str(parent / "state")})
    try:
        with stopped_afterwards(lost.setup.cluster, pgdata):
            result = cli.run(
                "recover", "--pgdata", str(pgdata), "--owner", "postgres", "--target-time", target.time,
                "--target-action", "pause", "--start", "--json",
            )  # fmt: skip
            assert result.returncode == 0, str(result)
            out = result.json()
            assert out["status"] == "succeeded" and out["server"]["reached"] == "paused", out
            checks = {c["name"]: c["status"] for c in out["checks"]}
            assert checks["connect"] == "passed" and checks["read_tables"] == "passed", out["checks"]
            assert not {"failed", "not_run"} & set(checks.values()), out["checks"]
            assert rows(lost.setup.cluster) == upto(target.max_id)
        assert (parent / "state").stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_recover_with_pause_waits_at_the_target_and_checks_the_read_only_server(lost: Lost) -> None:
    target = lost.after_older
    pgdata = lost.setup.base / "recovered-paused"
    with stopped_afterwards(lost.setup.cluster, pgdata):
        out = lost.setup.cli.ok_json(
            "recover",
            "--pgdata",
            str(pgdata),
            "--target-time",
            target.time,
            "--target-action",
            "pause",
            "--start",
        )
        assert out["backup_id"] == lost.older["id"]  # the newer one ended after the target
        assert out["server"]["reached"] == "paused" and out["status"] == "succeeded"
        connect = next(c for c in out["checks"] if c["name"] == "connect")
        assert "read-only" in connect["detail"]
        assert any("pg_wal_replay_resume" in s for s in out["next_steps"])
        assert rows(lost.setup.cluster) == upto(target.max_id)


def test_recover_reports_a_server_that_stops_during_recovery(lost: Lost) -> None:
    pgdata = lost.setup.base / "recovered-unreachable-xid"
    with stopped_afterwards(lost.setup.cluster, pgdata):
        result = lost.setup.cli.run(
            "recover", "--pgdata", str(pgdata), "--target-xid", "4000000000", "--start"
        )
    assert result.returncode == 1, str(result)
    assert "stopped during recovery" in result.stderr
    assert "recovery ended before configured recovery target was reached" in result.stderr
    assert (pgdata / "PG_VERSION").exists()  # the restored directory stays for inspection


def test_recover_falls_back_to_the_older_backup_when_a_chunk_of_the_newest_is_damaged(lost: Lost) -> None:
    target = lost.after_newer
    pgdata = lost.setup.base / "recovered-fallback"
    damaged = chunk_of(lost.setup.repo, lost.newer["generation"])
    with flipped_byte(damaged):
        result = lost.setup.cli.run("recover", "--pgdata", str(pgdata), "--target-time", target.time)
    assert result.returncode == 0, str(result)
    key = str(damaged.relative_to(lost.setup.repo))
    assert f"skipped backup {lost.newer['id']}:" in result.stdout and key in result.stdout, str(result)
    assert f"recovered backup {lost.older['id']}" in result.stdout
    assert "pg_ctl -D" in result.stdout  # without --start: how to start it
    server = Restored(pgdata, lost.setup.cluster).start()
    try:
        server.wait_promoted()
        assert rows(server) == upto(target.max_id)  # the older backup plus more WAL: the same moment
    finally:
        server.stop()


def test_recover_names_every_backup_when_none_can_be_used(lost: Lost) -> None:
    pgdata = lost.setup.base / "recovered-none"
    damaged = [chunk_of(lost.setup.repo, b["generation"]) for b in (lost.older, lost.newer)]
    with flipped_byte(damaged[0]), flipped_byte(damaged[1]):
        result = lost.setup.cli.run(
            "recover", "--pgdata", str(pgdata), "--target-time", lost.after_newer.time
        )
    assert result.returncode == 2, str(result)
    assert lost.older["id"] in result.stderr and lost.newer["id"] in result.stderr
    assert "nothing was written" in result.stderr
    assert not pgdata.exists()


def test_recover_never_writes_into_a_non_empty_directory(lost: Lost) -> None:
    pgdata = lost.setup.base / "occupied"
    pgdata.mkdir()
    (pgdata / "keep.txt").write_text("mine")
    result = lost.setup.cli.run("recover", "--pgdata", str(pgdata))
    assert result.returncode == 2 and "not empty" in result.stderr, str(result)
    assert [p.name for p in pgdata.iterdir()] == ["keep.txt"]


def test_recover_skips_a_backup_with_an_open_corrupt_object(lost: Lost) -> None:
    damaged = chunk_of(lost.setup.repo, lost.newer["generation"])
    with flipped_byte(damaged):
        found = lost.setup.cli.run("verify", "--since-last")
        assert found.returncode == 1, str(found)
    # repaired on disk, but still recorded as corrupt until verification resolves it
    pgdata = lost.setup.base / "recovered-recorded"
    out = lost.setup.cli.ok_json("recover", "--pgdata", str(pgdata), "--target-time", lost.after_newer.time)
    assert out["backup_id"] == lost.older["id"]
    assert [s["backup_id"] for s in out["skipped"]] == [lost.newer["id"]]
    assert "open corrupt object" in out["skipped"][0]["reason"]
    assert str(damaged.relative_to(lost.setup.repo)) in out["skipped"][0]["reason"]


# -- logical -----------------------------------------------------------------------------------
def test_logical_recover_into_a_new_database(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    cli.run("init", check=True)
    helpers.seed(pg, pg_db, size_mb=2)
    older = cli.ok_json("backup", "--kind", "full")
    older_sums = helpers.checksums(pg, pg_db)
    helpers.change(pg, pg_db)
    next_second()
    newest = cli.ok_json("backup", "--kind", "full")
    expected = helpers.checksums(pg, pg_db)
    target = pg_db + "_recovered"
    try:
        out = cli.ok_json("recover", "--to-database", pg.url(target))
        assert out["status"] == "succeeded" and out["mode"] == "logical"
        assert out["backup_id"] == newest["id"] and out["skipped"] == []
        assert out["started"] is True and out["restored_bytes"] > 0
        checks = {c["name"]: c["status"] for c in out["checks"]}
        assert checks["connect"] == "passed" and "failed" not in checks.values(), out["checks"]
        assert helpers.checksums(pg, target) == expected
        again = cli.run("recover", "--to-database", pg.url(target))  # it holds tables now
        assert again.returncode != 0 and "refusing" in again.stderr, str(again)
    finally:
        pg.drop_database(target)
    # A given backup: named by the positional BACKUP, or by --backup (the old spelling).
    for i, named in enumerate(([older["id"]], ["--backup", older["id"]])):
        target = f"{pg_db}_given_{i}"
        try:
            out = cli.ok_json("recover", *named, "--to-database", pg.url(target))
            assert out["backup_id"] == older["id"] and out["status"] == "succeeded", out
            assert helpers.checksums(pg, target) == older_sums
        finally:
            pg.drop_database(target)


def test_logical_recover_falls_back_when_the_newest_backup_is_damaged(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    cli.run("init", check=True)
    helpers.seed(pg, pg_db, size_mb=2)
    older = cli.ok_json("backup", "--kind", "full")
    at_older = helpers.checksums(pg, pg_db)
    helpers.change(pg, pg_db, fraction=0.05)
    next_second()
    newer = cli.ok_json("backup", "--kind", "full")
    target = pg_db + "_fallback"
    damaged = chunk_of(tmp_path / "repo", newer["generation"])
    try:
        with flipped_byte(damaged):
            out = cli.ok_json("recover", "--to-database", pg.url(target))
        assert out["backup_id"] == older["id"]
        assert [s["backup_id"] for s in out["skipped"]] == [newer["id"]]
        assert str(damaged.relative_to(tmp_path / "repo")) in out["skipped"][0]["reason"]
        assert "rolled back" in out["skipped"][0]["reason"]
        assert helpers.checksums(pg, target) == at_older
    finally:
        pg.drop_database(target)


def test_recover_refuses_physical_options_with_a_database(cli: Cli, pg: PgCluster) -> None:
    result = cli.run("recover", "--to-database", pg.url("x"), "--target-time", "2026-01-01T00:00:00Z")
    assert result.returncode == 2 and "--target-time" in result.stderr, str(result)
    result = cli.run("recover")
    assert result.returncode == 2 and "exactly one of" in result.stderr, str(result)


def test_a_damaged_chunk_rules_out_every_backup_of_its_generation_that_needs_it(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    cli.run("init", check=True)
    helpers.seed(pg, pg_db, size_mb=2)
    oldest = cli.ok_json("backup", "--kind", "full")
    at_oldest = helpers.checksums(pg, pg_db)
    helpers.change(pg, pg_db)
    next_second()
    full = cli.ok_json("backup", "--kind", "full")
    helpers.change(pg, pg_db)
    next_second()
    incremental = cli.ok_json("backup", "--kind", "incremental")
    assert incremental["generation"] == full["generation"] != oldest["generation"]
    repo = Repository.open(
        LocalStorage(tmp_path / "repo"), KekSecret("passphrase", PASSPHRASE.encode(), "test")
    )

    def objects(backup_id: str) -> set[str]:  # chunks, or the packs holding them
        m = repo.read_manifest("main", backup_id)
        return {layout.object_key("main", m.generation, ref) for ref in m.chunk_refs()}

    shared = objects(full["id"]) & objects(incremental["id"])
    assert shared
    key = sorted(shared)[0]
    target = pg_db + "_generation"
    try:
        with flipped_byte(tmp_path / "repo" / key):
            out = cli.ok_json("recover", "--to-database", pg.url(target))
        assert out["backup_id"] == oldest["id"]
        reasons = {s["backup_id"]: s["reason"] for s in out["skipped"]}
        assert list(reasons) == [incremental["id"], full["id"]]
        assert key in reasons[incremental["id"]] and "rolled back" in reasons[incremental["id"]]
        assert reasons[full["id"]] == (
            f"it needs object {key}, found damaged while restoring backup {incremental['id']}"
        )
        assert helpers.checksums(pg, target) == at_oldest
    finally:
        pg.drop_database(target)
