"""Fixtures of the container tests: the images built by ``make test-container``
(``tests/container/images.sh``), a real PostgreSQL cluster on the host's loopback, moto's S3
server. The containers use the host network, so the daemon inside reaches both at 127.0.0.1.

Without podman or the image these tests are skipped with the command that builds it, except
under ``make test-container`` (``BACKUPD_CONTAINER_TESTS=1``), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.container.podman import IMAGE, SYSTEMD_IMAGE, image_exists
from tests.support.moto_server import running_moto_server
from tests.support.pg import PgCluster, running_cluster

REQUIRED = os.environ.get("BACKUPD_CONTAINER_TESTS") == "1"


def _need(image: str) -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "the container tests run podman as root"
    elif shutil.which("podman") is None:
        reason = "podman is not installed"
    elif not image_exists(image):
        reason = f"image {image} is not built"
    if reason is None:
        return
    message = f"{reason}: run `make test-container`"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def image() -> str:
    _need(IMAGE)
    return IMAGE


@pytest.fixture(scope="session")
def systemd_image() -> str:
    _need(SYSTEMD_IMAGE)
    return SYSTEMD_IMAGE


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """A real cluster on 127.0.0.1 (SCRAM passwords over TCP, replication allowed)."""
    with running_cluster(prefix="backupd-ctr-pg-") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    with running_moto_server() as endpoint:
        yield endpoint
