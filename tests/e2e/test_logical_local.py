"""Logical backups end to end: the installed command, a real PostgreSQL, a local repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.helpers import change, checksums, chunk_files, seed
from tests.support.cli import Cli
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

BACKUP_KEYS = {
    "id",
    "kind",
    "mode",
    "status",
    "started_at",
    "finished_at",
    "duration_seconds",
    "source_bytes",
    "stored_bytes",
    "chunks_total",
    "chunks_new",
    "generation",
    "parent_id",
    "database",
}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_full_and_incremental_round_trip(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    seed(pg, pg_db)
    assert cli.ok_json("init")["repository_id"]
    full = cli.ok_json("backup", "--kind", "full")
    assert set(full) >= BACKUP_KEYS
    assert full["kind"] == "full" and full["mode"] == "logical" and full["status"] == "succeeded"
    assert full["parent_id"] is None and full["generation"] == full["id"]
    assert full["database"] == pg_db
    assert ISO.match(full["started_at"]) and ISO.match(full["finished_at"])
    assert 0 < full["chunks_new"] <= full["chunks_total"]  # small chunks repeat within a dump
    before = checksums(pg, pg_db)

    change(pg, pg_db)
    after = checksums(pg, pg_db)
    assert after != before
    incr = cli.ok_json("backup", "--kind", "incremental")
    assert incr["kind"] == "incremental"
    assert incr["parent_id"] == full["id"] and incr["generation"] == full["id"]
    assert incr["chunks_new"] < incr["chunks_total"]

    listed = cli.ok_json("list")
    assert [b["id"] for b in listed] == [full["id"], incr["id"]]
    assert set(listed[0]) >= BACKUP_KEYS

    shown = cli.ok_json("show", incr["id"])
    assert shown["id"] == incr["id"] and shown["manifest"]["streams"][0]["type"] == "pg_dump-custom"

    cli.run("verify", "--all", check=True)
    cli.run("verify", "--quick", full["id"], check=True)

    latest_db = pg.url("restored_latest_" + pg_db)
    res = cli.ok_json("restore", "latest", "--to-database", latest_db, "--create")
    assert res["backup_id"] == incr["id"]
    assert checksums(pg, "restored_latest_" + pg_db) == after

    cli.run(
        "restore",
        full["id"],
        "--to-database",
        pg.url("restored_full_" + pg_db),
        "--create",
        check=True,
    )
    assert checksums(pg, "restored_full_" + pg_db) == before

    # parallel pg_restore path
    cli.run(
        "restore",
        incr["id"],
        "--to-database",
        pg.url("restored_jobs_" + pg_db),
        "--create",
        "--jobs",
        "2",
        check=True,
    )
    assert checksums(pg, "restored_jobs_" + pg_db) == after
    for db in ("restored_latest_", "restored_full_", "restored_jobs_"):
        pg.drop_database(db + pg_db)


def test_restore_refuses_a_database_with_tables_unless_clean(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    seed(pg, pg_db)
    cli.run("init", check=True)
    backup = cli.ok_json("backup", "--kind", "full")
    before = checksums(pg, pg_db)
    res = cli.run("restore", backup["id"], "--to-database", pg.url(pg_db))
    assert res.returncode == 1
    assert "--clean" in res.stderr and "refusing" in res.stderr
    missing = cli.run("restore", backup["id"], "--to-database", pg.url("nope_" + pg_db))
    assert missing.returncode == 1 and "--create" in missing.stderr
    change(pg, pg_db)
    cli.run("restore", backup["id"], "--to-database", pg.url(pg_db), "--clean", check=True)
    assert checksums(pg, pg_db) == before


def test_restore_to_file_gives_a_pg_restore_archive(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    seed(pg, pg_db)
    cli.run("init", check=True)
    backup = cli.ok_json("backup", "--kind", "full")
    out = tmp_path / "dump.pgdump"
    cli.run("restore", backup["id"], "--to-file", str(out), check=True)
    assert out.read_bytes()[:5] == b"PGDMP"
    assert out.stat().st_size == backup["source_bytes"]
    again = cli.run("restore", backup["id"], "--to-file", str(out))
    assert again.returncode != 0 and "exists" in again.stderr


def test_incremental_without_a_full_runs_as_full(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    seed(pg, pg_db, size_mb=1)
    cli.run("init", check=True)
    res = cli.run("backup", "--kind", "incremental", "--json", check=True)
    assert res.json()["kind"] == "full"
    assert "full" in res.stderr


def test_dedup_incremental_after_append_heavy_change_is_small(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    seed(pg, pg_db, size_mb=24)
    cli.run("init", check=True)
    full = cli.ok_json("backup", "--kind", "full")
    change(pg, pg_db, fraction=0.01)
    incr = cli.ok_json("backup", "--kind", "incremental")
    share = incr["stored_bytes"] / full["stored_bytes"]
    print(
        f"\nDEDUP: full stored {full['stored_bytes']} B, incremental stored {incr['stored_bytes']} B "
        f"= {share:.1%} of the full (source {incr['source_bytes']} B)"
    )
    assert share < 0.25, share


def test_catalog_rebuild_from_the_repository(cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path) -> None:
    seed(pg, pg_db, size_mb=1)
    cli.run("init", check=True)
    a = cli.ok_json("backup", "--kind", "full")
    b = cli.ok_json("backup", "--kind", "incremental")
    fresh = {"BACKUPD_STATE_DIR": str(tmp_path / "other-state")}
    assert cli.run("list", "--json", env=fresh, check=True).json() == []
    rebuilt = cli.run("catalog", "rebuild", "--json", env=fresh, check=True).json()
    assert rebuilt["backups"] == 2
    listed = cli.run("list", "--json", env=fresh, check=True).json()
    assert [x["id"] for x in listed] == [a["id"], b["id"]]
    for want, got in zip((a, b), listed, strict=True):
        for key in (
            "kind",
            "generation",
            "parent_id",
            "source_bytes",
            "stored_bytes",
            "chunks_total",
            "chunks_new",
        ):
            assert got[key] == want[key], key


def test_config_show_masks_secrets(cli: Cli, pg: PgCluster) -> None:
    out = cli.run("config", "show", "--json", check=True).json()
    by_name = {r["name"]: r for r in out}
    assert by_name["BACKUPD_ENCRYPTION__PASSPHRASE"]["value"] == "********"
    assert by_name["BACKUPD_ENCRYPTION__PASSPHRASE"]["source"] == "env"
    assert pg.password not in json.dumps(out)
    assert by_name["BACKUPD_CLUSTER"] == {
        "name": "BACKUPD_CLUSTER",
        "value": "main",
        "source": "default",
    }


def test_chunks_are_spread_over_generations(cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path) -> None:
    seed(pg, pg_db, size_mb=1)
    cli.run("init", check=True)
    a = cli.ok_json("backup", "--kind", "full")
    b = cli.ok_json("backup", "--kind", "full")
    gens = {
        p.relative_to(tmp_path / "repo" / "main" / "chunks").parts[0] for p in chunk_files(tmp_path / "repo")
    }
    assert gens == {a["id"], b["id"]}
