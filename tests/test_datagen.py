"""The demo data generator: deterministic, sized as asked, and checksums that catch one row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from contentflow_backupd.demo import (
    append_heavy_change,
    create_schema,
    populate,
    sequence_values,
    table_checksums,
    user_table_count,
)
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

TABLES = {
    "analytics.daily_workspace_stats",
    "public._prisma_migrations",
    "public.content_items",
    "public.events",
    "public.media",
    "public.revisions",
    "public.users",
    "public.workspaces",
}


@pytest.fixture
def other_db(pg: PgCluster) -> Iterator[str]:
    name = pg.create_database()
    try:
        yield name
    finally:
        pg.drop_database(name)


def _load(pg: PgCluster, db: str, size_mb: int, seed: int) -> psycopg.Connection[Any]:
    conn = pg.connect(db)
    create_schema(conn)
    populate(conn, size_mb, seed=seed)
    return conn


def test_same_seed_gives_identical_tables_and_sequences(pg: PgCluster, pg_db: str, other_db: str) -> None:
    with _load(pg, pg_db, 5, 42) as a, _load(pg, other_db, 5, 42) as b:
        b.execute("SET TimeZone = 'Asia/Kathmandu'")  # row text must not depend on the session
        b.execute("SET DateStyle = 'SQL, DMY'")
        sums = table_checksums(a)
        assert set(sums) == TABLES
        assert user_table_count(a) == len(TABLES)
        assert all(rows > 0 for rows, _ in sums.values())
        assert table_checksums(b) == sums
        seqs = sequence_values(a)
        assert seqs == sequence_values(b)
        assert seqs["public.events_id_seq"] == sums["public.events"][0]
        assert seqs["public.content_items_id_seq"] == sums["public.content_items"][0]


def test_different_seed_gives_different_data(pg: PgCluster, pg_db: str, other_db: str) -> None:
    with _load(pg, pg_db, 5, 42) as a, _load(pg, other_db, 5, 43) as b:
        sums_a, sums_b = table_checksums(a), table_checksums(b)
    for table in TABLES - {"public._prisma_migrations", "analytics.daily_workspace_stats"}:
        assert sums_a[table][1] != sums_b[table][1], table


def test_size_lands_near_target(pg: PgCluster, pg_db: str) -> None:
    with _load(pg, pg_db, 20, 42) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    size_mb = row[0] / (1024 * 1024)
    assert 14 <= size_mb <= 26, size_mb


def test_bodies_are_long_and_text_like_and_schema_objects_work(pg: PgCluster, pg_db: str) -> None:
    with _load(pg, pg_db, 5, 42) as conn:
        row = conn.execute(
            "SELECT min(length(body)), avg(length(body)), max(length(body)),"
            " count(DISTINCT body) = count(*), bool_and(body LIKE '# %')"
            " FROM content_items"
        ).fetchone()
        assert row is not None
        shortest, average, longest, distinct, markdown = row
        assert shortest > 1500 and 2500 < average < 10_000 and longest < 20_000
        assert distinct and markdown
        featured = conn.execute(
            "SELECT count(*) FILTER (WHERE metadata @> '{\"featured\": true}'),"
            " count(*) FILTER (WHERE (metadata->>'featured')::boolean) FROM content_items"
        ).fetchone()
        assert featured is not None and featured[0] == featured[1]
        published = conn.execute("SELECT count(*) FROM published_content").fetchone()
        stats = conn.execute("SELECT sum(items) FROM workspace_content_stats(1)").fetchone()
        slug = conn.execute("SELECT slugify('Hello, World!')").fetchone()
        assert published is not None and published[0] > 0
        assert stats is not None and stats[0] > 0
        assert slug == ("hello-world",)


def test_append_heavy_change(pg: PgCluster, pg_db: str) -> None:
    with _load(pg, pg_db, 20, 42) as conn:
        before = table_checksums(conn)
        summary = append_heavy_change(conn, fraction=0.02, seed=7)
        after = table_checksums(conn)
        events, revisions = before["public.events"][0], before["public.revisions"][0]
        items = before["public.content_items"][0]
        assert summary.events_inserted == round(events * 0.02)
        assert summary.revisions_inserted == round(revisions * 0.02)
        assert 1 <= summary.items_updated <= max(1, round(items * 0.02 / 10))
        assert after["public.events"][0] == events + summary.events_inserted
        assert after["public.revisions"][0] == revisions + summary.revisions_inserted
        assert after["public.content_items"][0] == items
        changed = {t for t in before if before[t] != after[t]}
        assert changed == {"public.events", "public.revisions", "public.content_items"}
        seqs = sequence_values(conn)
        assert seqs["public.events_id_seq"] == after["public.events"][0]
        assert seqs["public.revisions_id_seq"] == after["public.revisions"][0]
        stale = conn.execute(
            "SELECT count(*) FROM revisions r JOIN revisions p"
            " ON p.content_item_id = r.content_item_id AND p.revision = r.revision - 1"
            " WHERE r.id > %s AND length(r.body) <= length(p.body)",
            (revisions,),
        ).fetchone()
        assert stale == (0,)  # each new revision appends a paragraph to the previous one


def test_append_heavy_change_is_deterministic(pg: PgCluster, pg_db: str, other_db: str) -> None:
    with _load(pg, pg_db, 5, 42) as a, _load(pg, other_db, 5, 42) as b:
        assert append_heavy_change(a) == append_heavy_change(b)
        assert table_checksums(a) == table_checksums(b)
        assert sequence_values(a) == sequence_values(b)


def test_checksums_catch_one_changed_row_and_ignore_layout(pg: PgCluster, pg_db: str) -> None:
    with _load(pg, pg_db, 5, 42) as conn:
        before = table_checksums(conn)
        # Rewriting rows in place moves them physically but leaves their contents alone.
        conn.execute("UPDATE events SET kind = kind")
        conn.execute("VACUUM FULL media")
        assert table_checksums(conn) == before

        conn.execute(
            "UPDATE media SET size_bytes = size_bytes + 1"
            " WHERE id = (SELECT id FROM media ORDER BY id LIMIT 1)"
        )
        after = table_checksums(conn)
        assert after["public.media"][0] == before["public.media"][0]
        assert after["public.media"][1] != before["public.media"][1]
        assert {t: v for t, v in after.items() if t != "public.media"} == {
            t: v for t, v in before.items() if t != "public.media"
        }
