"""Small logical incrementals (issue 15): a ~29 MB database, a ~1% change spread over its heaps,
an incremental that stores at most 10% of the full. The dump of a small database is cut into
small chunks stored many to an object (packs); the installed command, a real PostgreSQL, a local
repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import dataset
from tests.e2e.helpers import checksums
from tests.support.cli import Cli
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

SIZE_MB = 25
"""``bench/dataset.py`` at 25 MiB: about 30 MiB on disk, the issue's 29 MB case."""


def _database_bytes(pg: PgCluster, db: str) -> int:
    with pg.connect(db) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def test_a_one_percent_change_of_a_29_mb_database_stores_under_a_tenth(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    with pg.connect(pg_db) as conn:
        conn.autocommit = True
        dataset.build(conn, SIZE_MB)
    size = _database_bytes(pg, pg_db)
    cli.run("init", check=True)
    full = cli.ok_json("backup", "--kind", "full")

    repo = tmp_path / "repo"
    in_packs = sorted((repo / "main" / "chunks" / full["id"] / "packs").iterdir())
    packs = [p for p in in_packs if not p.name.endswith(".index")]
    assert [p.name + ".index" for p in packs] == [p.name for p in in_packs if p.name.endswith(".index")]
    objects = sorted(p for p in (repo / "main" / "chunks").rglob("*") if p.is_file())
    assert packs and objects == in_packs, "a small database's dump is in packs (and their indexes) only"
    shown = cli.ok_json("show", full["id"])["manifest"]["streams"][0]
    assert shown["chunk_size"] == 1024 and shown["chunks"] > 10000
    assert shown["packs"] == len(packs) < 20

    with pg.connect(pg_db) as conn:
        dataset.spread_change(conn, dataset.change_rows_for(size))
    after = checksums(pg, pg_db)
    incr = cli.ok_json("backup", "--kind", "incremental")
    assert incr["kind"] == "incremental" and incr["parent_id"] == full["id"]
    share = incr["stored_bytes"] / full["stored_bytes"]
    print(
        f"\nPACKS: {size / 1e6:.1f} MB database, full stored {full['stored_bytes']} B,"
        f" incremental stored {incr['stored_bytes']} B ({share:.1%})"
    )
    assert share <= 0.10

    verified = cli.ok_json("verify", "--all")
    assert verified["faults"] == [] and verified["repository"]["warnings"] == [], verified
    indexes = list((repo / "main" / "chunks").rglob("*.index"))
    assert verified["repository"]["objects_by_kind"]["pack index"] == len(indexes) > 0
    cli.run("verify", "--quick", incr["id"], check=True)
    target = "restored_" + pg_db
    cli.run("restore", "latest", "--to-database", pg.url(target), "--create", check=True)
    assert checksums(pg, target) == after
    pg.drop_database(target)

    # One flipped byte in a pack the incremental uses: verify names it, the restore refuses.
    victim = packs[len(packs) // 2]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    victim.write_bytes(bytes(raw))
    res = cli.run("verify", "--all")
    assert res.returncode != 0
    assert re.search(rf"main/chunks/{full['id']}/packs/{victim.name}", res.stdout + res.stderr)
    res = cli.run("restore", incr["id"], "--to-database", pg.url(target), "--create")
    assert res.returncode != 0
    assert victim.name in res.stdout + res.stderr


def test_packs_off_cuts_a_small_database_at_the_repository_chunk_size(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    with pg.connect(pg_db) as conn:
        conn.autocommit = True
        dataset.build(conn, 4)
    cli.run("init", check=True)
    packed = cli.ok_json("backup", "--kind", "full")
    cli.env["BACKUPD_CHUNKING__PACKS"] = "false"
    plain = cli.ok_json("backup", "--kind", "full")
    chunks = tmp_path / "repo" / "main" / "chunks"
    assert (chunks / packed["id"] / "packs").is_dir()
    assert not (chunks / plain["id"] / "packs").exists()
    assert cli.ok_json("show", plain["id"])["manifest"]["streams"][0]["chunk_size"] is None
    cli.run("verify", "--all", check=True)
    cli.run("restore", plain["id"], "--to-database", pg.url("plain_" + pg_db), "--create", check=True)
    assert checksums(pg, "plain_" + pg_db) == checksums(pg, pg_db)
    pg.drop_database("plain_" + pg_db)
