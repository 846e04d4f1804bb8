"""The benchmark's realistic dataset (bench/dataset.py): deterministic, the mix issue 15 asks for,
and a change that lands all over the heaps rather than at their ends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from bench import dataset
from contentflow_backupd.demo import table_checksums
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

SIZE_MB = 16


@pytest.fixture
def other_db(pg: PgCluster) -> Iterator[str]:
    name = pg.create_database()
    try:
        yield name
    finally:
        pg.drop_database(name)


def _build(pg: PgCluster, db: str, seed: int = 42) -> psycopg.Connection[Any]:
    conn = pg.connect(db)
    dataset.build(conn, SIZE_MB, seed=seed)
    return conn


def _one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_same_seed_gives_identical_data_and_change(pg: PgCluster, pg_db: str, other_db: str) -> None:
    with _build(pg, pg_db) as a, _build(pg, other_db) as b:
        sums = table_checksums(a)
        assert {"bench_extra.attachments", "bench_extra.page_views_m00", "public.events"} <= set(sums)
        assert table_checksums(b) == sums
        assert dataset.spread_change(a, 600) == dataset.spread_change(b, 600)
        after = table_checksums(a)
        assert after != sums
        assert table_checksums(b) == after


def test_another_seed_gives_other_data(pg: PgCluster, pg_db: str, other_db: str) -> None:
    with _build(pg, pg_db, seed=1) as a, _build(pg, other_db, seed=2) as b:
        assert table_checksums(a)["bench_extra.attachments"] != table_checksums(b)["bench_extra.attachments"]


def test_the_mix_has_bytea_toast_partitions_and_free_space(pg: PgCluster, pg_db: str) -> None:
    with _build(pg, pg_db) as conn:
        size = _one(conn, "SELECT pg_database_size(current_database())")
        assert 0.8 * SIZE_MB * dataset.MiB < size < 2.0 * SIZE_MB * dataset.MiB
        # Partitioned by month, rows in every partition.
        parts = conn.execute(
            "SELECT c.relname, (SELECT count(*) FROM bench_extra.page_views p WHERE p.tableoid = c.oid)"
            " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'bench_extra.page_views'::regclass"
        ).fetchall()
        assert len(parts) == dataset.MONTHS
        assert all(n > 0 for _, n in parts)
        # TOAST-sized bytea, both stored as is (random bytes) and compressed (text-like).
        kinds = dict(
            conn.execute(
                "SELECT coalesce(pg_column_compression(data), 'none'), count(*)"
                " FROM bench_extra.attachments WHERE octet_length(data) > 8192 GROUP BY 1"
            ).fetchall()
        )
        assert kinds.get("none", 0) > 0 and kinds.get("pglz", 0) > 0
        assert (
            _one(conn, "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'attachments'")
            > 0
        )
        # Retention deletes and updates left free space that VACUUM made reusable.
        assert _one(conn, "SELECT count(*) FROM events WHERE id % 20 = 7") == 0


def test_the_change_lands_all_over_the_heap(pg: PgCluster, pg_db: str) -> None:
    with _build(pg, pg_db) as conn:
        last_id = _one(conn, "SELECT max(id) FROM events")
        blocks = _one(conn, "SELECT pg_relation_size('events') / current_setting('block_size')::int")
        done = dataset.spread_change(conn, 600)
        assert done["events"] == 270 and done["content_items updated"] == 90
        new_blocks = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT (ctid::text::point)[0]::int FROM events WHERE id > %s", (last_id,)
            ).fetchall()
        ]
        # Into the holes the dataset left, not only appended after the last block.
        assert min(new_blocks) < blocks // 2


def test_change_rows_scale_with_size() -> None:
    assert dataset.change_rows_for(29_000_000) == 600
    assert dataset.change_rows_for(10_000_000) == 600
    assert dataset.change_rows_for(1_100_000_000) == 22_759
