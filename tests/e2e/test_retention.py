"""Retention end to end: ``expire`` through the installed command, on a local repository, on S3
(moto's server over HTTP), and on a physical setup with archived WAL.

Retention periods are seconds here (``BACKUPD_RETENTION__FULL=2s``), so the tests sleep a few
seconds to make backups "old"; no assertion is about time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.catalog.sql import open_catalog
from contentflow_backupd.wal import classify
from tests.e2e.helpers import change, checksums, repo_files, repository_scope, seed
from tests.e2e.physical import physical_setup
from tests.e2e.pitr_helpers import Restored, create_table, rows, switch_and_wait_archived
from tests.support.cli import Cli
from tests.support.moto_server import s3_client
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

SHORT = {
    "BACKUPD_RETENTION__FULL": "2s",
    "BACKUPD_RETENTION__INCREMENTAL": "2s",
    "BACKUPD_RETENTION__WAL": "2s",
    "BACKUPD_RETENTION__GC_GRACE": "1s",
}
AGE = 2.5  # seconds of sleep that make everything written before older than SHORT's periods


def run_json(cli: Cli, *args: str, env: dict[str, str] | None = None) -> Any:
    result = cli.run(*args, "--json", env=env)
    assert result.returncode == 0, str(result)
    return result.json()


def by_id(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {b["id"]: (b["action"], b["reason"]) for b in report["backups"]}


def test_expire_plans_first_then_deletes_old_backups_and_keeps_the_newest_full(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    seed(pg, pg_db, size_mb=2)
    cli.run("init", check=True)
    cli.env.update(SHORT)
    full1 = cli.ok_json("backup", "--kind", "full")
    change(pg, pg_db)
    incr1 = cli.ok_json("backup", "--kind", "incremental")
    time.sleep(AGE)
    change(pg, pg_db)
    full2 = cli.ok_json("backup", "--kind", "full")
    want = checksums(pg, pg_db)
    old_chunks = repo / "main" / "chunks" / full1["id"]
    assert old_chunks.is_dir()

    # Without --confirm: the plan, and nothing deleted.
    before = repo_files(repo)
    dry = cli.run("expire", "--json")
    assert dry.returncode == 0, dry
    plan = dry.json()
    assert "nothing was deleted" in dry.stderr
    assert plan["applied"] is False and plan["deleted_bytes"] == 0
    assert repo_files(repo) == before
    decided = by_id(plan)
    assert decided[full1["id"]][0] == "delete" and "retention.full" in decided[full1["id"]][1]
    assert decided[incr1["id"]][0] == "delete" and "retention.incremental" in decided[incr1["id"]][1]
    assert decided[full2["id"]][0] == "keep" and "newest logical full" in decided[full2["id"]][1]
    assert {g["generation"]: g["action"] for g in plan["generations"]} == {
        full1["id"]: "delete",
        full2["id"]: "keep",
    }
    human = cli.run("expire")
    assert human.returncode == 0 and full1["id"] in human.stdout and "delete" in human.stdout

    # With --confirm, but a long grace: the backups go, their chunks stay for now.
    res = cli.run("expire", "--confirm", "--json", env={"BACKUPD_RETENTION__GC_GRACE": "1h"})
    assert res.returncode == 0, res
    applied = res.json()
    assert applied["applied"] is True and applied["deleted_bytes"] > 0
    assert [b["id"] for b in cli.ok_json("list")] == [full2["id"]]
    assert not (repo / "main" / "backups" / f"{full1['id']}.json").exists()
    assert not (repo / "main" / "backups" / f"{incr1['id']}.json").exists()
    assert old_chunks.is_dir() and any(old_chunks.rglob("*"))
    grace = {g["generation"]: g for g in applied["generations"]}[full1["id"]]
    assert grace["action"] == "keep" and "gc_grace" in grace["reason"]

    # After the grace: the chunks of the dropped generation go too, the kept ones stay.
    collected = cli.run("expire", "--confirm", "--json")
    assert collected.returncode == 0, collected
    assert collected.json()["result"]["deleted_generations"] == 1
    assert not any(p.is_file() for p in old_chunks.rglob("*"))
    assert any((repo / "main" / "chunks" / full2["id"]).rglob("*"))
    assert (repo / "main" / "backups" / f"{full2['id']}.json").exists()

    # The kept backup is whole and restores.
    cli.run("verify", "--all", check=True)
    target = "kept_" + pg_db
    cli.run("restore", full2["id"], "--to-database", pg.url(target), "--create", check=True)
    assert checksums(pg, target) == want
    pg.drop_database(target)

    # Every deletion is in the catalog, with the run that made it.
    with open_catalog(f"sqlite:///{tmp_path / 'state' / 'catalog.sqlite'}") as catalog:
        deletions = catalog.list_deletions(repository_scope(cli.env))
        runs = [r for r in catalog.list_runs(repository_scope(cli.env)) if r.job == "retention"]
    assert [(d.what, d.name) for d in deletions] == [
        ("backup", full1["id"]),
        ("backup", incr1["id"]),
        ("generation", full1["id"]),
    ]
    assert [(r.trigger, r.status) for r in runs] == [("manual", "succeeded")] * 2
    assert [d.run_id for d in deletions] == [runs[0].id, runs[0].id, runs[1].id]


def test_min_full_keeps_older_fulls_whatever_their_age(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    seed(pg, pg_db, size_mb=1)
    cli.run("init", check=True)
    cli.env.update(SHORT)
    fulls = []
    for _ in range(3):
        fulls.append(cli.ok_json("backup", "--kind", "full")["id"])
        time.sleep(1.1)  # ids name the start second: three different seconds
    time.sleep(AGE)
    res = run_json(cli, "expire", "--confirm", env={"BACKUPD_RETENTION__MIN_FULL": "2"})
    assert [by_id(res)[f][0] for f in fulls] == ["delete", "keep", "keep"]
    assert [b["id"] for b in cli.ok_json("list")] == fulls[1:]


@pytest.mark.s3
def test_expire_on_s3(s3_cli: tuple[Cli, str], pg: PgCluster, pg_db: str, moto_s3: str) -> None:
    cli, bucket = s3_cli
    seed(pg, pg_db, size_mb=2)
    cli.run("init", check=True)
    cli.env.update(SHORT)
    full1 = cli.ok_json("backup", "--kind", "full")
    time.sleep(AGE)
    change(pg, pg_db)
    full2 = cli.ok_json("backup", "--kind", "full")
    want = checksums(pg, pg_db)
    client = s3_client(moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys() -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="backups/prod/main/")
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    old = f"backups/prod/main/chunks/{full1['id']}/"
    assert any(k.startswith(old) for k in keys())
    before = keys()
    assert cli.ok_json("expire")["applied"] is False and keys() == before
    out = cli.ok_json("expire", "--confirm")
    assert out["applied"] is True and out["result"]["deleted_backups"] == {"full": 1, "incremental": 0}
    after = keys()
    assert f"backups/prod/main/backups/{full1['id']}.json" not in after
    assert not any(k.startswith(old) for k in after)
    assert f"backups/prod/main/backups/{full2['id']}.json" in after
    assert out["stored_bytes"] == sum(
        o["Size"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="backups/prod/main/"
        )
        for o in page.get("Contents", [])
    )
    target = "s3_kept_" + pg_db
    cli.run("restore", "latest", "--to-database", pg.url(target), "--create", check=True)
    assert checksums(pg, target) == want
    pg.drop_database(target)


def _segments(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "main" / "wal").rglob("*") if classify(p.name) == "segment")


def _insert_and_archive(pg: PgCluster, n: int) -> None:
    for _ in range(n):
        pg.execute("insert into pitr_rows (body) select repeat('x', 200) from generate_series(1, 50)")
        switch_and_wait_archived(pg)


def test_physical_expire_drops_old_wal_and_keeps_what_the_kept_backup_needs(tmp_path: Path) -> None:
    with physical_setup() as setup:
        pg, cli = setup.cluster, setup.cli
        create_table(pg)
        _insert_and_archive(pg, 1)
        full1 = cli.ok_json("backup", "--kind", "full")
        _insert_and_archive(pg, 2)
        time.sleep(AGE)
        full2 = cli.ok_json("backup", "--kind", "full")
        _insert_and_archive(pg, 2)  # WAL after the kept backup: it must stay, however old
        time.sleep(AGE)
        first1 = cli.ok_json("show", full1["id"])["manifest"]["details"]["wal_first"]
        first2 = cli.ok_json("show", full2["id"])["manifest"]["details"]["wal_first"]
        last2 = cli.ok_json("show", full2["id"])["manifest"]["details"]["wal_last"]
        before = _segments(setup.repo)
        assert before[0] <= first1 < first2 <= last2 < before[-1]

        plan = run_json(cli, "expire", env=SHORT)
        assert plan["applied"] is False and _segments(setup.repo) == before
        assert plan["wal"]["delete_segments"] > 0 and plan["wal"]["last"] < first2

        res = cli.run("expire", "--confirm", "--json", env=SHORT)
        assert res.returncode == 0, res
        out = res.json()
        assert by_id(out)[full1["id"]][0] == "delete" and by_id(out)[full2["id"]][0] == "keep"
        after = _segments(setup.repo)
        # Older WAL gone, the rest kept (the server may have archived more meanwhile).
        assert set(before) & set(after) == {s for s in before if s >= first2}
        assert first1 not in after and {first2, last2} <= set(after)
        assert out["result"]["deleted_wal_files"] >= len(set(before) - set(after)) > 0

        # The kept backup restores and rolls forward to the newest archived WAL.
        want = rows(pg)
        pgdata = setup.base / "restored"
        res = cli.run("restore", full2["id"], "--pgdata", str(pgdata), "--json")
        assert res.returncode == 0, res
        server = Restored(pgdata, pg).start()
        try:
            server.wait_promoted()
            assert rows(server) == want
        finally:
            server.stop()
