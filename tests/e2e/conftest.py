"""Fixtures for end-to-end tests against S3: moto's server over HTTP, optionally behind a proxy
that injects errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cli import Cli
from tests.support.faultproxy import FaultProxy
from tests.support.moto_server import (
    aws_test_env,
    create_bucket,
    delete_bucket,
    running_moto_server,
    s3_client,
)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    with running_moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_cli(cli: Cli, moto_s3: str) -> Iterator[tuple[Cli, str]]:
    """``cli`` pointed at a fresh bucket on moto's server (path-style, fake credentials)."""
    client = s3_client(moto_s3, **{"aws_access_key_id": "testing", "aws_secret_access_key": "testing"})
    bucket = create_bucket(client)
    cli.env.update(aws_test_env())
    cli.env.update(
        {
            "BACKUPD_REPOSITORY": f"s3://{bucket}/backups/prod",
            "BACKUPD_S3__ENDPOINT_URL": moto_s3,
            "BACKUPD_S3__REGION": "us-east-1",
            "BACKUPD_S3__FORCE_PATH_STYLE": "true",
        }
    )
    try:
        yield cli, bucket
    finally:
        delete_bucket(client, bucket)


@pytest.fixture
def fault_proxy(moto_s3: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_s3, seed=1234) as proxy:
        yield proxy
