"""The migration guard as operators watch it: the webhook and the daemon's metrics, progress lines
while a migration runs, and a ``migrate`` killed with SIGKILL while its role settings were in
force (the next ``migrate`` puts them back)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_migrate import INIT, PRISMA, add, catalog_runs, migrate, rows
from tests.e2e.test_migrate import setup as setup
from tests.support.cli import Cli
from tests.support.daemon import Daemon
from tests.support.pg import PgCluster
from tests.support.webhook import webhook_server

ADD_COLUMN = 'ALTER TABLE "Post" ADD COLUMN summary text;'
PRISMA_LOCK_HELD = (
    "select 1 from pg_locks l join pg_database d on d.oid = l.database where l.locktype = 'advisory' "
    "and l.objid = 72707369 and d.datname = current_database()"
)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with webhook_server() as (url, received):
        yield url, received.bodies


def test_webhook_and_daemon_metrics_report_migrations(
    setup: tuple[Cli, Path], webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    cli, migrations = setup
    url, received = webhook
    cli.env["BACKUPD_NOTIFY__WEBHOOK_URL"] = url
    add(migrations, "20261101000000_init", INIT)
    assert migrate(cli, migrations).returncode == 0
    add(migrations, "20261102000000_broken", 'INSERT INTO "Nope" VALUES (1);')
    assert migrate(cli, migrations).json()["status"] == "rolled_back"
    assert [m["event"] for m in received] == ["migration_succeeded", "migration_failed"]
    assert received[0]["status"] == "applied" and "20261101000000_init" in received[0]["text"]
    assert received[1]["status"] == "rolled_back"

    env = dict(cli.env)
    env.update({f"BACKUPD_SCHEDULE__{job}": "off" for job in
                ("FULL", "INCREMENTAL", "WAL", "RETENTION", "VERIFY", "RESTORE_TEST")})  # fmt: skip
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        assert d.metric("backupd_migration_runs_total", result="applied") == 1
        assert d.metric("backupd_migration_runs_total", result="rolled_back") == 1
        assert d.metric("backupd_migration_runs_total", result="refused") == 0
        assert (d.metric("backupd_migration_last_duration_seconds") or 0) > 0


def test_progress_is_logged_while_the_command_runs(setup: tuple[Cli, Path]) -> None:
    cli, migrations = setup
    add(migrations, "20261101000000_init", INIT)
    result = cli.run(
        "migrate", "--migrations-dir", str(migrations), "--json", "--",
        *PRISMA, str(migrations), "--sleep-before", "20261101000000_init=2",
    )  # fmt: skip
    assert result.returncode == 0, str(result)
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "migration_progress"]
    assert len(progress) >= 2 and all("statements" in e for e in progress)
    output = [e for e in events if e["event"] == "migration_output"]
    assert any("Applying migration `20261101000000_init`" in e["line"] for e in output)
    assert all(e.get("migration_id") == result.json()["id"] for e in progress + output)


def test_a_killed_migrate_leaves_its_role_settings_to_the_next_one(
    setup: tuple[Cli, Path], pg: PgCluster, pg_db: str
) -> None:
    cli, migrations = setup
    add(migrations, "20261101000000_init", INIT)
    proc = cli.popen(
        "migrate", "--migrations-dir", str(migrations), "--", *PRISMA, str(migrations),
        "--sleep-before", "20261101000000_init=30",
    )  # fmt: skip
    setting = (
        "select s.setconfig from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase "
        "where d.datname = current_database()"
    )
    try:
        deadline = time.monotonic() + 60
        while not rows(pg, pg_db, PRISMA_LOCK_HELD):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        assert rows(pg, pg_db, setting) == [(["lock_timeout=1000ms"],)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert rows(pg, pg_db, setting) == [(["lock_timeout=1000ms"],)]  # left behind by the crash
    assert [r.status for r in catalog_runs(cli)] == ["running"]
    # The orphaned stand-in still sleeps holding Prisma's advisory lock: the next migrate repairs
    # the settings, then refuses (a Prisma migration is in flight).
    refused = migrate(cli, migrations)
    assert refused.returncode == 4 and "no_prisma_migration" in refused.stdout, str(refused)
    runs = catalog_runs(cli)
    assert runs[0].status == "failed" and "role settings" in (runs[0].error or "")
    assert "role_settings" not in runs[0].details
    assert rows(pg, pg_db, setting) == []
    rows(
        pg,
        pg_db,
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'prisma-migrate' "
        "and datname = current_database()",
    )
    deadline = time.monotonic() + 30
    while rows(pg, pg_db, PRISMA_LOCK_HELD):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    again = migrate(cli, migrations)
    assert again.returncode == 0 and again.json()["status"] == "applied", str(again)
    assert rows(pg, pg_db, setting) == []


def test_sigterm_stops_the_command_and_puts_the_settings_back(
    setup: tuple[Cli, Path],
    pg: PgCluster,
    pg_db: str,
) -> None:
    cli, migrations = setup
    add(migrations, "20261101000000_init", INIT)
    proc = cli.popen(
        "migrate", "--migrations-dir", str(migrations), "--", *PRISMA, str(migrations),
        "--sleep-before", "20261101000000_init=30",
    )  # fmt: skip
    held = PRISMA_LOCK_HELD
    deadline = time.monotonic() + 60
    while not rows(pg, pg_db, held):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert not rows(
        pg,
        pg_db,
        "select 1 from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase "
        "where d.datname = current_database()",
    )
    assert not rows(pg, pg_db, held)  # the command was stopped with it
    run = catalog_runs(cli)[-1]
    assert run.status == "failed" and "interrupted" in (run.error or "")
    assert rows(pg, pg_db, "select to_regclass('\"Post\"') is null") == [(True,)]
