"""Immutable backups: S3 Object Lock on moto's server over HTTP (issue 7, "Immutable backups").

moto enforces Object Lock on buckets created with ``ObjectLockEnabledForBucket``: deleting a
locked version answers ``AccessDenied``; a delete without a version id only adds a delete marker
and a put over a key adds a version, as on AWS.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError

from contentflow_backupd.errors import ObjectLocked
from contentflow_backupd.storage.base import put_bytes
from contentflow_backupd.storage.s3 import S3Storage
from tests.e2e.helpers import checksums, seed
from tests.support.cli import Cli
from tests.support.moto_server import AWS_ENV_TO_CLEAR, aws_test_env, s3_client
from tests.support.pg import PgCluster

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = [pytest.mark.pg, pytest.mark.s3]

PREFIX = "backups/prod"


@pytest.fixture
def locked_cli(
    cli: Cli, moto_s3: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Cli, str, S3Client]]:
    """``cli`` on a fresh bucket with Object Lock enabled, writing in governance mode; this
    process gets the same (fake) credentials, for the attacker's storage."""
    for name in AWS_ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_test_env().items():
        monkeypatch.setenv(name, value)
    client = s3_client(moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"lock-{time.time_ns()}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    cli.env.update(aws_test_env())
    cli.env.update(
        {
            "BACKUPD_REPOSITORY": f"s3://{bucket}/{PREFIX}",
            "BACKUPD_S3__ENDPOINT_URL": moto_s3,
            "BACKUPD_S3__REGION": "us-east-1",
            "BACKUPD_S3__FORCE_PATH_STYLE": "true",
            "BACKUPD_S3__OBJECT_LOCK": "governance",
            "BACKUPD_S3__OBJECT_LOCK_MARGIN": "1d",
        }
    )
    yield cli, bucket, client  # locked objects cannot be removed: the bucket stays on moto


def _attacker(moto_s3: str, bucket: str) -> S3Storage:
    """The daemon's own storage driver and credentials, in the hands of an attacker."""
    return S3Storage(bucket, PREFIX, endpoint_url=moto_s3, region="us-east-1", force_path_style=True)


def _keys(client: S3Client, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{PREFIX}/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_objects_are_written_locked_until_retention_plus_margin(
    locked_cli: tuple[Cli, str, S3Client],
) -> None:
    cli, bucket, client = locked_cli
    cli.run("init", check=True)
    before = datetime.now(UTC)
    full = cli.ok_json("backup", "--kind", "full")
    after = datetime.now(UTC)
    keys = _keys(client, bucket)
    manifest = f"{PREFIX}/main/backups/{full['id']}.json"
    chunks = [k for k in keys if "/main/chunks/" in k]
    assert manifest in keys and chunks
    for key in [manifest, *chunks]:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE", key
        until = head["ObjectLockRetainUntilDate"]
        # retention.full (30d default) + margin (1d): for the full's chunks and its manifest
        assert before + timedelta(days=31) - timedelta(seconds=60) <= until, key
        assert until <= after + timedelta(days=31, seconds=1), key
    for key in (f"{PREFIX}/repo.json", *[k for k in keys if "/keys/" in k]):
        assert "ObjectLockMode" not in client.head_object(Bucket=bucket, Key=key), key


def test_ransomware_with_the_daemons_credentials_cannot_destroy_a_backup(
    locked_cli: tuple[Cli, str, S3Client], pg: PgCluster, pg_db: str, moto_s3: str
) -> None:
    cli, bucket, client = locked_cli
    seed(pg, pg_db, size_mb=4)
    cli.run("init", check=True)
    full = cli.ok_json("backup", "--kind", "full")
    want = checksums(pg, pg_db)
    time.sleep(1.1)  # S3 times have second resolution here: the attack must come after
    before_attack = datetime.now(UTC)
    time.sleep(1.1)

    attacker = _attacker(moto_s3, bucket)
    manifest = f"main/backups/{full['id']}.json"
    chunks = [k.removeprefix(f"{PREFIX}/") for k in _keys(client, bucket) if "/main/chunks/" in k]
    # 1. Permanent deletion of every version: refused by the lock.
    locked = S3Storage(
        bucket,
        PREFIX,
        endpoint_url=moto_s3,
        region="us-east-1",
        force_path_style=True,
        object_lock="GOVERNANCE",
        retain_until=lambda _key: None,
    )
    for key in [manifest, *chunks]:
        with pytest.raises(ObjectLocked):
            locked.delete(key)
    for key in [manifest, chunks[0]]:
        version = client.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}/{key}")["Versions"][0]
        with pytest.raises(ClientError) as denied:
            client.delete_object(Bucket=bucket, Key=f"{PREFIX}/{key}", VersionId=version["VersionId"])
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
    # 2. What S3 lets through: overwrite (a new version) and delete markers (hide the key).
    put_bytes(attacker, manifest, b"encrypted by ransomware")
    for key in chunks[:3]:
        put_bytes(attacker, key, b"encrypted by ransomware")
    for key in chunks[3:]:
        attacker.delete(key)
    visible = [k.removeprefix(f"{PREFIX}/") for k in _keys(client, bucket) if "/main/chunks/" in k]
    assert visible == chunks[:3]
    broken = cli.run("restore", full["id"], "--to-database", pg.url("lock_broken_" + pg_db), "--create")
    assert broken.returncode != 0
    pg.drop_database("lock_broken_" + pg_db)

    # 3. The locked versions are intact: a read-only view of the bucket before the attack restores.
    cli.env["BACKUPD_S3__AS_OF"] = before_attack.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert full["id"] in [b["id"] for b in cli.ok_json("list")]
    target = "lock_restored_" + pg_db
    cli.run("restore", full["id"], "--to-database", pg.url(target), "--create", check=True)
    assert checksums(pg, target) == want
    pg.drop_database(target)
    refused = cli.run("backup", "--kind", "full")
    assert refused.returncode != 0 and "AS_OF" in refused.stderr


def test_retention_waits_for_the_lock_and_does_not_loop_on_a_refusal(
    locked_cli: tuple[Cli, str, S3Client], pg: PgCluster, pg_db: str
) -> None:
    cli, bucket, client = locked_cli
    seed(pg, pg_db, size_mb=1)
    cli.run("init", check=True)
    old = cli.ok_json("backup", "--kind", "full")
    new = cli.ok_json("backup", "--kind", "full")
    time.sleep(1.1)
    cli.env["BACKUPD_RETENTION__FULL"] = "1s"
    plan = cli.ok_json("expire", "--json")
    decision = {b["id"]: b for b in plan["backups"]}[old["id"]]
    assert decision["action"] == "keep" and "object lock until" in decision["reason"]

    # Shortened margin: the plan expects the lock to be over, S3 refuses. Recorded, not retried,
    # the backup stays, and the next run plans (and is refused) again.
    cli.env["BACKUPD_S3__OBJECT_LOCK_MARGIN"] = "1s"
    for _ in range(2):
        applied = cli.ok_json("expire", "--confirm", "--json")
        assert {b["id"]: b["action"] for b in applied["backups"]}[old["id"]] == "delete"
        assert applied["result"]["refused_objects"] >= 1
        assert f"main/backups/{old['id']}.json" in applied["result"]["refused_keys"]
        assert applied["result"]["deleted_backups"]["full"] == 0
        assert f"{PREFIX}/main/backups/{old['id']}.json" in _keys(client, bucket)
        listed = [b["id"] for b in cli.ok_json("list")]
        assert old["id"] in listed and new["id"] in listed


def test_check_reports_whether_the_bucket_supports_the_mode(
    locked_cli: tuple[Cli, str, S3Client],
) -> None:
    cli, _bucket, client = locked_cli
    cli.run("init", check=True)
    report = cli.run("check", "--json")
    lock = [i for i in report.json()["storage"] if "lock" in i["name"]]
    assert lock and all(i["ok"] for i in lock), report.stdout
    # The same setting on a bucket without Object Lock: check names it and fails.
    plain = f"plain-{time.time_ns()}"
    client.create_bucket(Bucket=plain)
    refused = cli.run("check", "--json", env={"BACKUPD_REPOSITORY": f"s3://{plain}/{PREFIX}"})
    assert refused.returncode == 1, str(refused)
    lock = [i for i in refused.json()["storage"] if "lock" in i["name"]]
    assert lock and not lock[0]["ok"] and plain in lock[0]["detail"], refused.stdout
