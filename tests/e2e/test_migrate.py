"""``migrate -- COMMAND``: the guarded migration, against real PostgreSQL, with the stand-in for
``prisma migrate deploy`` (tests/support/fake_prisma.py) as COMMAND."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contentflow_backupd.catalog.sql import open_catalog
from tests.conftest import PASSPHRASE
from tests.e2e.helpers import repository_scope
from tests.support.cli import Cli, Result
from tests.support.pg import PgCluster

ROOT = Path(__file__).resolve().parents[2]
PRISMA = [sys.executable, "-m", "tests.support.fake_prisma", "migrate", "deploy", "--migrations-dir"]

INIT = 'CREATE TABLE "Post" (id serial PRIMARY KEY, title text NOT NULL, views int NOT NULL DEFAULT 0);'
ADD_COLUMN = 'ALTER TABLE "Post" ADD COLUMN summary text;'
ADD_TABLE = 'CREATE TABLE "Tag" (id serial PRIMARY KEY, name text NOT NULL UNIQUE);'
BROKEN = 'CREATE TABLE "Broken" (id int); INSERT INTO "Nope" VALUES (1);'


@pytest.fixture(params=["root", "postgres"])
def setup(request: pytest.FixtureRequest, pg: PgCluster, pg_db: str) -> Iterator[tuple[Cli, Path]]:
    """A logical setup run as root or as the unprivileged ``postgres`` user, and an empty
    migrations directory. The state directory is made by the command itself, as the default one
    is: mode 0700, owned by whoever runs it (as root, the scratch servers run as postgres, who
    cannot enter it). Its parent is 0700 too: nothing of the state tree needs to be reachable."""
    user = None if request.param == "root" else "postgres"
    base = Path(tempfile.mkdtemp(prefix="backupd-migrate-"))
    migrations = base / "migrations"
    migrations.mkdir()
    (migrations / "migration_lock.toml").write_text('provider = "postgresql"\n')
    if user is not None:
        os.chown(base, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        os.chmod(migrations, 0o777)  # the tests add migrations as root, the command may write there
    cli = Cli(
        env={
            "BACKUPD_DATABASE_URL": pg.url(pg_db),
            "BACKUPD_REPOSITORY": f"file://{base / 'repo'}",
            "BACKUPD_STATE_DIR": str(base / "state"),
            "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
            "BACKUPD_CHUNKING__AVG_SIZE": str(64 * 1024),
            "BACKUPD_MIGRATE__LOCK_TIMEOUT": "1s",
            "BACKUPD_MIGRATE__PROGRESS_INTERVAL": "0.5s",
            "BACKUPD_MIGRATE__MIN_FREE_BYTES": "1024",
            "PYTHONPATH": str(ROOT),
        },
        user=user,
    )
    cli.run("init", check=True)
    cli.run("catalog", "upgrade", check=True)  # opens the catalog for writing: makes the state directory
    st = (base / "state").stat()
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == (0 if user is None else pwd.getpwnam(user).pw_uid)
    try:
        yield cli, migrations
    finally:
        shutil.rmtree(base, ignore_errors=True)


def add(migrations: Path, name: str, sql: str, down: str | None = None) -> None:
    folder = migrations / name
    folder.mkdir()
    (folder / "migration.sql").write_text(sql)
    if down is not None:
        (folder / "down.sql").write_text(down)


def migrate(
    cli: Cli, migrations: Path, *options: str, env: dict[str, str] | None = None, verb: tuple[str, ...] = ()
) -> Result:
    """``migrate [OPTIONS] -- COMMAND`` (the spelling of earlier versions), or with ``verb``
    ``("run",)``, ``migrate run [OPTIONS] -- COMMAND``."""
    return cli.run(
        "migrate", *verb, "--migrations-dir", str(migrations), "--json", *options, "--", *PRISMA,
        str(migrations), env=env,
    )  # fmt: skip


def rows(pg: PgCluster, db: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.url(db), autocommit=True) as conn:
        return conn.execute(query).fetchall()


def schema(pg: PgCluster, db: str) -> list[tuple[Any, ...]]:
    return rows(
        pg,
        db,
        "select table_name, column_name, data_type from information_schema.columns "
        "where table_schema = 'public' and table_name <> '_prisma_migrations' order by 1, 2",
    )


def catalog_runs(cli: Cli) -> list[Any]:
    """The catalog's migration runs, read from a copy (opening the live file as root could leave
    root's SQLite side files in the state directory of a command that runs as postgres)."""
    state = Path(cli.env["BACKUPD_STATE_DIR"])
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("catalog.sqlite", "catalog.sqlite-wal"):
            if (state / name).exists():
                shutil.copy(state / name, Path(tmp) / name)
        catalog = open_catalog(f"sqlite:///{tmp}/catalog.sqlite")
        try:
            return catalog.list_migration_runs(repository_scope(cli.env))
        finally:
            catalog.close()


def test_pending_migrations_are_applied_with_the_safety_net_recorded(
    setup: tuple[Cli, Path], pg: PgCluster, pg_db: str
) -> None:
    cli, migrations = setup
    add(migrations, "20261101000000_init", INIT)
    first = migrate(cli, migrations)
    assert first.returncode == 0, first
    out = first.json()
    assert out["status"] == "applied"
    assert out["applied"] == ["20261101000000_init"]
    assert out["backup_id"] and out["restore_point"] == f"pre-migrate-{out['id']}"
    names = {c["name"]: c["status"] for c in out["checks"]}
    for name in ("database", "storage", "no_backup_running", "no_prisma_migration", "no_old_transactions",
                 "migrate_check", "migrations_recorded", "schema_matches_migrations"):  # fmt: skip
        assert names.get(name) == "passed", (name, out["checks"])
    assert set(out) >= {
        "status",
        "checks",
        "restore_point",
        "backup_id",
        "applied",
        "duration_seconds",
        "rollback",
    }

    add(migrations, "20261102000000_summary", ADD_COLUMN)
    second = migrate(cli, migrations, verb=("run",)).json()
    assert second["status"] == "applied" and second["applied"] == ["20261102000000_summary"]
    assert ("Post", "summary", "text") in schema(pg, pg_db)
    again = migrate(cli, migrations)
    assert again.returncode == 0 and again.json()["status"] == "noop"

    runs = catalog_runs(cli)
    assert [r.status for r in runs] == ["applied", "applied", "noop"]
    run = runs[1]
    assert run.backup_id == second["backup_id"] and run.actor.endswith(os.uname().nodename)
    assert run.details["migrations"][0]["name"] == "20261102000000_summary"
    assert len(run.details["migrations"][0]["checksum"]) == 64
    assert "summary" in run.details["schema_diff"] and "summary" not in (run.schema_before or "")
    assert "role_settings" not in run.details
    listed = cli.run("list", "--json", check=True).json()
    assert second["backup_id"] in [b["id"] for b in listed]
    # The role settings in force during the migration were put back.
    settings = (
        "select count(*) from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase "
        "where d.datname = current_database()"
    )
    assert rows(pg, pg_db, settings) == [(0,)]
    history = cli.run("migrate", "history", "--json", check=True).json()
    assert [h["status"] for h in history] == ["applied", "applied", "noop"]
    assert cli.run("migrate", "list", "--json", check=True).json() == history
    assert history[1]["actor"] == run.actor and "schema_before" not in history[1]


def test_an_edited_applied_migration_is_reported_modified_and_refused(
    setup: tuple[Cli, Path], pg: PgCluster, pg_db: str
) -> None:
    cli, migrations = setup
    add(migrations, "20261101000000_init", INIT)
    assert migrate(cli, migrations).returncode == 0
    (migrations / "20261101000000_init" / "migration.sql").write_text(INIT + "\n-- edited\n")
    add(migrations, "20261102000000_tag", ADD_TABLE)
    refused = migrate(cli, migrations)
    assert refused.returncode == 4, refused
    out = refused.json()
    assert out["status"] == "refused" and out["applied"] == [] and out["backup_id"] is None
    check = next(c for c in out["checks"] if c["name"] == "migrate_check")
    assert (
        check["status"] == "failed"
        and "modified" in check["detail"]
        and "20261101000000_init" in check["detail"]
    )
    assert "Tag" not in {t for t, *_ in schema(pg, pg_db)}


def test_a_risky_statement_needs_allow_risky(setup: tuple[Cli, Path], pg: PgCluster, pg_db: str) -> None:
    cli, migrations = setup
    add(migrations, "20261101000000_init", INIT)
    assert migrate(cli, migrations).returncode == 0
    add(migrations, "20261102000000_drop", 'ALTER TABLE "Post" DROP COLUMN views;')
    refused = migrate(cli, migrations)
    assert refused.returncode == 4 and "drop_column" in refused.stdout, refused
    assert ("Post", "views", "integer") in schema(pg, pg_db)
    allowed = migrate(cli, migrations, "--allow-risky")
    assert allowed.returncode == 0 and allowed.json()["status"] == "applied", allowed
    assert ("Post", "views", "integer") not in schema(pg, pg_db)


def test_a_failing_migration_is_rolled_back_with_down_sql(
    setup: tuple[Cli, Path], pg: PgCluster, pg_db: str
) -> None:
    cli, migrations = setup
    add(migrations, "20261101000000_init", INIT)
    assert migrate(cli, migrations).returncode == 0
    before = schema(pg, pg_db)
    add(migrations, "20261102000000_summary", ADD_COLUMN, down='ALTER TABLE "Post" DROP COLUMN summary;')
    add(migrations, "20261103000000_tag", ADD_TABLE, down='DROP TABLE "Tag";')
    add(migrations, "20261104000000_broken", BROKEN)
    failed = migrate(cli, migrations, "--allow-risky")
    assert failed.returncode == 1, failed
    out = failed.json()
    assert out["status"] == "rolled_back", out
    assert out["rollback"]["status"] == "rolled_back" and out["rollback"]["schema_equals_before"] is True
    assert out["rollback"]["ran"] == ["20261103000000_tag/down.sql", "20261102000000_summary/down.sql"]
    assert schema(pg, pg_db) == before
    state = rows(pg, pg_db, 'select migration_name, finished_at is not null, rolled_back_at is not null '
                 'from "_prisma_migrations" order by started_at')  # fmt: skip
    assert state == [
        ("20261101000000_init", True, False),
        ("20261102000000_summary", True, True),
        ("20261103000000_tag", True, True),
        ("20261104000000_broken", False, True),
    ]
    # Prisma sees them as pending again: fixing the broken one lets the next deploy apply all three.
    (migrations / "20261104000000_broken" / "migration.sql").write_text('CREATE TABLE "Fixed" (id int);')
    fixed = migrate(cli, migrations, "--allow-risky")
    assert fixed.returncode == 0, fixed
    assert fixed.json()["applied"] == [
        "20261102000000_summary",
        "20261103000000_tag",
        "20261104000000_broken",
    ]


def test_without_down_sql_the_recovery_plan_works_when_followed(
    setup: tuple[Cli, Path], pg: PgCluster, pg_db: str
) -> None:
    cli, migrations = setup
    add(migrations, "20261101000000_init", INIT)
    assert migrate(cli, migrations).returncode == 0
    pg.execute("""INSERT INTO "Post" (title) SELECT 'post ' || i FROM generate_series(1, 300) i""", pg_db)
    before_schema = schema(pg, pg_db)
    before_rows = rows(pg, pg_db, 'select id, title, views from "Post" order by id')
    add(migrations, "20261102000000_tag", ADD_TABLE)  # no down.sql
    add(migrations, "20261103000000_broken", BROKEN)
    failed = migrate(cli, migrations)
    assert failed.returncode == 1, failed
    out = failed.json()
    assert out["status"] == "failed" and out["rollback"]["status"] == "impossible"
    plan = out["recovery_plan"]
    assert plan["backup_id"] == out["backup_id"] and plan["restore_point"] == out["restore_point"]
    assert plan["would_lose"]["since"] is not None
    command = plan["commands"][0].split()
    assert command[:4] == ["contentflow-backupd", "migrate", "rollback", "--to-restore-point"]
    assert ("Tag", "id", "integer") in schema(pg, pg_db)

    dry = cli.run(*command[1:-1])  # without --confirm: nothing happens
    assert dry.returncode == 0 and "--confirm" in dry.stdout, dry
    assert ("Tag", "id", "integer") in schema(pg, pg_db)
    done = cli.run(*command[1:], "--json")
    assert done.returncode == 0, done
    assert done.json()["schema_equals_before"] is True
    assert schema(pg, pg_db) == before_schema
    assert rows(pg, pg_db, 'select id, title, views from "Post" order by id') == before_rows
    assert rows(
        pg, pg_db, 'select migration_name from "_prisma_migrations" where rolled_back_at is null'
    ) == [("20261101000000_init",)]


def test_a_migration_blocked_by_a_long_transaction_fails_within_lock_timeout(
    setup: tuple[Cli, Path], pg: PgCluster, pg_db: str
) -> None:
    cli, migrations = setup
    add(migrations, "20261101000000_init", INIT)
    assert migrate(cli, migrations).returncode == 0
    before = schema(pg, pg_db)
    add(migrations, "20261102000000_summary", ADD_COLUMN)
    # A reader holds ACCESS SHARE on "Post" in a transaction younger than max_transaction_age.
    holder = psycopg.connect(pg.url(pg_db))
    holder.execute('SELECT count(*) FROM "Post"')
    try:
        result = migrate(cli, migrations)  # returns while the reader still holds its lock
    finally:
        holder.rollback()
        holder.close()
    assert result.returncode == 1, result
    out = result.json()
    assert out["status"] == "rolled_back", out
    assert "lock timeout" in "\n".join(out["command"]["output_tail"])
    assert schema(pg, pg_db) == before
    assert '"migration_output"' in result.stderr and '"migration_settings_restored"' in result.stderr


def test_a_dry_run_leaves_production_untouched(setup: tuple[Cli, Path], pg: PgCluster, pg_db: str) -> None:
    cli, migrations = setup
    add(migrations, "20261101000000_init", INIT)
    assert migrate(cli, migrations).returncode == 0
    pg.execute("""INSERT INTO "Post" (title) SELECT 'post ' || i FROM generate_series(1, 500) i""", pg_db)
    cli.run("backup", "--kind", "full", check=True)
    add(migrations, "20261102000000_summary", ADD_COLUMN)
    add(
        migrations,
        "20261103000000_fill",
        """UPDATE "Post" SET summary = left(title, 3) WHERE summary IS NULL;""",
    )
    fingerprint = _fingerprint(pg, pg_db)
    backups = cli.run("list", "--json", check=True).json()
    dry = migrate(cli, migrations, "--dry-run")
    assert dry.returncode == 0, str(dry)
    out = dry.json()
    assert out["dry_run"] is True and out["status"] == "applied"
    assert out["applied"] == ["20261102000000_summary", "20261103000000_fill"]
    assert out["backup_id"] is None and out["restore_point"] is None
    assert {c["name"]: c["status"] for c in out["checks"]}["dry_run_restore"] == "passed"
    assert out["command"]["duration_seconds"] >= 0 and "lock_waits" in str(out["command"]["progress"])
    assert _fingerprint(pg, pg_db) == fingerprint
    assert cli.run("list", "--json", check=True).json() == backups
    assert catalog_runs(cli)[-1].dry_run is True


def _fingerprint(pg: PgCluster, db: str) -> Any:
    dump = subprocess.run(  # the whole database, schema and data, as pg_dump writes it
        [str(pg.bin / "pg_dump"), "--no-sync", "-d", pg.url(db)], capture_output=True, text=True, check=True
    ).stdout
    return (
        [line for line in dump.splitlines() if not line.startswith("\\")],  # \restrict has a random key
        schema(pg, db),
        rows(pg, db, 'select * from "Post" order by id'),
        rows(pg, db, 'select id, checksum, finished_at, rolled_back_at from "_prisma_migrations" order by 1'),
        rows(
            pg,
            db,
            "select s.setconfig from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase "
            "where d.datname = current_database()",
        ),
    )


def test_usage_errors_exit_2(setup: tuple[Cli, Path]) -> None:
    cli, migrations = setup
    for verb in ((), ("run",)):
        no_command = cli.run("migrate", *verb, "--migrations-dir", str(migrations))
        assert no_command.returncode == 2 and "after `--`" in no_command.stderr
        no_dir = cli.run("migrate", *verb, "--", "true")
        assert no_dir.returncode == 2 and "--migrations-dir" in no_dir.stderr
    unknown = cli.run("migrate", "rollback", "--to-restore-point", "pre-migrate-nope", "--confirm")
    assert unknown.returncode == 2 and "pre-migrate-nope" in unknown.stderr


def test_the_users_checks_decide_and_a_failed_one_rolls_back(
    setup: tuple[Cli, Path], pg: PgCluster, pg_db: str
) -> None:
    cli, migrations = setup
    checks = migrations.parent / "checks.sql"
    checks.write_text('SELECT count(*) = 0 FROM "Post";\nSELECT to_regclass(\'"Tag"\') IS NULL;\n')
    env = {"BACKUPD_MIGRATE__CHECKS": str(checks)}
    add(migrations, "20261101000000_init", INIT)
    ok = migrate(cli, migrations, env=env)
    assert ok.returncode == 0, str(ok)
    names = {c["name"]: c["status"] for c in ok.json()["checks"]}
    assert names["migrate_check:1"] == names["migrate_check:2"] == "passed"
    add(migrations, "20261102000000_tag", ADD_TABLE, down='DROP TABLE "Tag";')
    failed = migrate(cli, migrations, env=env)
    out = failed.json()
    assert failed.returncode == 1 and out["status"] == "rolled_back", str(failed)
    assert {c["name"]: c["status"] for c in out["checks"]}["migrate_check:2"] == "failed"
    assert "Tag" not in {t for t, *_ in schema(pg, pg_db)}


def _bin_without_initdb(pg: PgCluster) -> Path:
    """Server binaries of the right major version, without ``initdb``: a real reason why the
    scratch PostgreSQL of ``schema_matches_migrations`` cannot be made."""
    where = Path(tempfile.mkdtemp(prefix="backupd-no-initdb-"))
    os.chmod(where, 0o755)
    for name in ("postgres", "pg_ctl"):
        (where / name).symlink_to(pg.bin / name)
    return where


def test_a_check_that_cannot_run_keeps_the_migration_unless_strict_checks(
    setup: tuple[Cli, Path], pg: PgCluster, pg_db: str
) -> None:
    cli, migrations = setup
    add(migrations, "20261101000000_init", INIT)
    assert migrate(cli, migrations).returncode == 0
    no_initdb = _bin_without_initdb(pg)
    env = {"BACKUPD_DRILL__PG_BIN": str(no_initdb)}
    try:
        add(migrations, "20261102000000_tag", ADD_TABLE, down='DROP TABLE "Tag";')
        kept = migrate(cli, migrations, env=env)
        out = kept.json()
        assert kept.returncode == 3 and out["status"] == "unverified", str(kept)
        assert out["applied"] == ["20261102000000_tag"] and out["rollback"] is None
        assert "Tag" in {t for t, *_ in schema(pg, pg_db)}
        check = {c["name"]: c for c in out["checks"]}["schema_matches_migrations"]
        assert check["status"] == "not_run", check
        assert f"initdb was not found in {no_initdb}" in check["detail"]
        assert "BACKUPD_DRILL__PG_BIN" in check["detail"] and "--strict-checks" in check["detail"]
        assert "could not run" in out["error"] and "schema_matches_migrations" in out["error"]
        assert "role_settings" not in catalog_runs(cli)[-1].details
        history = cli.run("migrate", "history", "--json", check=True).json()
        assert history[-1]["status"] == "unverified"
        assert {c["name"]: c["status"] for c in history[-1]["details"]["checks"]}[
            "schema_matches_migrations"
        ] == "not_run"
        text = cli.run("migrate", "history", check=True).stdout
        assert "unverified" in text and "could not run" in text

        add(migrations, "20261103000000_summary", ADD_COLUMN, down='ALTER TABLE "Post" DROP COLUMN summary;')
        strict = migrate(cli, migrations, "--strict-checks", env=env)
        out = strict.json()
        assert strict.returncode == 1 and out["status"] == "rolled_back", str(strict)
        assert {c["name"]: c["status"] for c in out["checks"]}["schema_matches_migrations"] == "not_run"
        assert ("Post", "summary", "text") not in schema(pg, pg_db)
        assert [r.status for r in catalog_runs(cli)] == ["applied", "unverified", "rolled_back"]
        # Printed for a person: the check is marked as not run, with its reason.
        again = cli.run(
            "migrate", "--migrations-dir", str(migrations), "--", *PRISMA, str(migrations), env=env
        )
        assert again.returncode == 3, str(again)
        assert "[NOT RUN] schema_matches_migrations: could not run" in again.stdout
    finally:
        shutil.rmtree(no_initdb, ignore_errors=True)
