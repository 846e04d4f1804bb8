"""The daemon's webhook: a size anomaly, a failed run and the first success after it reach a real
HTTP endpoint on loopback, and the anomaly shows in the metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli
from tests.support.daemon import Daemon, daemon_env
from tests.support.pg import PgCluster
from tests.support.webhook import webhook_server

pytestmark = pytest.mark.pg


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with webhook_server() as (url, received):
        yield url, received.bodies


def test_webhook_gets_anomaly_failure_and_recovery(
    tmp_path: Path, pg: PgCluster, pg_db: str, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    pg.execute(
        "create table items (id bigint primary key, body text);"
        "insert into items select g, md5(g::text) from generate_series(1, 2000) g",
        pg_db,
    )
    env = daemon_env(
        tmp_path,
        pg,
        pg_db,
        BACKUPD_SCHEDULE__FULL="every 3s",
        BACKUPD_NOTIFY__WEBHOOK_URL=url,
        BACKUPD_NOTIFY__TIMEOUT="2s",
    )
    cli = Cli(env=env)
    cli.run("init", check=True)
    for _ in range(3):
        cli.run("backup", "--kind", "full", check=True)
    # the database grows tenfold: the next full backup is a size anomaly
    pg.execute(
        "insert into items select g, repeat(md5(g::text), 8) from generate_series(2001, 60000) g", pg_db
    )
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        d.wait_for("a size anomaly", lambda: [m for m in received if m["event"] == "size_anomaly"])
        assert d.metric("backupd_backup_size_anomaly", kind="full") == 1
        anomaly = next(m for m in received if m["event"] == "size_anomaly")
        assert anomaly["text"] and anomaly["kind"] == "full" and anomaly["ratio"] > 2
        # connections refused: the next run fails, then succeeds again
        pg.execute(f'alter database "{pg_db}" allow_connections false')
        try:
            d.wait_for("a failure notice", lambda: [m for m in received if m["event"] == "run_failed"])
        finally:
            pg.execute(f'alter database "{pg_db}" allow_connections true')
        d.wait_for("a recovery notice", lambda: [m for m in received if m["event"] == "run_recovered"])
        failed = next(m for m in received if m["event"] == "run_failed")
        assert failed["job"] == "full" and "error" in failed and "the full run failed" in failed["text"]
    assert all("secret-token" not in line for line in d.raw_stderr)


def test_verification_finds_a_damaged_chunk_until_retention_drops_its_backup(
    tmp_path: Path, pg: PgCluster, pg_db: str, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    pg.execute("create table items (id bigint primary key, body text);", pg_db)
    pg.execute("insert into items select g, md5(g::text) from generate_series(1, 5000) g", pg_db)
    env = daemon_env(tmp_path, pg, pg_db, BACKUPD_NOTIFY__WEBHOOK_URL=url)
    cli = Cli(env=env)
    cli.run("init", check=True)
    old = cli.run("backup", "--kind", "full", "--json", check=True).json()
    # A chunk, or the pack holding chunks (not a pack's index, which no restore needs: a warning).
    found = (tmp_path / "repo" / "main" / "chunks" / old["generation"]).rglob("*")
    chunk = min(p for p in found if p.is_file() and not p.name.endswith(".index"))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    daemon = {
        **env,
        "BACKUPD_SCHEDULE__VERIFY": "every 2s",
        "BACKUPD_VERIFY__FULL_SWEEP": "10s",
    }
    with Daemon(daemon) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        d.wait_for("the damaged chunk", lambda: (d.metric("backupd_verify_corrupt_objects") or 0) >= 1)
        d.wait_for("healthz 503", lambda: d.get("/healthz")[0] == 503)
        assert (d.metric("backupd_verify_runs_total", result="failure") or 0) >= 1
        d.wait_for("a webhook", lambda: [m for m in received if m["event"] == "corrupt_objects"])
        notice = next(m for m in received if m["event"] == "corrupt_objects")
        assert chunk.name in notice["text"]
    # a new full backup, and retention drops the old one: nothing needs the damaged chunk any more
    cli.run("backup", "--kind", "full", check=True)
    expire_env = {"BACKUPD_RETENTION__FULL": "1s", "BACKUPD_RETENTION__GC_GRACE": "1h"}
    cli.run("expire", "--confirm", env=expire_env, check=True)
    with Daemon(daemon) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        d.wait_for("resolved", lambda: d.metric("backupd_verify_corrupt_objects") == 0)
        d.wait_for(
            "a clean verification",
            lambda: (d.metric("backupd_verify_runs_total", result="success") or 0) >= 1,
        )
        d.wait_for("healthz 200", lambda: d.get("/healthz")[0] == 200)
    runs = cli.run("runs", "--job", "verify", "--json", check=True).json()
    assert {r["status"] for r in runs} >= {"failed", "succeeded"}
