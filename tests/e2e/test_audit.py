"""The audit trail end to end, through the installed command: operations are recorded, tampering
is found by ``audit verify``, and the history survives losing the catalog (``catalog rebuild``
restores it from the repository's encrypted copy)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import change, seed
from tests.support.cli import Cli
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

SHORT = {
    "BACKUPD_RETENTION__FULL": "2s",
    "BACKUPD_RETENTION__INCREMENTAL": "2s",
    "BACKUPD_RETENTION__WAL": "2s",
    "BACKUPD_RETENTION__GC_GRACE": "1s",
}


def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "catalog.sqlite"
    assert path.is_file()
    return path


def test_operations_are_recorded_tamper_is_found_and_rebuild_restores_the_trail(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    seed(pg, pg_db, size_mb=1)
    cli.run("init", check=True)
    cli.env.update(SHORT)
    full1 = cli.ok_json("backup", "--kind", "full")
    time.sleep(2.5)
    change(pg, pg_db)
    full2 = cli.ok_json("backup", "--kind", "full")
    restored = tmp_path / "dump.pgdump"
    cli.run("restore", "latest", "--to-file", str(restored), check=True)
    cli.run("verify", check=True)
    expired = cli.ok_json("expire", "--confirm")
    assert expired["applied"] is True

    events = cli.ok_json("audit")
    actions = [(e["action"], e["outcome"]) for e in events]
    assert actions == [
        ("backup", "succeeded"),
        ("backup", "succeeded"),
        ("restore", "succeeded"),
        ("verify", "succeeded"),
        ("expire", "succeeded"),
    ]
    assert all({"at", "actor", "action", "outcome"} <= set(e) and "@" in e["actor"] for e in events)
    assert events[0]["objects"] == [full1["id"]] and events[2]["objects"] == [full2["id"]]
    assert full1["id"] in events[4]["objects"] and f"generation:{full1['id']}" in events[4]["objects"]
    assert cli.ok_json("audit", "--since", events[3]["at"])[0]["action"] == "verify"
    assert cli.ok_json("audit", "verify")["ok"] is True
    human = cli.run("audit", check=True)
    assert "expire" in human.stdout and full2["id"] in human.stdout

    # The log carries the same events as structured lines.
    again = cli.run("verify", full2["id"], check=True)
    lines = [json.loads(line) for line in again.stderr.splitlines() if line.startswith("{")]
    assert [(x["action"], x["outcome"]) for x in lines if x.get("event") == "audit"] == [
        ("verify", "succeeded")
    ]

    # The repository holds encrypted copies: the actions and ids do not appear in plain text.
    audit_objects = sorted((tmp_path / "repo" / "audit").rglob("*.json"))
    assert audit_objects
    assert all(
        b"backup" not in p.read_bytes() and full1["id"].encode() not in p.read_bytes() for p in audit_objects
    )

    # Tamper with a row: `audit verify` exits 1 naming it.
    db = catalog_file(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("update audit_events set outcome = 'failed' where seq = 3")
    bad = cli.run("audit", "verify")
    assert bad.returncode == 1, bad
    assert "audit record 3" in bad.stderr
    bad_json = cli.run("audit", "verify", "--json")
    assert bad_json.returncode == 1 and bad_json.json()["broken"]["seq"] == 3

    # Lose the catalog: `catalog rebuild` restores the history, which verifies again.
    db.unlink()
    for extra in db.parent.glob(db.name + "-*"):
        extra.unlink()
    rebuilt = cli.ok_json("catalog", "rebuild")
    assert rebuilt["audit"]["found"] == len(events) + 1
    after = cli.ok_json("audit")
    assert [(e["seq"], e["action"], e["outcome"]) for e in after[: len(events) + 1]] == [
        (e["seq"], e["action"], e["outcome"])
        for e in [*events, {"seq": 6, "action": "verify", "outcome": "succeeded"}]
    ]
    assert after[-1]["action"] == "catalog_rebuild"
    ok = cli.run("audit", "verify", "--json")
    assert ok.returncode == 0, ok
    assert ok.json()["records"] == len(after)


def test_a_restore_without_a_reachable_catalog_still_restores(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    seed(pg, pg_db, size_mb=1)
    cli.run("init", check=True)
    cli.ok_json("backup", "--kind", "full")
    cli.env["BACKUPD_CATALOG_URL"] = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"
    out = cli.run("restore", "latest", "--to-file", str(tmp_path / "d.pgdump"))
    assert out.returncode == 0, out
    assert "audit_unavailable" in out.stderr


def test_the_daemon_records_its_configuration_when_it_changes(
    tmp_path: Path, pg: PgCluster, pg_db: str
) -> None:
    from contentflow_backupd.demo.cluster import free_port
    from tests.support.daemon import Daemon, daemon_env

    env = daemon_env(tmp_path, pg, pg_db)
    port = free_port()  # the same listen address each time: an unchanged configuration
    for extra in ({}, {}, {"BACKUPD_UPLOAD_CONCURRENCY": "3"}):
        with Daemon({**env, **extra}, port=port) as d:
            d.wait_for("READY=1", lambda d=d: "READY=1" in d.notifications)  # type: ignore[misc]
    events = [e for e in Cli(env=env).ok_json("audit") if e["action"] == "config_changed"]
    assert len(events) == 2, events  # the first start, then the change; not the unchanged restart
    assert events[0]["details"]["first"] is True
    assert events[1]["details"]["changed"] == ["BACKUPD_UPLOAD_CONCURRENCY"]
    assert events[1]["objects"] == ["BACKUPD_UPLOAD_CONCURRENCY"]
