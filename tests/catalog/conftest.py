"""Fixtures of the catalog contract suite: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_catalog_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], str]]:
    """Makes URLs of fresh, empty catalogs (a new SQLite file or a new PostgreSQL database)."""
    created: list[str] = []

    def make() -> str:
        name = f"catalog{len(created)}"
        created.append(name)
        if backend == "sqlite":
            return f"sqlite:///{tmp_path}/{name}/not/yet/there/catalog.db"
        pg = request.getfixturevalue("pg")
        db: str = pg.create_database()
        created[-1] = db
        return str(pg.url(db))

    yield make
    if backend == "postgresql":
        pg = request.getfixturevalue("pg")
        for db in created:
            pg.drop_database(db)


@pytest.fixture
def catalog_url(new_catalog_url: Callable[[], str]) -> str:
    return new_catalog_url()


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[SqlCatalog]:
    opened = open_catalog(catalog_url)
    try:
        yield opened
    finally:
        opened.close()
