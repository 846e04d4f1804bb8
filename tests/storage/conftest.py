"""Fixtures for storage tests: moto's S3 server, fresh buckets, a fault proxy, and one factory
fixture per driver and wrapper (``tests/storage/test_contract.py`` picks among them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from contentflow_backupd.storage.base import Storage
from contentflow_backupd.storage.local import LocalStorage
from contentflow_backupd.storage.memory import MemoryStorage
from contentflow_backupd.storage.retry import RetryingStorage
from contentflow_backupd.storage.s3 import MiB, S3Storage
from tests.support.faultproxy import FaultProxy
from tests.support.moto_server import (
    AWS_ENV_TO_CLEAR,
    aws_test_env,
    create_bucket,
    delete_bucket,
    running_moto_server,
    s3_client,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

S3_PREFIX = "repo"
"""Every S3 test storage lives under this prefix, so key relativity is always exercised."""

FAULTY_ERROR_RATE = 0.3
# Whole-put retries: a 2-part multipart put is 5 requests, all of which must get through in one
# attempt (0.7**5 = 17% at a 30% error rate), so the faulty S3 storage needs many attempts.
FAULTY_ATTEMPTS = 60


def no_sleep(_seconds: float) -> None:
    pass


def make_s3(endpoint: str, bucket: str, **kwargs: object) -> S3Storage:
    """An S3Storage for tests: path style, 5 MiB multipart threshold and parts, short timeouts."""
    options: dict[str, object] = {
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "force_path_style": True,
        "multipart_threshold": 5 * MiB,
        "part_size": 5 * MiB,
        "connect_timeout": 2.0,
        "read_timeout": 20.0,
    }
    options.update(kwargs)
    return S3Storage(bucket, S3_PREFIX, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session", autouse=True)
def aws_env() -> Iterator[dict[str, str]]:
    """Fake AWS credentials for the whole session; nothing from the developer's ~/.aws."""
    env = aws_test_env()
    with pytest.MonkeyPatch.context() as mp:
        for name in AWS_ENV_TO_CLEAR:
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield env


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with running_moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_admin(moto_endpoint: str) -> Iterator[S3Client]:
    """A plain boto3 client on moto, for setting up and inspecting buckets directly."""
    client = s3_client(moto_endpoint)
    yield client
    client.close()


@pytest.fixture
def s3_bucket(s3_admin: S3Client) -> Iterator[str]:
    """A fresh, empty bucket on the session's moto server; removed afterwards."""
    name = create_bucket(s3_admin)
    yield name
    delete_bucket(s3_admin, name)


@pytest.fixture(scope="session")
def _session_fault_proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint, seed=20240601, faults=("500", "503", "drop", "drop_after")) as proxy:
        yield proxy


@pytest.fixture
def fault_proxy(_session_fault_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The session's fault proxy in front of moto, transparent at the start of each test."""
    _session_fault_proxy.reset()
    yield _session_fault_proxy
    _session_fault_proxy.reset()


# -- one factory fixture per driver and wrapper ----------------------------------------------


@pytest.fixture
def local_storage(tmp_path: Path) -> Iterator[LocalStorage]:
    storage = LocalStorage(tmp_path / "repo")  # the root does not exist yet: put creates it
    yield storage
    storage.close()


@pytest.fixture
def memory_storage() -> Iterator[MemoryStorage]:
    storage = MemoryStorage()
    yield storage
    storage.close()


@pytest.fixture
def s3_storage(moto_endpoint: str, s3_bucket: str) -> Iterator[S3Storage]:
    storage = make_s3(moto_endpoint, s3_bucket)
    yield storage
    storage.close()


@pytest.fixture
def retry_memory_storage(memory_storage: MemoryStorage) -> Storage:
    return RetryingStorage(memory_storage, sleep=no_sleep)


@pytest.fixture
def retry_local_storage(local_storage: LocalStorage) -> Storage:
    return RetryingStorage(local_storage, sleep=no_sleep)


@pytest.fixture
def faulty_s3_storage(fault_proxy: FaultProxy, s3_bucket: str) -> Iterator[Storage]:
    """RetryingStorage(S3Storage) talking to moto through the proxy at a 30% error rate."""
    inner = make_s3(fault_proxy.url, s3_bucket)
    fault_proxy.error_rate = FAULTY_ERROR_RATE
    yield RetryingStorage(inner, attempts=FAULTY_ATTEMPTS, base_delay=0.001, max_delay=0.005)
    fault_proxy.error_rate = 0.0
    inner.close()
