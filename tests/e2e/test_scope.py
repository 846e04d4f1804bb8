"""Scope: several clusters (``BACKUPD_CLUSTER``) or repositories on one state directory share one
catalog, and ``runs``, ``list``, ``status``, /healthz and the metrics each report only their own
repository and cluster; an invalid ``BACKUPD_REPOSITORY`` stops every command with exit 2."""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.catalog.sql import open_catalog
from contentflow_backupd.model import parse_iso
from tests.e2e.helpers import repository_scope, seed
from tests.e2e.physical import physical_setup
from tests.support.cli import Cli
from tests.support.daemon import Daemon, daemon_env
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

HEALTH = {"BACKUPD_HEALTH__FULL_MAX_AGE": "1d", "BACKUPD_HEALTH__INCREMENTAL_MAX_AGE": "1d"}
"""Objectives that hold with one fresh full backup (the default schedules would also ask WAL)."""


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == name)


def full_backup_check(report: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"].startswith("full"))


def test_two_clusters_on_one_state_directory_report_only_their_own(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    seed(pg, pg_db, size_mb=1)
    cli.env.update(HEALTH)
    cli.run("init", check=True)
    other = Cli(env={**cli.env, "BACKUPD_CLUSTER": "other"})
    done = other.ok_json("backup", "--kind", "full")
    # A failed attempt of `other` too: not `main`'s either.
    broken = {"BACKUPD_DATABASE_URL": pg.url("no_such_database")}
    assert other.run("backup", "--kind", "full", env=broken).returncode != 0

    # `main` has no backup and no run: it must say so, not cite `other`'s.
    assert cli.ok_json("list") == []
    assert cli.ok_json("list", "--all") == []
    assert cli.ok_json("runs") == []
    status = cli.run("status", "--json")
    assert status.returncode == 1, str(status)
    full = full_backup_check(status.json())
    assert not full["ok"] and full["at"] is None, full

    # `other` sees its own.
    assert [b["id"] for b in other.ok_json("list")] == [done["id"]]
    listed = other.ok_json("list", "--all")
    assert [b["status"] for b in listed] == ["succeeded", "failed"]
    assert [r["status"] for r in other.ok_json("runs")] == ["succeeded", "failed"]
    status = other.run("status", "--json")
    assert full_backup_check(status.json())["ok"], str(status)

    # The daemon of `main` on the same state directory: /healthz, /metrics alike.
    # (A yearly incremental schedule: an objective to judge, and no job that runs meanwhile.)
    env = daemon_env(tmp_path, pg, pg_db, **HEALTH, BACKUPD_SCHEDULE__INCREMENTAL="0 2 1 1 *")
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        code, body = d.get("/healthz")
        assert code == 503, body
        assert d.metric("backupd_backup_last_success_timestamp_seconds", kind="full") == 0
        assert d.metric("backupd_backup_last_stored_bytes", kind="full") == 0
        assert d.metric("backupd_backup_last_failure_timestamp_seconds", kind="full") == 0
    with Daemon({**env, "BACKUPD_CLUSTER": "other"}) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        d.wait_for("healthz 200", lambda: d.get("/healthz")[0] == 200, timeout=30)
        assert (d.metric("backupd_backup_last_success_timestamp_seconds", kind="full") or 0) > 0


def test_two_repositories_on_one_state_directory_report_only_their_own(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    seed(pg, pg_db, size_mb=1)
    cli.env.update(HEALTH)
    second = Cli(env={**cli.env, "BACKUPD_REPOSITORY": f"file://{tmp_path / 'second'}"})
    cli.run("init", check=True)
    second.run("init", check=True)
    first_backup = cli.ok_json("backup", "--kind", "full")

    # Nothing of the first repository is the second's: no warning-and-exit-0, no rows.
    listed = second.run("list", "--json", check=True)
    assert listed.json() == [], str(listed)
    assert second.ok_json("list", "--all") == []
    assert second.ok_json("runs") == []
    status = second.run("status", "--json")
    assert status.returncode == 1 and full_backup_check(status.json())["at"] is None, str(status)
    assert second.run("show", first_backup["id"]).returncode != 0

    second_backup = second.ok_json("backup", "--kind", "full")
    assert [b["id"] for b in cli.ok_json("list")] == [first_backup["id"]]
    assert [b["id"] for b in second.ok_json("list")] == [second_backup["id"]]
    assert [r["backup_id"] for r in cli.ok_json("runs")] == [first_backup["id"]]
    assert [r["backup_id"] for r in second.ok_json("runs")] == [second_backup["id"]]
    assert repository_scope(cli.env) != repository_scope(second.env)

    # The daemon of the first repository on the same state directory cites its own backup, not
    # the newer one of the second repository.
    env = daemon_env(tmp_path, pg, pg_db, **HEALTH)
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        last = d.metric("backupd_backup_last_success_timestamp_seconds", kind="full")
        assert last == parse_iso(first_backup["finished_at"]).timestamp(), (last, first_backup, second_backup)


# -- an invalid BACKUPD_REPOSITORY ------------------------------------------------------------
BAD_URLS = ["s3:/bucket", "file://relative", "ftp://x/y", "file:relative/path"]
COMMANDS = [
    ["list"],
    ["list", "--all"],
    ["status"],
    ["runs"],
    ["show", "20261124T054459Z-full-3a9c1b"],
    ["verify"],
    ["backup", "--kind", "full"],
    ["list-restore-points"],
    ["expire"],
    ["catalog", "rebuild"],
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_an_invalid_repository_url_stops_every_command_with_exit_2(url: str, tmp_path: Path) -> None:
    cli = Cli(
        env={
            "BACKUPD_REPOSITORY": url,
            "BACKUPD_STATE_DIR": str(tmp_path / "state"),
            "BACKUPD_ENCRYPTION__PASSPHRASE": "not used",
        }
    )
    for command in COMMANDS:
        result = cli.run(*command)
        assert result.returncode == 2, str(result)
        assert "BACKUPD_REPOSITORY" in result.stderr and url in result.stderr, str(result)
        assert "use file:///absolute/path (three slashes) or s3://bucket/prefix" in result.stderr
    # Nothing was created on the way (no catalog, no state).
    assert not (tmp_path / "state" / "catalog.sqlite").exists()


# -- upgrade of a catalog at revision 0007 -----------------------------------------------------
def test_a_catalog_at_0007_with_rows_is_upgraded_and_reports_only_this_repositorys(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    """A catalog written before revision 0008 (no repository ids), shared with another
    repository: a read-only command refuses it unchanged, naming `catalog upgrade`; that
    upgrades it, and the listings show the backups whose manifests this repository holds, and
    the runs that name them, and nothing else."""
    from tests.catalog.test_scope import FOREIGN, catalog_at_0007

    seed(pg, pg_db, size_mb=1)
    cli.run("init", check=True)
    ours = cli.ok_json("backup", "--kind", "full")
    old = tmp_path / "old" / "catalog.sqlite"
    catalog_at_0007(f"sqlite:///{old}", [ours["id"], FOREIGN])
    cli.env["BACKUPD_CATALOG_URL"] = f"sqlite:///{old}"

    before = old.read_bytes()
    for read in (["list"], ["backup", "list"], ["runs"], ["runs", "list"], ["restore-point", "list"]):
        refused = cli.run(*read)
        assert refused.returncode == 1, str(refused)
        assert "revision 0007" in refused.stderr and "catalog upgrade" in refused.stderr, str(refused)
    assert old.read_bytes() == before
    upgraded = cli.ok_json("catalog", "upgrade")
    assert upgraded["repository_id"] == repository_scope(cli.env).repository_id

    assert [b["id"] for b in cli.ok_json("list")] == [ours["id"]]
    assert [b["id"] for b in cli.ok_json("list", "--all")] == [ours["id"]]
    assert [r["backup_id"] for r in cli.ok_json("runs")] == [ours["id"]]
    with open_catalog(f"sqlite:///{old}") as catalog:
        assert catalog.get_meta("rows_attributed:" + repository_scope(cli.env).repository_id + ":main") == "1"


# -- true listings ---------------------------------------------------------------------------
def _stored_under(repo: Path, generation: str) -> int:
    return sum(p.stat().st_size for p in (repo / "main" / "chunks" / generation).rglob("*") if p.is_file())


def test_list_all_shows_every_attempt_with_the_bytes_it_stored(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    seed(pg, pg_db, size_mb=24)
    cli.env["BACKUPD_UPLOAD_CONCURRENCY"] = "1"
    cli.run("init", check=True)
    repo = tmp_path / "repo"

    # 1. A backup that fails before connecting (no such database).
    failed = cli.run("backup", "--kind", "full", env={"BACKUPD_DATABASE_URL": pg.url("no_such_database")})
    assert failed.returncode != 0, str(failed)

    # 2. A backup interrupted after it stored chunks: frozen once chunks are there, then SIGTERM.
    proc = cli.popen("backup", "--kind", "full")
    chunks = repo / "main" / "chunks"
    try:
        deadline = time.monotonic() + 300
        while not (chunks.is_dir() and any(p.is_file() for p in chunks.rglob("*"))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no chunk was stored"
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    manifests = repo / "main" / "backups"
    assert not manifests.is_dir() or not list(manifests.glob("*.json"))

    attempts = cli.ok_json("list", "--all")
    assert cli.ok_json("list") == []
    assert [a["status"] for a in attempts] == ["failed", "interrupted"], attempts
    before_connect, interrupted = attempts
    assert "no_such_database" in before_connect["error"] and before_connect["stored_bytes"] == 0
    assert "collectable_after" not in before_connect
    # The bytes it really stored: every chunk object of its generation.
    stored = _stored_under(repo, interrupted["generation"])
    assert stored > 0 and interrupted["stored_bytes"] == stored, (interrupted, stored)
    finished = parse_iso(interrupted["finished_at"])
    assert finished is not None
    assert parse_iso(interrupted["collectable_after"]) == finished + timedelta(hours=24)
    text_out = cli.run("list", "--all", check=True).stdout
    assert before_connect["id"] in text_out and interrupted["id"] in text_out
    assert "once older than gc_grace (24h)" in text_out
    # The runs name them.
    runs = cli.ok_json("runs")
    assert [(r["status"], r["backup_id"]) for r in runs] == [
        ("failed", before_connect["id"]),
        ("interrupted", interrupted["id"]),
    ]


# -- true counters ---------------------------------------------------------------------------
def _segments_in(repo: Path) -> int:
    wal = repo / "main" / "wal"
    return sum(1 for p in wal.rglob("*") if p.is_file() and len(p.name) == 24) if wal.is_dir() else 0


def test_the_wal_counter_counts_segments_pushed_by_archive_command_in_other_processes() -> None:
    """PostgreSQL's archive_command runs ``wal-push``, a process of its own, for each segment:
    the daemon's ``backupd_wal_archived_segments_total`` counts every segment that reached the
    repository, also those pushed before the daemon started."""
    with physical_setup() as setup:

        def switch() -> None:
            setup.cluster.execute("create table if not exists w(x int); insert into w values (1)")
            setup.cluster.execute("select pg_switch_wal()")

        def archived(n: int) -> bool:
            return _segments_in(setup.repo) >= n

        for _ in range(3):  # before the daemon runs
            switch()
        deadline = time.monotonic() + 120
        while not archived(3):
            assert time.monotonic() < deadline, "archive_command did not archive 3 segments"
            time.sleep(0.2)
        # No WAL job: nothing of the daemon's own archives or switches WAL.
        env = {
            "BACKUPD_CONFIG": str(setup.config),
            "BACKUPD_WAL__METHOD": "archive_command",
            "BACKUPD_SCHEDULE__FULL": "off",
            "BACKUPD_SCHEDULE__INCREMENTAL": "off",
            "BACKUPD_SCHEDULE__WAL": "off",
            "BACKUPD_SCHEDULE__RETENTION": "off",
            "BACKUPD_SCHEDULE__VERIFY": "off",
            "BACKUPD_SCHEDULE__RESTORE_TEST": "off",
            "BACKUPD_SHUTDOWN_GRACE": "10s",
        }
        with Daemon(env) as d:
            d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
            stored = _segments_in(setup.repo)
            d.wait_for(
                "the counter at the repository's count, pushes before the start included",
                lambda: d.metric("backupd_wal_archived_segments_total") == _segments_in(setup.repo),
                timeout=90,
            )
            for _ in range(4):  # while it runs, each pushed by a wal-push process of PostgreSQL
                switch()
            d.wait_for("4 more segments archived", lambda: archived(stored + 4), timeout=120)
            d.wait_for(
                "the counter at the repository's count again",
                lambda: d.metric("backupd_wal_archived_segments_total") == _segments_in(setup.repo),
                timeout=90,
            )
            assert (d.metric("backupd_wal_archived_segments_total") or 0) >= stored + 4 >= 7
            assert not d.events("wal_stream_supervised")  # nothing of it went through the daemon
