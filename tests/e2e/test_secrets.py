"""Canary secrets: a database password and a passphrase that must never leak.

They must not appear in any output or log line, in any child process's arguments or
environment (pg_dump and pg_restore get the password through a private passfile), in the
catalog, or in any repository object.
"""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest

from tests.e2e.helpers import checksums, repo_files, seed
from tests.support.cli import Cli
from tests.support.pg import PgCluster

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
