"""Canary secrets: a database password, a passphrase, a webhook token and an S3 secret key that
must never leak.

They must not appear in any output or log line, in any child process's arguments or
environment (pg_dump and pg_restore get the password through a private passfile), in the
catalog, or in any repository object.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import checksums, repo_files, seed
from tests.support.cli import Cli
from tests.support.moto_server import (
    AWS_ENV_TO_CLEAR,
    REGION,
    create_bucket,
    enforce_auth,
    running_moto_server,
    s3_client,
)
from tests.support.pg import PgCluster
from tests.support.webhook import webhook_server as serve_webhook

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.pg

WRAPPER = """#!/bin/sh
log="{log}"
echo "ARGV $0 $*" >> "$log"
env | sed 's/^/ENV /' >> "$log"
if [ -n "$PGPASSFILE" ]; then
  echo "PASSFILE_MODE $(stat -c %a "$PGPASSFILE")" >> "$log"
fi
exec "{real}" "$@"
"""


def _wrap_client_tools(pg: PgCluster, tmp: Path) -> tuple[Path, Path]:
    bindir = tmp / "wrapped-bin"
    bindir.mkdir()
    log = tmp / "children.log"
    for tool in ("pg_dump", "pg_restore"):
        path = bindir / tool
        path.write_text(WRAPPER.format(log=log, real=pg.bin / tool))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bindir, log


def test_canary_secrets_never_leak(cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path) -> None:
    db_password = "CANARYDB" + secrets.token_hex(8)
    passphrase = "CANARYPASS" + secrets.token_hex(8)
    role = "canary_" + secrets.token_hex(3)
    pg.execute(f"create role {role} login superuser password '{db_password}'")
    seed(pg, pg_db, size_mb=2)
    bindir, child_log = _wrap_client_tools(pg, tmp_path)
    cli.env.update(
        {
            "BACKUPD_DATABASE_URL": pg.url(pg_db, user=role, password=db_password),
            "BACKUPD_ENCRYPTION__PASSPHRASE": passphrase,
            "BACKUPD_PG_BIN": str(bindir),
            "BACKUPD_LOG__LEVEL": "debug",
        }
    )
    target = "canary_target_" + pg_db
    cli.run("init", check=True)
    cli.run("backup", "--kind", "full", check=True)
    cli.run("backup", "--kind", "incremental", "--json", check=True)
    cli.run("list", check=True)
    cli.run("verify", "--all", check=True)
    cli.run("config", "show", check=True)
    cli.run(
        "restore",
        "latest",
        "--to-database",
        pg.url(target, user=role, password=db_password),
        "--create",
        check=True,
    )
    # failures print and log errors: they must stay clean too
    cli.run(
        "backup",
        "--kind",
        "full",
        env={"BACKUPD_DATABASE_URL": pg.url("no_such_db", user=role, password=db_password)},
    )
    cli.run("restore", "latest", "--to-database", pg.url(target, user=role, password=db_password))
    cli.run("verify", "--all", env={"BACKUPD_ENCRYPTION__PASSPHRASE": passphrase + "x"})
    assert checksums(pg, target) == checksums(pg, pg_db)

    canaries = [db_password, passphrase]
    for result in cli.history:
        for canary in canaries:
            assert canary not in result.stdout, result
            assert canary not in result.stderr, result

    children = child_log.read_text()
    assert "ARGV" in children and "pg_restore" in children
    for canary in canaries:
        assert canary not in children
    assert "PASSFILE_MODE 600" in children

    state = tmp_path / "state"
    catalog_files = list(state.rglob("catalog.sqlite*"))
    assert catalog_files
    for path in catalog_files + repo_files(tmp_path / "repo"):
        data = path.read_bytes()
        for canary in canaries:
            assert canary.encode() not in data, path
    leftovers = [p for p in (state / "tmp").rglob("*") if p.is_file()] if (state / "tmp").exists() else []
    assert leftovers == [], "passfiles must be removed"
    pg.drop_database(target)
    pg.execute(f"drop owned by {role}; drop role {role}")


# -- every secret from a credentials directory, S3 with IAM, a webhook, a migration -------------


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback webhook whose URL carries a canary token; yields (url, request paths)."""
    token = "CANARYHOOK" + secrets.token_hex(8)
    with serve_webhook(f"/hook/{token}") as (url, received):
        yield url, received.paths


@pytest.mark.s3
def test_canaries_from_a_credentials_directory_never_leak(
    pg: PgCluster,
    pg_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    webhook_server: tuple[str, list[str]],
) -> None:
    webhook_url, hook_paths = webhook_server
    db_password = "CANARYDB" + secrets.token_hex(8)
    passphrase = "CANARYPASS" + secrets.token_hex(8)
    role = "canary_" + secrets.token_hex(3)
    pg.execute(f"create role {role} login superuser password '{db_password}'")
    bindir, child_log = _wrap_client_tools(pg, tmp_path)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", *AWS_ENV_TO_CLEAR):
        monkeypatch.delenv(name, raising=False)

    with running_moto_server() as endpoint:
        bucket = create_bucket(s3_client(endpoint, aws_access_key_id="x", aws_secret_access_key="x"))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "setup")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "setup")
        key_id, s3_secret = enforce_auth(endpoint)  # moto makes up the secret key: our S3 canary
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # the commands use the file only
            monkeypatch.delenv(name)
        creds = tmp_path / "credentials"
        creds.mkdir(mode=0o700)
        (creds / "BACKUPD_DATABASE_URL").write_text(pg.url(pg_db, user=role, password=db_password) + "\n")
        (creds / "BACKUPD_ENCRYPTION__PASSPHRASE").write_text(passphrase + "\n")
        (creds / "BACKUPD_NOTIFY__WEBHOOK_URL").write_text(webhook_url + "\n")
        (creds / "aws-credentials").write_text(
            f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {s3_secret}\n"
        )
        migrations = tmp_path / "migrations"
        # the migration's schema check runs a scratch PostgreSQL as postgres: it must reach the state
        state = Path(tempfile.mkdtemp(prefix="backupd-canary-"))
        os.chmod(state, 0o755)
        (migrations / "20261101000000_init").mkdir(parents=True)
        (migrations / "migration_lock.toml").write_text('provider = "postgresql"\n')
        (migrations / "20261101000000_init" / "migration.sql").write_text(
            # the data comes with the migration: the schema must match the migrations afterwards
            "CREATE TABLE items (id bigint PRIMARY KEY, body text);\n"
            "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 20000) g;\n"
        )
        cli = Cli(
            env={
                # no secret in the environment: only paths
                "CREDENTIALS_DIRECTORY": str(creds),
                "AWS_SHARED_CREDENTIALS_FILE": str(creds / "aws-credentials"),
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true",
                "BACKUPD_REPOSITORY": f"s3://{bucket}/pg",
                "BACKUPD_S3__ENDPOINT_URL": endpoint,
                "BACKUPD_S3__REGION": REGION,
                "BACKUPD_S3__FORCE_PATH_STYLE": "true",
                "BACKUPD_STATE_DIR": str(state),
                "BACKUPD_PG_BIN": str(bindir),
                "BACKUPD_LOG__LEVEL": "debug",
                "BACKUPD_CHUNKING__AVG_SIZE": str(64 * 1024),
                "BACKUPD_MIGRATE__MIN_FREE_BYTES": "1024",
                "PYTHONPATH": str(ROOT),
            }
        )
        shown = cli.run("config", "show", "--json", check=True).json()
        sources = {r["name"]: r["source"] for r in shown}
        assert (
            sources["BACKUPD_ENCRYPTION__PASSPHRASE"] == f"credential {creds}/BACKUPD_ENCRYPTION__PASSPHRASE"
        )
        cli.run("init", check=True)
        prisma = [sys.executable, "-m", "tests.support.fake_prisma", "migrate", "deploy", "--migrations-dir"]
        migrated = cli.run(
            "migrate", "--migrations-dir", str(migrations), "--json", "--", *prisma, str(migrations)
        )  # fmt: skip
        assert migrated.returncode == 0, migrated.stdout[-3000:]
        assert migrated.json()["status"] == "applied" and migrated.json()["backup_id"]
        cli.run("backup", "--kind", "full", check=True)
        pg.execute("update items set body = 'x' where id % 100 = 0", pg_db)
        cli.run("backup", "--kind", "incremental", "--json", check=True)
        cli.run("verify", "--all", check=True)
        cli.run("check", "--json")  # a superuser: a warning, the rest passes
        target = "canary_s3_target_" + pg_db
        cli.run(
            "restore", "latest", "--to-database", pg.url(target, user=role, password=db_password), "--create",
            check=True,
        )  # fmt: skip
        assert checksums(pg, target) == checksums(pg, pg_db)
        # failures log and print errors: they must stay clean too
        cli.run("backup", "--kind", "full", env={"BACKUPD_S3__ENDPOINT_URL": endpoint + "/nowhere"})
        (creds / "BACKUPD_ENCRYPTION__PASSPHRASE").write_text(passphrase + "x\n")
        cli.run("verify", "--all")
        assert hook_paths and all(p.startswith("/hook/CANARYHOOK") for p in hook_paths)  # it was used

        client = s3_client(endpoint, aws_access_key_id=key_id, aws_secret_access_key=s3_secret)
        objects = [
            client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])
        ]
    assert objects
    token = webhook_url.rsplit("/", 1)[1]
    canaries = [db_password, passphrase, token, s3_secret]
    for result in cli.history:
        for canary in canaries:
            assert canary not in result.stdout, result
            assert canary not in result.stderr, result
    children = child_log.read_text()
    assert "ARGV" in children and "pg_restore" in children and "pg_dump" in children
    for canary in canaries:
        assert canary not in children
    catalog = [p.read_bytes() for p in state.rglob("catalog.sqlite*")]
    shutil.rmtree(state, ignore_errors=True)
    assert catalog
    for data in objects + catalog:
        for canary in canaries:
            assert canary.encode() not in data
    pg.drop_database(target)
    pg.execute(f"drop owned by {role}", pg_db)
    pg.execute(f"drop owned by {role}; drop role {role}")
