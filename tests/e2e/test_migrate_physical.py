"""The migration guard in physical mode: the safety net is a restore point whose WAL is archived
(by this tool as archive_command), and the recovery plan of a failed migration without
``down.sql`` brings the schema back when followed."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tests.e2e.physical import _chown, physical_setup
from tests.e2e.pitr_helpers import Restored

ROOT = Path(__file__).resolve().parents[2]
INIT = 'CREATE TABLE "Post" (id serial PRIMARY KEY, title text NOT NULL);'
TAG = 'CREATE TABLE "Tag" (id serial PRIMARY KEY, name text NOT NULL);'


def test_physical_safety_net_and_a_recovery_plan_that_works() -> None:
    with physical_setup() as s:
        migrations = s.base / "migrations"
        migrations.mkdir()
        (migrations / "migration_lock.toml").write_text('provider = "postgresql"\n')
        for name, sql in (("20261101000000_init", INIT),):
            (migrations / name).mkdir()
            (migrations / name / "migration.sql").write_text(sql)
        for path in [migrations, *migrations.rglob("*")]:
            _chown(path)
        s.cli.env["PYTHONPATH"] = str(ROOT)
        s.cli.env["BACKUPD_MIGRATE__MIN_FREE_BYTES"] = "1024"
        s.cli.env["BACKUPD_STATE_DIR"] = str(s.base / "state")
        prisma = [sys.executable, "-m", "tests.support.fake_prisma", "migrate", "deploy", "--migrations-dir"]

        def migrate() -> dict[str, object]:
            result = s.cli.run(
                "migrate", "--migrations-dir", str(migrations), "--json", "--", *prisma, str(migrations)
            )
            assert result.returncode in (0, 1), str(result)
            out: dict[str, object] = result.json()
            return out

        s.cli.run("backup", "--mode", "physical", "--kind", "full", check=True)
        first = migrate()
        assert first["status"] == "applied", first
        assert first["backup_id"] is None and first["restore_point"] == f"pre-migrate-{first['id']}"
        checks = {c["name"]: c["status"] for c in first["checks"]}  # type: ignore[attr-defined]
        assert checks["wal_archiving"] == "passed"
        points = s.cli.run("list-restore-points", "--json", check=True).json()
        assert first["restore_point"] in [p["name"] for p in points]

        s.cluster.execute("""INSERT INTO "Post" (title) SELECT 'p' || i FROM generate_series(1, 100) i""")
        (migrations / "20261102000000_tag").mkdir()
        (migrations / "20261102000000_tag" / "migration.sql").write_text(TAG)  # no down.sql
        (migrations / "20261103000000_broken").mkdir()
        (migrations / "20261103000000_broken" / "migration.sql").write_text('INSERT INTO "Nope" VALUES (1);')
        for path in migrations.rglob("*"):
            _chown(path)
        dry = s.cli.run(
            "migrate",
            "--migrations-dir",
            str(migrations),
            "--json",
            "--dry-run",
            "--",
            *prisma,
            str(migrations),
        )
        out = dry.json()
        assert dry.returncode == 1 and out["dry_run"] is True and out["status"] == "failed", str(dry)
        checks = {c["name"]: c["status"] for c in out["checks"]}
        assert checks["dry_run_restore"] == "passed" and checks["migrations_recorded"] == "failed"
        assert s.cluster.execute("""select to_regclass('"Tag"') is null""") == [(True,)]  # untouched
        failed = migrate()
        assert failed["status"] == "failed" and failed["rollback"]["status"] == "impossible"  # type: ignore[index]
        plan = failed["recovery_plan"]
        assert isinstance(plan, dict)
        assert plan["restore_point"] == failed["restore_point"] and plan["would_lose"]["wal_bytes_since"] > 0
        assert s.cluster.execute("""select to_regclass('"Tag"') is not null""") == [(True,)]

        # Follow the plan: restore to the restore point into a new data directory, start it beside.
        target = s.base / "recovered"
        restore = plan["commands"][0].replace("NEW_DATA_DIR", str(target)).split()
        assert restore[0] == "contentflow-backupd"
        s.cli.run(*restore[1:], check=True)
        recovered = Restored(target, s.cluster).start()
        try:
            recovered.wait_promoted()
            assert recovered.execute("""select to_regclass('"Tag"') is null""") == [(True,)]
            assert recovered.execute('select count(*) from "Post"') == [(100,)]
            applied = recovered.execute(
                'select migration_name from "_prisma_migrations" where rolled_back_at is null order by 1'
            )
            assert applied == [("20261101000000_init",)]
        finally:
            recovered.stop()
            shutil.rmtree(target, ignore_errors=True)
        assert not os.path.exists(target)
