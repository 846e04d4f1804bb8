"""``check``: a real role on real PostgreSQL, real storage (a directory, moto's S3 with IAM
enforced), reporting what is allowed and exiting 1 naming what is missing."""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.support.cli import Cli, Result
from tests.support.moto_server import REGION, aws_test_env, create_bucket, running_moto_server, s3_client
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg


@pytest.fixture
def role(pg: PgCluster) -> Iterator[tuple[str, str]]:
    name = "chk_" + secrets.token_hex(4)
    password = "pw" + secrets.token_hex(8)
    pg.execute(f"create role {name} login password '{password}'")
    try:
        yield name, password
    finally:
        for db in [r[0] for r in pg.execute("select datname from pg_database where datallowconn")]:
            pg.execute(f"drop owned by {name}", db)
        pg.execute(f"drop role {name}")


def failed(result: Result) -> list[dict[str, Any]]:
    report = result.json()
    return [i for side in ("database", "storage") for i in report[side] if i["required"] and not i["ok"]]


def items(result: Result) -> dict[str, dict[str, Any]]:
    report = result.json()
    return {f"{side}:{i['name']}": i for side in ("database", "storage") for i in report[side]}


def test_logical_role_without_grants_fails_naming_the_grant(
    cli: Cli, pg: PgCluster, pg_db: str, role: tuple[str, str]
) -> None:
    name, password = role
    pg.execute(
        "create table t (id int); create sequence s; create schema hidden; create table hidden.h (x int)",
        pg_db,
    )
    cli.env["BACKUPD_DATABASE_URL"] = pg.url(pg_db, user=name, password=password)

    result = cli.run("check", "--json")
    assert result.returncode == 1, result
    report = result.json()
    assert report["ok"] is False and report["mode"] == "logical"
    found = items(result)
    read = found["database:read all tables"]
    assert read["ok"] is False and read["required"] is True
    assert "public.t" in read["detail"] and "public.s" in read["detail"] and "schema hidden" in read["detail"]
    assert read["fix"] == f"GRANT pg_read_all_data TO {name};"
    assert found["database:not superuser"]["ok"] is True
    # storage works: the scratch object went up, came back, was listed and deleted
    for op in ("put", "get", "list", "delete"):
        assert found[f"storage:{op}"]["ok"] is True, found
    assert list((cli_repo(cli)).rglob("*")) == [] or not any(p.is_file() for p in cli_repo(cli).rglob("*"))
    text = cli.run("check")
    assert text.returncode == 1 and "FAIL read all tables" in text.stdout
    assert f"fix: GRANT pg_read_all_data TO {name};" in text.stdout
    assert "missing: read all tables" in text.stdout

    pg.execute(f"grant pg_read_all_data to {name}")
    result = cli.run("check", "--json")
    assert result.returncode == 0, failed(result)
    assert items(result)["database:read all tables"]["ok"] is True
    # and a backup with that role works
    cli.run("init", check=True)
    cli.run("backup", "--kind", "full", check=True)


def cli_repo(cli: Cli) -> Any:
    from pathlib import Path

    return Path(cli.env["BACKUPD_REPOSITORY"].removeprefix("file://"))


def test_row_level_security_needs_bypassrls(
    cli: Cli, pg: PgCluster, pg_db: str, role: tuple[str, str]
) -> None:
    name, password = role
    pg.execute("create table secretive (id int); alter table secretive enable row level security", pg_db)
    pg.execute(f"grant pg_read_all_data to {name}")
    cli.env["BACKUPD_DATABASE_URL"] = pg.url(pg_db, user=name, password=password)
    result = cli.run("check", "--json")
    assert result.returncode == 1, result
    rls = items(result)["database:row-level security"]
    assert rls["ok"] is False and "public.secretive" in rls["detail"]
    assert rls["fix"] == f"ALTER ROLE {name} BYPASSRLS;"
    pg.execute(f"alter role {name} bypassrls")
    assert cli.run("check", "--json").returncode == 0


def test_superuser_is_a_warning_not_a_failure(cli: Cli) -> None:
    result = cli.run("check", "--json")
    assert result.returncode == 0, failed(result)
    su = items(result)["database:not superuser"]
    assert su["ok"] is False and su["required"] is False and "superuser" in su["detail"]
    assert "warn not superuser" in cli.run("check").stdout


def test_physical_needs_replication_and_function_grants(
    cli: Cli, pg: PgCluster, pg_db: str, role: tuple[str, str]
) -> None:
    name, password = role
    cli.env["BACKUPD_DATABASE_URL"] = pg.url(pg_db, user=name, password=password)
    cli.env["BACKUPD_MODE"] = "physical"
    result = cli.run("check", "--json")
    assert result.returncode == 1, result
    found = items(result)
    assert found["database:replication"]["ok"] is False
    assert found["database:replication"]["fix"] == f"ALTER ROLE {name} REPLICATION;"
    assert (
        found["database:execute pg_switch_wal"]["fix"]
        == f"GRANT EXECUTE ON FUNCTION pg_switch_wal() TO {name};"
    )
    assert found["database:execute pg_create_restore_point"]["ok"] is False
    backup_start = found["database:execute pg_backup_start"]
    assert backup_start["ok"] is False and backup_start["required"] is False

    pg.execute(
        f"alter role {name} replication;"
        f" grant execute on function pg_switch_wal() to {name};"
        f" grant execute on function pg_create_restore_point(text) to {name}",
        pg_db,  # function grants belong to the database the role connects to
    )
    result = cli.run("check", "--json")
    assert result.returncode == 0, failed(result)
    found = items(result)
    assert found["database:replication connection"]["ok"] is True
    assert found["database:execute pg_switch_wal"]["ok"] is True


def test_unreachable_database_is_reported(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    cli.env["BACKUPD_DATABASE_URL"] = pg.url(pg_db, password="wrong-password")
    result = cli.run("check", "--json")
    assert result.returncode == 1
    conn = items(result)["database:connection"]
    assert conn["ok"] is False and "password authentication failed" in conn["detail"]
    assert "wrong-password" not in result.stdout + result.stderr


# -- storage permissions on S3 with IAM enforced -----------------------------------------------

POLICY_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
POLICY_NO_DELETE = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"},
    ],
}


def _iam_users(endpoint: str, policies: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Turn on moto's IAM checks and create one user per policy: name -> (key id, secret)."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=str(3 * len(policies)).encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=5):
        pass
    iam = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x").client(
        "iam", endpoint_url=endpoint, region_name=REGION
    )
    users = {}
    for user, policy in policies.items():
        iam.create_user(UserName=user)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
        users[user] = (key["AccessKeyId"], key["SecretAccessKey"])
    iam.close()
    return users


@pytest.mark.s3
def test_storage_permissions_are_tried_on_s3(cli: Cli, tmp_path: Any) -> None:
    with running_moto_server() as endpoint:
        bucket = create_bucket(s3_client(endpoint, aws_access_key_id="x", aws_secret_access_key="x"))
        users = _iam_users(endpoint, {"all": POLICY_ALL, "nodelete": POLICY_NO_DELETE})
        cli.env.update(aws_test_env())
        cli.env.update(
            {
                "BACKUPD_REPOSITORY": f"s3://{bucket}/pg",
                "BACKUPD_S3__ENDPOINT_URL": endpoint,
                "BACKUPD_S3__REGION": REGION,
                "BACKUPD_S3__FORCE_PATH_STYLE": "true",
            }
        )

        def as_user(key_id: str, secret: str) -> Result:
            return cli.run(
                "check", "--json", env={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
            )

        ok = as_user(*users["all"])
        assert ok.returncode == 0, ok
        found = items(ok)
        assert all(found[f"storage:{op}"]["ok"] for op in ("put", "get", "list", "delete"))
        transport = found["storage:transport"]  # moto speaks plain HTTP: a warning
        assert transport["ok"] is False and transport["required"] is False

        nodelete = as_user(*users["nodelete"])
        assert nodelete.returncode == 1, nodelete
        found = items(nodelete)
        assert found["storage:put"]["ok"] and found["storage:get"]["ok"] and found["storage:list"]["ok"]
        assert found["storage:delete"]["ok"] is False and "denied" in found["storage:delete"]["detail"]
        assert (
            "missing: delete"
            in cli.run(
                "check",
                env={
                    "AWS_ACCESS_KEY_ID": users["nodelete"][0],
                    "AWS_SECRET_ACCESS_KEY": users["nodelete"][1],
                },
            ).stdout
        )

        denied = as_user(users["all"][0], "not-the-secret")
        assert denied.returncode == 1
        found = items(denied)
        assert found["storage:put"]["ok"] is False and "get" not in {
            k.split(":")[1] for k in found if k.startswith("storage:")
        }
        assert "not-the-secret" not in denied.stdout + denied.stderr
