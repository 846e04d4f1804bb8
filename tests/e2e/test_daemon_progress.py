"""The daemon's running job, seen from outside: `status` (another process) lists its progress,
the daemon logs `progress` events for it, and `/metrics` has the job progress series."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.helpers import seed
from tests.support.cli import Cli
from tests.support.daemon import Daemon, daemon_env
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg


def test_status_and_metrics_show_the_running_job(tmp_path: Path, pg: PgCluster, pg_db: str) -> None:
    seed(pg, pg_db, size_mb=1)
    slow = tmp_path / "checks-slow.sql"
    slow.write_text("select true from pg_sleep(40);\n")  # keeps the drill in its `checking` phase
    env = daemon_env(
        tmp_path,
        pg,
        pg_db,
        BACKUPD_SCHEDULE__RESTORE_TEST="every 2s",
        BACKUPD_DRILL__DATABASE_URL=pg.url("postgres"),
        BACKUPD_DRILL__CHECKS=str(slow),
        BACKUPD_PROGRESS_INTERVAL="0.5",
        BACKUPD_SHUTDOWN_GRACE="1s",
    )
    cli = Cli(env=env)
    cli.run("init", check=True)
    cli.run("backup", "--kind", "full", check=True)

    def running() -> list[dict[str, object]]:
        result = cli.run("status", "--json")
        jobs: list[dict[str, object]] = result.json()["running"]
        return [j for j in jobs if j["operation"] == "restore_test" and j["phase"] == "checking"]

    with Daemon(env) as d:
        job = d.wait_for("the drill's progress in status", running, timeout=120)[0]
        assert {"done", "total", "unit", "rate", "elapsed_seconds", "eta_seconds"} <= set(job)
        text = cli.run("status").stdout
        assert "running: restore_test: checking" in text, text
        events = d.wait_for(
            "progress log events",
            lambda: [e for e in d.events("progress") if e["operation"] == "restore_test"],
        )
        assert {e["job"] for e in events} == {"restore_test"}
        assert d.metric("backupd_job_progress_done", cluster="main", job="restore_test") is not None
        assert d.metric("backupd_job_progress_total", cluster="main", job="full") == 0.0  # not running

    # Stopped in the drill's check (a query that blocks in libpq for 40 s, past the 1 s grace):
    # the query is cancelled, so the drill drops its scratch database and records the run.
    left = pg.execute("select datname from pg_database where datname like 'backupd\\_drill\\_%'")
    assert left == []
    drills = [r for r in cli.ok_json("runs") if r["job"] == "restore_test"]
    assert drills and drills[0]["status"] == "interrupted", drills
