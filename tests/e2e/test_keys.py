"""Keys end to end through the installed command: list, add, remove refusals, rotation without
rewriting any object, retirement after retention, and AWS KMS (moto's server over HTTP)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import boto3
import pytest

from contentflow_backupd.repository.crypto import envelope_key_id
from tests.conftest import PASSPHRASE
from tests.e2e.helpers import change, checksums, repo_files, seed
from tests.support.cli import Cli
from tests.support.moto_server import REGION, aws_test_env
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg


def _hashes(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in repo_files(repo)}


def _data_key_of(path: Path) -> str | None:
    return envelope_key_id(path.read_bytes()[:64])


def _with_secret(cli: Cli, **secret: str) -> Cli:
    """``cli`` with another encryption secret (``BACKUPD_ENCRYPTION__<NAME>``) instead of its own."""
    env = {k: v for k, v in cli.env.items() if not k.startswith("BACKUPD_ENCRYPTION__")}
    env.update({f"BACKUPD_ENCRYPTION__{k.upper()}": v for k, v in secret.items()})
    return Cli(env=env)


def test_list_add_remove_refusals_and_rotation_without_rewriting(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    seed(pg, pg_db, size_mb=2)
    init = cli.ok_json("init")
    full = cli.ok_json("backup", "--kind", "full")
    want_full = checksums(pg, pg_db)

    listed = cli.ok_json("keys", "list")
    (kek,) = listed["key_encryption_keys"]
    assert kek["id"] == init["key_id"] and kek["kind"] == "passphrase" and kek["last_used"]
    (dk,) = listed["data_keys"]
    assert dk["active"] is True and dk["objects"] == len(
        [p for p in repo_files(repo) if _data_key_of(p) == dk["id"]]
    )

    keyfile = tmp_path / "recovery.key"
    keyfile.write_bytes(os.urandom(32))
    added = cli.ok_json("keys", "add", "--key-file", str(keyfile))
    assert {k["id"] for k in cli.ok_json("keys", "list")["key_encryption_keys"]} == {kek["id"], added["id"]}
    refused = cli.run("keys", "remove", kek["id"])
    assert refused.returncode == 1 and kek["id"] in refused.stderr and "opened" in refused.stderr
    recovery = _with_secret(cli, key_file=str(keyfile))
    assert recovery.run("keys", "list").returncode == 0  # the recovery key opens it

    before = _hashes(repo)
    rotated = cli.ok_json("keys", "rotate")
    assert rotated["previous"] == dk["id"] and rotated["active"] != dk["id"] and rotated["retired"] == []
    after = _hashes(repo)
    unchanged = {k: v for k, v in before.items() if not k.startswith("keys/")}
    assert {k: after.get(k) for k in unchanged} == unchanged  # no object rewritten

    change(pg, pg_db)
    incr = cli.ok_json("backup", "--kind", "incremental")
    assert _data_key_of(repo / "main" / "backups" / f"{incr['id']}.json") == rotated["active"]
    assert _data_key_of(repo / "main" / "backups" / f"{full['id']}.json") == dk["id"]
    data = {d["id"]: d for d in recovery.ok_json("keys", "list")["data_keys"]}
    assert data[rotated["active"]]["active"] and data[dk["id"]]["objects"] > 0
    for backup, want in ((full, want_full), (incr, checksums(pg, pg_db))):
        target = f"keys_{backup['kind']}_{pg_db}"
        recovery.run("restore", backup["id"], "--to-database", pg.url(target), "--create", check=True)
        assert checksums(pg, target) == want
        pg.drop_database(target)

    recovery.run("keys", "remove", kek["id"], check=True)
    last = recovery.run("keys", "remove", added["id"])
    assert last.returncode == 1 and "last key" in last.stderr
    gone = cli.run("verify", "--all")  # the passphrase no longer opens the repository
    assert gone.returncode == 1 and added["id"] in gone.stderr and "keyfile" in gone.stderr


def test_old_data_key_is_retired_once_retention_deleted_its_last_object(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    seed(pg, pg_db, size_mb=1)
    cli.run("init", check=True)
    cli.run("backup", "--kind", "full", check=True)
    first = cli.ok_json("keys", "rotate", "--retire-grace", "0s")
    assert first["retired"] == []  # the first full backup still needs the old key
    cli.env.update(
        {
            "BACKUPD_RETENTION__FULL": "2s",
            "BACKUPD_RETENTION__INCREMENTAL": "2s",
            "BACKUPD_RETENTION__GC_GRACE": "1s",
        }
    )
    time.sleep(2.5)
    change(pg, pg_db)
    new_full = cli.ok_json("backup", "--kind", "full")
    time.sleep(1.5)
    cli.run("expire", "--confirm", check=True)
    data = {d["id"]: d for d in cli.ok_json("keys", "list")["data_keys"]}
    assert first["previous"] not in data and list(data) == [first["active"]]
    assert all(_data_key_of(p) in (None, first["active"]) for p in repo_files(repo))
    events = [e for e in cli.ok_json("audit") if e["action"].startswith("key_")]
    retire = [e for e in events if e["action"] == "key_retire"]
    assert retire and first["previous"] in retire[-1]["objects"]
    target = f"keys_retired_{pg_db}"
    cli.run("restore", new_full["id"], "--to-database", pg.url(target), "--create", check=True)
    assert checksums(pg, target) == checksums(pg, pg_db)
    pg.drop_database(target)


@pytest.fixture
def kms(moto_s3: str) -> tuple[str, str, str]:
    """Two KMS keys on moto's server: (endpoint, first ARN, second ARN)."""
    client = boto3.session.Session().client(
        "kms",
        endpoint_url=moto_s3,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    arns = [client.create_key(Description=f"backupd test {i}")["KeyMetadata"]["Arn"] for i in range(2)]
    return moto_s3, arns[0], arns[1]


def test_kms_key_inits_opens_and_is_added_as_another_kek(
    cli: Cli, pg: PgCluster, pg_db: str, kms: tuple[str, str, str]
) -> None:
    endpoint, arn, other = kms
    cli.env.update(aws_test_env())
    cli.env["BACKUPD_ENCRYPTION__KMS_ENDPOINT_URL"] = endpoint
    by_kms = _with_secret(cli, kms_key_id=arn, kms_endpoint_url=endpoint)
    seed(pg, pg_db, size_mb=1)
    init = by_kms.ok_json("init")
    backup = by_kms.ok_json("backup", "--kind", "full")
    (kek,) = by_kms.ok_json("keys", "list")["key_encryption_keys"]
    assert kek["kind"] == "kms" and kek["kms_key_id"] == arn and kek["id"] == init["key_id"]

    by_other = _with_secret(cli, kms_key_id=other, kms_endpoint_url=endpoint)
    wrong = by_other.run("verify", "--all")
    assert wrong.returncode == 1 and init["key_id"] in wrong.stderr and other in wrong.stderr
    no_key = _with_secret(cli).run("verify", "--all")
    assert no_key.returncode == 2 and init["key_id"] in no_key.stderr

    added = by_kms.ok_json("keys", "add", "--kms-key-id", other)
    pw = Path(cli.env["BACKUPD_STATE_DIR"]).parent / "pass"
    pw.write_text(PASSPHRASE + "\n")
    by_pass = by_kms.ok_json("keys", "add", "--passphrase-file", str(pw))
    kinds = {k["id"]: k["kind"] for k in by_kms.ok_json("keys", "list")["key_encryption_keys"]}
    assert kinds == {kek["id"]: "kms", added["id"]: "kms", by_pass["id"]: "passphrase"}
    by_other.run("verify", "--all", check=True)
    target = f"kms_{pg_db}"
    cli.run("restore", backup["id"], "--to-database", pg.url(target), "--create", check=True)
    assert checksums(pg, target) == checksums(pg, pg_db)
    pg.drop_database(target)
