"""Shared fixtures: a real PostgreSQL cluster per test session, a fresh database per test, and
a command-line environment with a local repository."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from contentflow_backupd.observability.logging import reset_logging
from tests.support.cli import Cli
from tests.support.pg import MATRIX_MAJORS, PgCluster, pg_bin_dir, running_cluster

PASSPHRASE = "test passphrase: correct horse battery staple"

# No test depends on speed: Hypothesis's default 200 ms deadline per example fails property tests
# on a loaded machine (DeadlineExceeded), and so does its too_slow health check.
settings.register_profile(
    "backupd", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("backupd")

# A suite started in the background by a non-interactive shell (`make test &`, nohup, some CI
# runners) inherits SIGINT ignored, as POSIX asks of asynchronous commands, and every command the
# tests start would inherit that too: the tests that press Ctrl-C (SIGINT to the command) would
# wait for a command that cannot see it. The tests act as a user at a terminal, whose commands
# start with SIGINT at its default; a handler here (not SIG_IGN) gives children the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _logging_reset_after_each_test() -> Iterator[None]:
    """A test that configures logging in-process (a level, a stream bound at that moment) must
    not change what a later test in the same worker captures: configure once, reset in tests."""
    yield
    reset_logging()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """One real PostgreSQL cluster for the whole session; tests create their own databases."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_db(pg: PgCluster) -> Iterator[str]:
    """A fresh, empty database on the session cluster; dropped afterwards."""
    name = pg.create_database()
    try:
        yield name
    finally:
        pg.drop_database(name)


@pytest.fixture
def cli(tmp_path: Path, pg: PgCluster, pg_db: str) -> Cli:
    """Settings for a local repository, SQLite catalog and the test database, as env vars."""
    return Cli(
        env={
            "BACKUPD_DATABASE_URL": pg.url(pg_db),
            "BACKUPD_REPOSITORY": f"file://{tmp_path / 'repo'}",
            "BACKUPD_STATE_DIR": str(tmp_path / "state"),
            "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
            "BACKUPD_CHUNKING__AVG_SIZE": str(64 * 1024),
        }
    )


# -- the version matrix: the same journeys on PostgreSQL 16 and 18 (the whole suite runs on 15) --


@pytest.fixture(scope="session", params=MATRIX_MAJORS, ids=[f"pg{m}" for m in MATRIX_MAJORS])
def pg_major(request: pytest.FixtureRequest) -> int:
    """Each major of the matrix in turn; test ids name it (``[pg16]``), so a failure does."""
    major: int = request.param
    return major


@pytest.fixture(scope="session")
def pg_of_major(pg_major: int) -> Iterator[PgCluster]:
    """One cluster of ``pg_major`` per session, like ``pg``; tests create their own databases."""
    with running_cluster(prefix=f"backupd-pg{pg_major}-", bin_dir=pg_bin_dir(pg_major)) as cluster:
        yield cluster
