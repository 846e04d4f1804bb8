"""Two named clusters (``[clusters.a]``, ``[clusters.b]``) in one configuration, on two real
PostgreSQL clusters sharing one local repository, through the installed command: each backed up
with ``--cluster`` (before or after the command), both listed by ``--all-clusters``, one
restored; ``wal push --cluster b`` as cluster b's ``archive_command``; and with several
clusters and no choice, a single-cluster command exits 2 naming the choices (``run`` serves
them all: tests/e2e/test_fleet_clusters.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import checksums, seed
from tests.e2e.physical import PASSPHRASE, _check_postgres_can_run_the_tool, _chown
from tests.e2e.pitr_helpers import Restored, switch_and_wait_archived
from tests.support.cli import Cli, command_path
from tests.support.daemon import Daemon
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg


@pytest.fixture
def fleet(pg: PgCluster, pg_db: str) -> Iterator[tuple[Cli, PgCluster, Path]]:
    """Cluster ``a``: logical, a database of the session's PostgreSQL. Cluster ``b``: physical,
    a PostgreSQL of its own whose archive_command is ``wal push --cluster b``. One repository,
    one state directory, one catalog; commands run as ``postgres``, as its archive_command does."""
    _check_postgres_can_run_the_tool()
    base = Path(tempfile.mkdtemp(prefix="backupd-fleet-"))
    os.chmod(base, 0o755)
    _chown(base)
    passfile = base / "passphrase"
    passfile.write_text(PASSPHRASE + "\n")
    passfile.chmod(0o600)
    _chown(passfile)
    b = PgCluster(base / "cluster-b")
    config = base / "backupd.toml"
    config.write_text(
        f'repository = "file://{base / "repo"}"\n'
        f'state_dir = "{base / "state"}"\n'
        "[chunking]\navg_size = 65536\n"
        f'[encryption]\npassphrase_file = "{passfile}"\n'
        "[clusters.a]\n"
        f'database_url = "{pg.url(pg_db)}"\n'
        "[clusters.b]\n"
        f'database_url = "{b.url("postgres")}"\n'
        'mode = "physical"\n'
        "[clusters.b.wal]\narchive_timeout = 30\n"
    )
    config.chmod(0o600)
    _chown(config)
    b.extra_conf = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"'{command_path()} --config {config} wal push --cluster b %p'",
        "max_wal_senders": "10",
    }
    cli = Cli(env={"BACKUPD_CONFIG": str(config)}, user="postgres")
    try:
        cli.run("init", "--cluster", "a", check=True)  # one repository: init once
        b.init().start()
        yield cli, b, base
    finally:
        b.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_two_named_clusters_share_one_repository(
    fleet: tuple[Cli, PgCluster, Path], pg: PgCluster, pg_db: str
) -> None:
    cli, b, base = fleet
    seed(pg, pg_db, size_mb=1)
    before = checksums(pg, pg_db)

    # Several clusters, none chosen: a single-cluster command exits 2, naming them.
    for argv in (["backup", "list"], ["backup", "create", "--kind", "full"], ["status"]):
        res = cli.run(*argv)
        assert res.returncode == 2, str(res)
        assert "2 are configured (a, b): choose one" in res.stderr and "--cluster NAME" in res.stderr
    res = cli.run("backup", "list", "--cluster", "c")
    assert res.returncode == 2 and "no such cluster (configured: a, b)" in res.stderr, str(res)

    a_full = cli.ok_json("--cluster", "a", "backup", "create", "--kind", "full")  # before the command
    switch_and_wait_archived(b)  # PostgreSQL runs `wal push --cluster b` for its segments
    segment = b.execute("select last_archived_wal from pg_stat_archiver")[0][0]
    b_full = cli.ok_json("backup", "create", "--kind", "full", "--cluster", "b")  # after it
    assert (a_full["mode"], b_full["mode"]) == ("logical", "physical")

    # Each cluster lists its own; --all-clusters lists both, with the cluster named.
    assert [x["id"] for x in cli.ok_json("backup", "list", "--cluster", "a")] == [a_full["id"]]
    assert [x["id"] for x in cli.ok_json("backup", "list", "--cluster", "b")] == [b_full["id"]]
    both = cli.ok_json("backup", "list", "--all-clusters")
    assert sorted((x["cluster"], x["id"]) for x in both) == [("a", a_full["id"]), ("b", b_full["id"])]
    table = cli.run("backup", "list", "--all-clusters", check=True).stdout
    assert table.splitlines()[0].split()[:2] == ["CLUSTER", "ID"]
    assert any(line.split()[:2] == ["b", b_full["id"]] for line in table.splitlines())
    runs = cli.ok_json("runs", "list", "--all-clusters")
    assert {(r["cluster"], r["job"], r["status"]) for r in runs} >= {
        ("a", "full", "succeeded"),
        ("b", "full", "succeeded"),
    }
    # The repository keeps each cluster under its name, as with BACKUPD_CLUSTER today.
    assert (base / "repo" / "a" / "backups").is_dir() and (base / "repo" / "b" / "wal").is_dir()
    wal = cli.ok_json("wal", "verify", "--cluster", "b")
    assert wal["status"] == "ok" and wal["timelines"], wal  # b's archive, pushed by --cluster b
    # restore_command's side: `wal fetch --cluster b` (prefetch off by b's own variable).
    dest = base / "fetched"
    no_prefetch = {"BACKUPD_CLUSTERS__B__WAL__PREFETCH": "0"}
    cli.run("wal", "fetch", "--cluster", "b", segment, str(dest), env=no_prefetch, check=True)
    assert dest.stat().st_size == 16 * 1024 * 1024  # a whole segment (pg_wal may have recycled it)
    missing = cli.run("--cluster", "a", "wal", "fetch", segment, str(base / "nope"), env=no_prefetch)
    assert missing.returncode == 1, str(missing)  # cluster a has no such segment

    # Restore cluster a's backup into a new database: the same data.
    target = "restored_fleet_" + pg_db
    restored = cli.ok_json("restore", "latest", "--cluster", "a", "--to-database", pg.url(target), "--create")
    assert restored["backup_id"] == a_full["id"]
    try:
        assert checksums(pg, target) == before
    finally:
        pg.drop_database(target)

    # Restore cluster b (physical) to its latest point: its restore_command (`wal fetch`) gets a
    # configuration of b alone, as the file names two clusters.
    b.execute("create table after_backup(x int); insert into after_backup values (42)")
    switch_and_wait_archived(b)
    pgdata = base / "restored-b"
    res = cli.ok_json("restore", "latest", "--cluster", "b", "--pgdata", str(pgdata))
    assert res["backup_id"] == b_full["id"]
    server = Restored(pgdata, b).start()
    try:
        server.wait_promoted()
        assert server.execute("select x from after_backup") == [(42,)]
    finally:
        server.stop()

    # config show --cluster: the cluster's own keys and what it inherits.
    rows = {r["name"]: r for r in cli.ok_json("config", "show", "--cluster", "b")}
    assert rows["BACKUPD_CLUSTERS__B__MODE"]["value"] == "physical"
    assert rows["BACKUPD_CLUSTERS__B__ENCRYPTION__PASSPHRASE_FILE"]["source"] == "inherited"
    assert not any(name.startswith("BACKUPD_CLUSTERS__A__") for name in rows)


SCHEDULES_OFF = {
    f"BACKUPD_SCHEDULE__{job}": "off"
    for job in ("FULL", "INCREMENTAL", "WAL", "RETENTION", "VERIFY", "RESTORE_TEST")
}


def test_the_daemon_runs_the_chosen_cluster_and_takes_its_wal_over_the_socket(
    fleet: tuple[Cli, PgCluster, Path],
) -> None:
    cli, b, _base = fleet
    env = {
        **cli.full_env(),
        **SCHEDULES_OFF,
        "BACKUPD_CLUSTER": "b",  # the daemon's cluster; archive_command names it with --cluster
        "BACKUPD_CLUSTERS__B__WAL__METHOD": "archive_command",
        "BACKUPD_SHUTDOWN_GRACE": "5s",
        "BACKUPD_HTTP__LISTEN": "off",
    }
    daemon = Daemon(env, user="postgres").start()
    try:
        started = daemon.wait_for(
            "the WAL socket", lambda: daemon.events("wal_socket_listening"), timeout=120
        )
        assert started
        b.execute("create table w(x int); insert into w values (1)")
        name = str(b.execute("select pg_walfile_name(pg_switch_wal())")[0][0])
        pushed = daemon.wait_for(
            "the pushed segment",
            lambda: [e.get("via") for e in daemon.events("wal_pushed") if e.get("wal") == name],
            timeout=120,
        )
        # `wal push --cluster b` resolved cluster b's identity, which is this daemon's
        assert pushed == ["socket"]
        status = cli.run("status", "--all-clusters", "--json")
        assert status.returncode in (0, 1), str(status)  # 1: no backup yet, which is unhealthy
        assert [c["cluster"] for c in status.json()["clusters"]] == ["a", "b"]
    finally:
        daemon.close()
