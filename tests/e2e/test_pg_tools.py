"""Client tools and servers of the right major, with real servers of different majors.

Tools are chosen as README "Supported PostgreSQL versions" says: ``BACKUPD_PG_BIN`` first, then
``/usr/lib/postgresql/<major>/bin`` (the server's major, else the newest newer one), then
``PATH``. Newer client tools than the server work; older ones are refused before anything is
written, naming the major needed. A server that runs a data directory (a drill's scratch server,
``recover --start``) must be of the backup's major exactly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE
from tests.e2e import helpers
from tests.e2e.physical import physical_setup
from tests.support.cli import Cli
from tests.support.pg import PgCluster, pg_bin_dir, running_cluster

pytestmark = pytest.mark.pg

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="module")
def pg18() -> Iterator[PgCluster]:
    with running_cluster(prefix="backupd-pg18-", bin_dir=pg_bin_dir(18)) as cluster:
        yield cluster


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="backupd-tools-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_cli(pg: PgCluster, db: str, base: Path, pg_bin: Path | None) -> Cli:
    env = {
        "BACKUPD_DATABASE_URL": pg.url(db),
        "BACKUPD_REPOSITORY": f"file://{base / 'repo'}",
        "BACKUPD_STATE_DIR": str(base / "state"),
        "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
        "BACKUPD_CHUNKING__AVG_SIZE": str(64 * 1024),
    }
    if pg_bin is not None:
        env["BACKUPD_PG_BIN"] = str(pg_bin)
    return Cli(env=env)


def databases(pg: PgCluster) -> set[str]:
    return {r[0] for r in pg.execute("select datname from pg_database")}


def test_newer_tools_dump_an_older_server_whose_backup_then_restores_into_17_and_newer(
    pg: PgCluster, pg_db: str, pg18: PgCluster, base: Path
) -> None:
    """pg_dump 18 dumps a 15 server; only pg_restore 18+ reads that archive, and those set
    transaction_timeout, which 15 does not have: the backup restores into 18 (an upgrade), and
    a restore into 15, or with older tools, is refused before the database is created."""
    assert pg.version == 15
    helpers.seed(pg, pg_db, size_mb=1)
    cli = make_cli(pg, pg_db, base, pg_bin_dir(18))
    cli.run("init", check=True)
    made = cli.run("backup", "--kind", "full", "--json")
    assert made.returncode == 0, str(made)
    assert "dump_restores_into_newer_servers_only" in made.stderr
    backup = made.json()
    details = cli.ok_json("show", backup["id"])["manifest"]["details"]
    assert details["pg_version"].startswith("15.") and details["pg_dump_major"] == 18
    target = "restored_" + pg_db

    # pg_restore 16 cannot read pg_dump 18's archive
    old = cli.run(
        "restore", backup["id"], "--to-database", pg.url(target), "--create",
        env={"BACKUPD_PG_BIN": str(pg_bin_dir(16))},
    )  # fmt: skip
    assert old.returncode == 1, str(old)
    assert "the backup was made by pg_dump 18" in old.stderr and "pg_restore 18 or newer" in old.stderr
    assert "install the PostgreSQL 18 client tools" in old.stderr
    assert target not in databases(pg)

    # pg_restore 18 into 15: refused, naming the majors it restores into
    into15 = cli.run("restore", backup["id"], "--to-database", pg.url(target), "--create")
    assert into15.returncode == 1, str(into15)
    assert "restores into PostgreSQL 17 or newer only" in into15.stderr
    assert target not in databases(pg)

    cli.run("restore", backup["id"], "--to-database", pg18.url(target), "--create", check=True)
    assert helpers.checksums(pg18, target) == helpers.checksums(pg, pg_db)
    pg18.drop_database(target)


def test_newer_client_tools_than_a_15_target_are_refused(pg: PgCluster, pg_db: str, base: Path) -> None:
    """A backup of 15 made with 15's tools, restored into 15 with BACKUPD_PG_BIN of 18."""
    pg.execute("create table t (id int primary key); insert into t select generate_series(1, 100)", pg_db)
    cli = make_cli(pg, pg_db, base, None)
    cli.run("init", check=True)
    backup = cli.ok_json("backup", "--kind", "full")
    target = "restored_" + pg_db
    refused = cli.run(
        "restore", backup["id"], "--to-database", pg.url(target), "--create",
        env={"BACKUPD_PG_BIN": str(pg_bin_dir(18))},
    )  # fmt: skip
    assert refused.returncode == 1, str(refused)
    assert "is version 18, which sets transaction_timeout" in refused.stderr
    assert "set BACKUPD_PG_BIN to the PostgreSQL 15 client tools" in refused.stderr
    assert target not in databases(pg)


def test_upgrade_a_logical_backup_of_15_restores_into_a_newer_major(
    pg: PgCluster, pg_db: str, pg_major: int, pg_of_major: PgCluster, base: Path
) -> None:
    """The upgrade path: a backup of 15 (made with 15's tools) restored with ``--create`` into
    a 16 or 18 cluster with that major's tools; every table the same. With 15's tools the
    restore is refused before the database is created."""
    helpers.seed(pg, pg_db, size_mb=2)
    helpers.change(pg, pg_db, fraction=0.05)
    cli = make_cli(pg, pg_db, base, None)
    cli.run("init", check=True)
    backup = cli.ok_json("backup", "--kind", "full")
    assert cli.ok_json("show", backup["id"])["manifest"]["details"]["pg_dump_major"] == 15
    target = f"upgraded_{pg_db}"
    newer = pg_of_major

    refused = cli.run("restore", backup["id"], "--to-database", newer.url(target), "--create")
    assert refused.returncode == 1, str(refused)
    assert f"older than the server ({pg_major})" in refused.stderr
    assert target not in databases(newer)

    out = cli.run(
        "restore", backup["id"], "--to-database", newer.url(target), "--create", "--json",
        env={"BACKUPD_PG_BIN": str(pg_bin_dir(pg_major))},
    )  # fmt: skip
    assert out.returncode == 0, str(out)
    source, upgraded = helpers.checksums(pg, pg_db), helpers.checksums(newer, target)
    assert sorted(upgraded) == sorted(source)
    for table, sums in source.items():
        assert upgraded[table] == sums, table
    version = newer.execute("show server_version_num")[0][0]
    assert int(version) // 10000 == pg_major
    newer.drop_database(target)


def test_older_tools_than_the_server_are_refused_before_anything_is_written(
    pg18: PgCluster, base: Path
) -> None:
    db = pg18.create_database()
    pg18.execute("create table t (id int primary key); insert into t select generate_series(1, 100)", db)
    cli = make_cli(pg18, db, base, DEBIAN_15)
    cli.run("init", check=True)
    refused = cli.run("backup", "--kind", "full")
    assert refused.returncode == 1, str(refused)
    assert (
        f"pg_dump in BACKUPD_PG_BIN={DEBIAN_15} is version 15, older than the server (18)" in refused.stderr
    )
    assert "install the PostgreSQL 18 client tools" in refused.stderr
    # the conventional locations hold only 15 here: the same refusal, naming 18
    conventional = make_cli(pg18, db, base, None).run("backup", "--kind", "full")
    assert conventional.returncode == 1 and "(18)" in conventional.stderr, str(conventional)
    assert helpers.chunk_files(base / "repo") == []
    assert [b for b in cli.ok_json("list") if b["status"] == "succeeded"] == []

    # a backup made with 18's tools; restoring it with 15's is refused, no database created
    good = make_cli(pg18, db, base, pg_bin_dir(18)).ok_json("backup", "--kind", "full")
    target = "restored_" + db
    old = cli.run("restore", good["id"], "--to-database", pg18.url(target), "--create")
    assert old.returncode == 1, str(old)
    assert "18" in old.stderr and "pg_restore" in old.stderr
    assert target not in databases(pg18)
    pg18.drop_database(db)


def test_physical_backup_needs_a_server_of_its_own_major() -> None:
    """A 15 cluster backed up with 18's pg_basebackup; its drill runs a 15 scratch server (found
    in the conventional place, not in BACKUPD_PG_BIN's 18); ``recover --start`` with an 18 server
    named for it is refused before the data directory is written."""
    with physical_setup() as setup:
        assert setup.cluster.version == 15
        tools18 = {"BACKUPD_PG_BIN": str(pg_bin_dir(18))}
        setup.cluster.execute(
            "create table t (id int primary key); insert into t select generate_series(1, 500)"
        )
        backup = setup.cli.run("backup", "--kind", "full", "--json", env=tools18)
        assert backup.returncode == 0, str(backup)

        drill = setup.cli.run("restore-test", "--json", env=tools18)
        assert drill.returncode == 0, str(drill)
        by_name = {c["name"]: c["status"] for c in drill.json()["checks"]}
        assert by_name["recovery"] == by_name["row_counts"] == by_name["pg_verifybackup"] == "passed"

        pgdata = setup.base / "recovered"
        wrong = setup.cli.run(
            "recover", "--pgdata", str(pgdata), "--start",
            env={**tools18, "BACKUPD_DRILL__PG_BIN": str(pg_bin_dir(18))},
        )  # fmt: skip
        assert wrong.returncode == 1, str(wrong)
        assert "holds PostgreSQL 18; the backup needs 15" in wrong.stderr
        assert not pgdata.exists()

        wrong_drill = setup.cli.run(
            "restore-test", "--json", env={"BACKUPD_DRILL__PG_BIN": str(pg_bin_dir(16))}
        )
        assert wrong_drill.returncode == 1
        assert "holds PostgreSQL 16; the backup needs 15" in wrong_drill.stdout + wrong_drill.stderr


def test_find_tool_checks_the_major_of_what_it_finds() -> None:
    """The choice itself, with the real programs of 15, 16 and 18 (no server needed)."""
    from contentflow_backupd.errors import SourceError
    from contentflow_backupd.source.scratch import server_bin_dir
    from contentflow_backupd.source.tools import find_tool

    bin16, bin18 = pg_bin_dir(16), pg_bin_dir(18)
    assert find_tool("pg_dump", 15, bin18) == bin18 / "pg_dump"  # newer than the server: fine
    assert find_tool("pg_dump", 15) == DEBIAN_15 / "pg_dump"  # the server's own major first
    with pytest.raises(
        SourceError, match=r"pg_dump in BACKUPD_PG_BIN=.* is version 16, older than the server \(18\)"
    ):
        find_tool("pg_dump", 18, bin16)
    with pytest.raises(SourceError, match=r"version 18; this needs PostgreSQL 16 exactly"):
        find_tool("pg_ctl", 16, bin18, exact=True)
    with pytest.raises(SourceError, match=r"18"):
        find_tool("pg_dump", 18)  # only 15 in the conventional places here
    # server binaries: BACKUPD_PG_BIN when it holds the major, else the conventional places
    assert server_bin_dir(16, None, bin16) == bin16
    assert server_bin_dir(15, None, bin18) == DEBIAN_15
    with pytest.raises(SourceError, match=r"PostgreSQL 16 server .* not found .*holds PostgreSQL 18"):
        server_bin_dir(16, None, bin18)
    with pytest.raises(
        SourceError, match=r"BACKUPD_DRILL__PG_BIN=.* holds PostgreSQL 18; the backup needs 16"
    ):
        server_bin_dir(16, bin18, bin16)
