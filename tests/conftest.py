"""Shared fixtures: a real PostgreSQL cluster per test session, a fresh database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.pg import PgCluster, running_cluster


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
