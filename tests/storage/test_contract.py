"""The storage contract suite (``contract.py``) against every driver and wrapper.

``retry-s3-faulty`` is ``RetryingStorage(S3Storage)`` talking to moto through the fault proxy,
which fails 30% of the requests (500, 503, dropped connections before and after forwarding):
every contract test must still pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contentflow_backupd.storage.base import Storage, put_bytes
from tests.storage.conftest import FAULTY_ERROR_RATE
from tests.storage.contract import StorageContract
from tests.support.faultproxy import FaultProxy

STORAGES = [
    "local",
    "memory",
    pytest.param("s3", marks=pytest.mark.s3),
    "retry-memory",
    "retry-local",
    pytest.param("retry-s3-faulty", marks=pytest.mark.s3),
]
_FIXTURES = {
    "local": "local_storage",
    "memory": "memory_storage",
    "s3": "s3_storage",
    "retry-memory": "retry_memory_storage",
    "retry-local": "retry_local_storage",
    "retry-s3-faulty": "faulty_s3_storage",
}

# (faults injected, requests seen) by the proxy during each faulty contract test
_faults_seen: list[tuple[int, int]] = []


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest) -> Iterator[Storage]:
    store: Storage = request.getfixturevalue(_FIXTURES[request.param])
    if request.param != "retry-s3-faulty":
        yield store
        return
    proxy: FaultProxy = request.getfixturevalue("fault_proxy")
    yield store
    injected = proxy.injected_total
    _faults_seen.append((injected, injected + proxy.forwarded))


class TestStorageContract(StorageContract):
    pass


def test_faults_were_injected_into_the_contract_run() -> None:
    """Runs after the contract tests of this module (pytest keeps the order of a file)."""
    if len(_faults_seen) < 20:
        pytest.skip("too few faulty contract tests ran in this process (deselected or split)")
    injected = sum(i for i, _ in _faults_seen)
    requests = sum(r for _, r in _faults_seen)
    assert requests > 100  # how many depends on how xdist splits the module between workers
    assert 0.5 * FAULTY_ERROR_RATE < injected / requests < 1.5 * FAULTY_ERROR_RATE


@pytest.mark.s3
def test_faulty_proxy_injects_and_retries_recover(
    faulty_s3_storage: Storage, fault_proxy: FaultProxy
) -> None:
    assert fault_proxy.error_rate == FAULTY_ERROR_RATE
    for i in range(40):
        put_bytes(faulty_s3_storage, f"k/{i}", str(i).encode())
    assert [faulty_s3_storage.get(f"k/{i}") for i in range(40)] == [str(i).encode() for i in range(40)]
    assert fault_proxy.injected_total > 10
    assert set(fault_proxy.injected) == {"500", "503", "drop", "drop_after"}
    assert fault_proxy.forwarded > 80
