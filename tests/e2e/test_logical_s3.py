"""Logical backups to S3 over real HTTP (moto's server), also with 30% of requests failing."""

from __future__ import annotations

import pytest

from tests.e2e.helpers import change, checksums, seed
from tests.support.cli import Cli
from tests.support.faultproxy import FaultProxy
from tests.support.moto_server import s3_client
from tests.support.pg import PgCluster

pytestmark = [pytest.mark.pg, pytest.mark.s3]


def test_full_and_incremental_round_trip_on_s3(
    s3_cli: tuple[Cli, str], pg: PgCluster, pg_db: str, moto_s3: str
) -> None:
    cli, bucket = s3_cli
    seed(pg, pg_db, size_mb=12)
    cli.run("init", check=True)
    full = cli.ok_json("backup", "--kind", "full")
    before = checksums(pg, pg_db)
    change(pg, pg_db)
    incr = cli.ok_json("backup", "--kind", "incremental")
    assert incr["kind"] == "incremental" and incr["chunks_new"] < incr["chunks_total"]
    cli.run("verify", "--all", check=True)
    cli.run("verify", "--all", "--quick", check=True)

    keys = [
        o["Key"]
        for o in s3_client(
            moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing"
        ).list_objects_v2(Bucket=bucket)["Contents"]
    ]
    assert "backups/prod/repo.json" in keys
    assert f"backups/prod/main/backups/{incr['id']}.json" in keys
    assert all(k.startswith("backups/prod/") for k in keys)

    for backup, want in ((full, before), (incr, checksums(pg, pg_db))):
        target = f"s3_restore_{backup['kind']}_{pg_db}"
        cli.run("restore", backup["id"], "--to-database", pg.url(target), "--create", check=True)
        assert checksums(pg, target) == want
        pg.drop_database(target)


def test_backup_and_restore_survive_30_percent_injected_s3_errors(
    s3_cli: tuple[Cli, str], pg: PgCluster, pg_db: str, fault_proxy: FaultProxy
) -> None:
    cli, _bucket = s3_cli
    seed(pg, pg_db, size_mb=16)
    cli.env["BACKUPD_S3__ENDPOINT_URL"] = fault_proxy.url
    fault_proxy.error_rate = 0.3
    cli.run("init", check=True)
    full = cli.ok_json("backup", "--kind", "full")
    change(pg, pg_db)
    incr = cli.ok_json("backup", "--kind", "incremental")
    cli.run("verify", "--all", check=True)
    target = "s3_faulty_" + pg_db
    cli.run("restore", "latest", "--to-database", pg.url(target), "--create", check=True)
    injected = fault_proxy.injected_total
    print(
        f"\nS3 FAULTS: {injected} injected, {fault_proxy.forwarded} forwarded; "
        f"full {full['chunks_total']} chunks, incremental {incr['chunks_new']} new"
    )
    assert injected > 20
    fault_proxy.error_rate = 0.0
    assert checksums(pg, target) == checksums(pg, pg_db)
    cli.run("verify", "--all", check=True)
    pg.drop_database(target)
