"""Helpers for end-to-end tests: seeded databases and restore comparisons."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from contentflow_backupd.demo import datagen
from tests.support.pg import PgCluster

if TYPE_CHECKING:
    from contentflow_backupd.model import Scope


def seed(pg: PgCluster, db: str, size_mb: int = 4, seed: int = 42) -> None:
    with pg.connect(db) as conn:
        datagen.create_schema(conn)
        datagen.populate(conn, size_mb, seed=seed)


def checksums(pg: PgCluster, db: str) -> dict[str, tuple[int, str]]:
    with pg.connect(db) as conn:
        sums = datagen.table_checksums(conn)
        assert sums, f"no user tables in {db}"
        return sums


def change(pg: PgCluster, db: str, fraction: float = 0.01) -> None:
    with pg.connect(db) as conn:
        datagen.append_heavy_change(conn, fraction=fraction)


def repo_files(repo: Path) -> list[Path]:
    return sorted(p for p in repo.rglob("*") if p.is_file())


def chunk_files(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "main" / "chunks").rglob("*") if p.is_file())


def repository_scope(env: Mapping[str, str], cluster: str = "main") -> Scope:
    """The catalog scope of the local repository ``env`` names (``BACKUPD_REPOSITORY``,
    ``file://``): the id in its repo.json, and ``cluster``."""
    from contentflow_backupd.model import Scope

    url = env["BACKUPD_REPOSITORY"]
    assert url.startswith("file://"), url
    config = json.loads((Path(url.removeprefix("file://")) / "repo.json").read_text())
    return Scope(str(config["repository_id"]), cluster)
