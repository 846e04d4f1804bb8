"""The version matrix: the user journeys on PostgreSQL 16 and 18 (the whole suite runs on 15).

Each test runs once per major of ``MATRIX_MAJORS`` (ids ``[pg16]``, ``[pg18]``), against a
cluster of that major, with that major's client tools given as ``BACKUPD_PG_BIN`` (the wheels'
bin directories, which hold the server too: the drills' scratch servers are found there). The
journeys: logical backup, restore and drill; physical full and incremental with ``wal-push``
as archive_command and ``wal-fetch`` as restore_command, PITR to a time, an LSN, a restore point
and the latest, and a physical drill; the migration guard (apply, rollback with down.sql,
rollback to the restore point, dry run); the daemon with one scheduled full backup, WAL from
``wal-stream`` and a green ``/healthz``.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSPHRASE
from tests.e2e import helpers
from tests.e2e.physical import PhysicalSetup, physical_setup
from tests.e2e.pitr_helpers import (
    TABLE,
    Mark,
    Restored,
    Workload,
    create_table,
    mark,
    rows,
    switch_and_wait_archived,
)
from tests.e2e.test_migrate import ADD_COLUMN, ADD_TABLE, BROKEN, INIT, PRISMA, ROOT, add, schema
from tests.support.cli import Cli, Result
from tests.support.daemon import Daemon
from tests.support.pg import PgCluster, pg_bin_dir

pytestmark = pytest.mark.pg


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory the postgres user can reach (drills' scratch servers run as postgres)."""
    path = Path(tempfile.mkdtemp(prefix="backupd-versions-"))
    os.chmod(path, 0o755)
    (path / "state").mkdir(mode=0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def logical_cli(pg: PgCluster, db: str, base: Path, major: int, **extra: str) -> Cli:
    return Cli(
        env={
            "BACKUPD_DATABASE_URL": pg.url(db),
            "BACKUPD_REPOSITORY": f"file://{base / 'repo'}",
            "BACKUPD_STATE_DIR": str(base / "state"),
            "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
            "BACKUPD_CHUNKING__AVG_SIZE": str(64 * 1024),
            "BACKUPD_PG_BIN": str(pg_bin_dir(major)),
            **extra,
        }
    )


def checks(out: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in out["checks"]}


# -- logical -------------------------------------------------------------------------------------


def test_logical_backup_restore_and_drill(pg_major: int, pg_of_major: PgCluster, base: Path) -> None:
    pg = pg_of_major
    assert pg.version == pg_major
    db = pg.create_database()
    helpers.seed(pg, db, size_mb=2)
    cli = logical_cli(pg, db, base, pg_major)
    cli.run("init", check=True)
    full = cli.ok_json("backup", "--kind", "full")
    helpers.change(pg, db, fraction=0.05)
    incremental = cli.ok_json("backup", "--kind", "incremental")
    assert incremental["parent_id"] == full["id"]
    details = cli.ok_json("show", incremental["id"])["manifest"]["details"]
    assert details["pg_version"].startswith(f"{pg_major}.") and details["pg_dump_major"] == pg_major

    restored = "restored_" + db
    out = cli.ok_json("restore", "latest", "--to-database", pg.url(restored), "--create")
    assert out["backup_id"] == incremental["id"]
    assert helpers.checksums(pg, restored) == helpers.checksums(pg, db)

    drill = cli.run("restore-test", "--json")
    assert drill.returncode == 0, str(drill)
    by_name = checks(drill.json())
    assert by_name["schema"] == by_name["row_counts"] == by_name["read_tables"] == "passed", by_name
    # 16's wheel has no amcheck: the check says so instead of failing
    assert by_name["amcheck"] == ("skipped" if pg_major == 16 else "passed")


# -- physical, PITR ------------------------------------------------------------------------------


def restore_point(setup: PhysicalSetup, name: str) -> Mark:
    with setup.cluster.connect() as conn, conn.transaction():
        conn.execute(f"lock table {TABLE} in exclusive mode")
        row = conn.execute(f"select clock_timestamp()::text, max(id) from {TABLE}").fetchone()
        assert row is not None
        point = setup.cli.ok_json("restore-point", name)
    return Mark(time=row[0], max_id=int(row[1]), lsn=point["lsn"])


def restored_rows(setup: PhysicalSetup, name: str, *args: str) -> tuple[dict[str, Any], list[int], Any]:
    pgdata = setup.base / name
    result = setup.cli.run("restore", "latest", "--pgdata", str(pgdata), *args, "--json")
    assert result.returncode == 0, str(result)
    assert "wal-fetch" in (pgdata / "postgresql.auto.conf").read_text()
    server = Restored(pgdata, setup.cluster).start()
    try:
        server.wait_promoted()
        with server.connect("app") as conn:
            from contentflow_backupd.demo.datagen import table_checksums

            sums = table_checksums(conn)
        return result.json(), rows(server), sums
    finally:
        server.stop()
        shutil.rmtree(pgdata, ignore_errors=True)


def upto(mark: Mark) -> list[int]:
    return list(range(1, mark.max_id + 1))


def test_physical_backups_pitr_and_drill(pg_major: int) -> None:
    with physical_setup(bin_dir=pg_bin_dir(pg_major)) as setup:
        pg = setup.cluster
        assert pg.version == pg_major
        create_table(pg)
        app = pg.create_database("app")
        helpers.seed(pg, app, size_mb=1)
        with Workload(pg):
            time.sleep(0.2)
            full = setup.cli.ok_json("backup", "--kind", "full")
            time.sleep(0.3)
            at_time = mark(pg)
            time.sleep(0.3)
            helpers.change(pg, app, fraction=0.05)
            incremental = setup.cli.ok_json("backup", "--kind", "incremental")
            assert incremental["kind"] == "incremental" and incremental["parent_id"] == full["id"]
            time.sleep(0.3)
            at_lsn = mark(pg)
            time.sleep(0.3)
            at_name = restore_point(setup, "before-deploy")
            time.sleep(0.3)
        switch_and_wait_archived(pg)
        everything = rows(pg)
        app_sums = helpers.checksums(pg, app)

        out, got, _ = restored_rows(
            setup, "to-time", "--target-time", at_time.time, "--target-action", "promote"
        )
        assert out["backup_id"] == full["id"] and got == upto(at_time)
        out, got, _ = restored_rows(setup, "to-lsn", "--target-lsn", at_lsn.lsn, "--target-action", "promote")
        assert out["backup_id"] == incremental["id"] and got == upto(at_lsn)
        _, got, _ = restored_rows(
            setup, "to-name", "--target-name", "before-deploy", "--target-action", "promote"
        )
        assert got == upto(at_name)
        out, got, sums = restored_rows(setup, "latest")
        assert out["backup_id"] == incremental["id"] and got == everything and sums == app_sums

        drill = setup.cli.run("restore-test", "--json")
        assert drill.returncode == 0, str(drill)
        by_name = checks(drill.json())
        assert all(s in ("passed", "skipped") for s in by_name.values()), by_name
        assert by_name["pg_verifybackup"] == by_name["recovery"] == by_name["row_counts"] == "passed"


# -- the migration guard -------------------------------------------------------------------------


def migrate(cli: Cli, migrations: Path, *options: str) -> Result:
    return cli.run(
        "migrate", "--migrations-dir", str(migrations), "--json", *options, "--", *PRISMA, str(migrations)
    )


def test_migration_guard_apply_rollback_and_dry_run(
    pg_major: int, pg_of_major: PgCluster, base: Path
) -> None:
    pg = pg_of_major
    db = pg.create_database()
    migrations = base / "migrations"
    migrations.mkdir()
    (migrations / "migration_lock.toml").write_text('provider = "postgresql"\n')
    cli = logical_cli(
        pg,
        db,
        base,
        pg_major,
        BACKUPD_MIGRATE__LOCK_TIMEOUT="1s",
        BACKUPD_MIGRATE__MIN_FREE_BYTES="1024",
        PYTHONPATH=str(ROOT),
    )
    cli.run("init", check=True)
    add(migrations, "20261101000000_init", INIT)
    applied = migrate(cli, migrations)
    assert applied.returncode == 0, str(applied)
    assert checks(applied.json())["schema_matches_migrations"] == "passed"  # a scratch server of pg_major
    pg.execute("""INSERT INTO "Post" (title) SELECT 'post ' || i FROM generate_series(1, 300) i""", db)
    before = schema(pg, db)

    # a failing migration: rolled back with the down.sql of those applied before it
    add(migrations, "20261102000000_summary", ADD_COLUMN, down='ALTER TABLE "Post" DROP COLUMN summary;')
    add(migrations, "20261103000000_broken", BROKEN)
    failed = migrate(cli, migrations, "--allow-risky")
    assert failed.returncode == 1 and (failed.json()["rollback"] or {}).get("status") == "rolled_back", str(
        failed
    )
    assert schema(pg, db) == before

    # without down.sql: rolled back to the restore point (a logical restore in one transaction)
    shutil.rmtree(migrations / "20261103000000_broken")
    add(migrations, "20261103000000_tag", ADD_TABLE)
    again = migrate(cli, migrations, "--allow-risky")
    assert again.returncode == 0, str(again)
    point = again.json()["restore_point"]
    back = cli.run("migrate", "rollback", "--to-restore-point", point, "--confirm", "--json")
    assert back.returncode == 0 and back.json()["schema_equals_before"] is True, str(back)
    assert schema(pg, db) == before

    # a dry run applies to a restored copy, and leaves production as it was
    dry = migrate(cli, migrations, "--dry-run", "--allow-risky")
    assert dry.returncode == 0, str(dry)
    assert dry.json()["dry_run"] is True and checks(dry.json())["dry_run_restore"] == "passed"
    assert schema(pg, db) == before


# -- the daemon ----------------------------------------------------------------------------------


def test_daemon_full_backup_wal_stream_and_healthz(pg_major: int) -> None:
    with physical_setup(archive=False, bin_dir=pg_bin_dir(pg_major)) as setup:
        env = {
            "BACKUPD_CONFIG": str(setup.config),
            "BACKUPD_SCHEDULE__FULL": "every 1h",  # the first one runs at once: no full yet
            "BACKUPD_SCHEDULE__INCREMENTAL": "off",
            "BACKUPD_SCHEDULE__WAL": "every 3s",
            "BACKUPD_SCHEDULE__RETENTION": "off",
            "BACKUPD_SCHEDULE__VERIFY": "off",
            "BACKUPD_SCHEDULE__RESTORE_TEST": "off",
            "BACKUPD_SHUTDOWN_GRACE": "10s",
        }
        with Daemon(env) as d:
            d.wait_for(
                "a physical full backup",
                lambda: (d.metric("backupd_backup_runs_total", kind="full", result="success") or 0) >= 1,
                timeout=120,
            )
            setup.cluster.execute("create table t (x int); insert into t select generate_series(1, 100)")
            d.wait_for(
                "WAL streamed and archived",
                lambda: (d.metric("backupd_wal_archived_segments_total") or 0) >= 1,
                timeout=90,
            )
            d.wait_for("healthz 200", lambda: d.get("/healthz")[0] == 200, timeout=60)
            d.signal(signal.SIGTERM)
            assert d.wait(60) == 0, d.stderr()[-3000:]
        assert Cli(env=env).run("wal", "verify", "--json").returncode == 0
