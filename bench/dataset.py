"""The realistic benchmark dataset: the demo's data plus binary, TOAST-sized and partitioned data.

pgbench tables flatter compression and deduplication (fixed-width rows, one heap order). The
dataset here is what issue 15 describes: text, JSONB, bytea, TOAST-sized values and a partitioned
table, and a change whose inserts and updates land in free space all over the heaps.

- ``contentflow_backupd.demo.datagen`` fills about 60% of the size, unchanged (content items with
  revisions: TOAST-sized text; JSONB metadata and events; media rows with bytea checksums).
- ``bench_extra.attachments`` (about 20%): bytea values from 2 KiB to 256 KiB (log-uniform), half
  incompressible (random bytes, like images) and half compressible (text-like, like PDFs), so both
  TOAST paths are used (pglz-compressed and stored as is).
- ``bench_extra.page_views`` (about 20%): partitioned by month (24 range partitions) with JSONB
  properties.
- Then, as an application's life would: 5% of ``events`` and 4% of ``page_views`` deleted
  (retention), 3% of ``content_items`` updated (new row versions elsewhere in the heap), and
  ``VACUUM``, so the heaps hold free space everywhere and later inserts land in it.

:func:`spread_change` is the change measured by the incremental rows: ``rows`` rows inserted or
updated across those tables, landing wherever the free space map sends them.

Everything is a pure function of ``(size_mb, seed)`` (and, for the change, of the database state
and its seed): ids are explicit, times come from ``textgen.EPOCH``.
"""

from __future__ import annotations

import math
import random
from datetime import timedelta
from typing import Any

import psycopg

from contentflow_backupd.demo import datagen
from contentflow_backupd.demo.textgen import EPOCH, copy_lines, dumps, line, new_uuid, paragraph, ts, words

MiB = 1024 * 1024
SPAN_SECONDS = 2 * 365 * 86400
MONTHS = 24
CORE_SHARE = 0.6
ATTACHMENT_SHARE = 0.2
# On-disk cost per row, calibrated on PostgreSQL 15 (heap, TOAST and indexes).
ATTACHMENT_BYTES = 40_000
PAGE_VIEW_BYTES = 260

_DEVICES = ("desktop", "desktop", "mobile", "mobile", "mobile", "tablet")
_REFERRERS = ("https://www.google.com/", "https://news.ycombinator.com/", "https://t.co/", "", "", "")
_MIMES = ("image/jpeg", "image/png", "application/pdf", "text/markdown")


def _month(m: int) -> str:
    return (EPOCH + timedelta(days=round(m * 365 / 12))).isoformat()


def _partitions_sql() -> str:
    parts = []
    for m in range(MONTHS):
        upper = "MAXVALUE" if m == MONTHS - 1 else f"'{_month(m + 1)}'"
        parts.append(
            f"CREATE TABLE bench_extra.page_views_m{m:02d} PARTITION OF bench_extra.page_views"
            f" FOR VALUES FROM ('{_month(m)}') TO ({upper});"
        )
    return "\n".join(parts)


SCHEMA_SQL = """
CREATE SCHEMA bench_extra;
CREATE TABLE bench_extra.attachments (
    id bigint PRIMARY KEY,
    content_item_id bigint NOT NULL REFERENCES content_items (id) ON DELETE CASCADE,
    name text NOT NULL,
    mime_type text NOT NULL,
    data bytea NOT NULL,
    meta jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL
);
CREATE INDEX attachments_content_item_id_idx ON bench_extra.attachments (content_item_id);
CREATE TABLE bench_extra.page_views (
    id bigint NOT NULL,
    workspace_id bigint NOT NULL,
    content_item_id bigint NOT NULL,
    session_id uuid NOT NULL,
    props jsonb NOT NULL,
    viewed_at timestamptz NOT NULL,
    PRIMARY KEY (id, viewed_at)
) PARTITION BY RANGE (viewed_at);
CREATE INDEX page_views_content_item_id_idx ON bench_extra.page_views (content_item_id);
""" + _partitions_sql()


def _blob(rng: random.Random, size: int, compressible: bool) -> bytes:
    if not compressible:
        return rng.randbytes(size)
    text = bytearray()
    while len(text) < size:
        text += paragraph(rng, rng.randint(30, 120)).encode() + b"\n\n"
    return bytes(text[:size])


def _attachment_lines(rng: random.Random, first_id: int, count: int, items: int, small: bool = False) -> Any:
    hi = math.log(20 * 1024 if small else 256 * 1024)
    lo = math.log(2 * 1024)
    for n in range(count):
        size = int(math.exp(rng.uniform(lo, hi)))
        mime = rng.choice(_MIMES)
        compressible = mime in ("application/pdf", "text/markdown")
        data = _blob(rng, size, compressible)
        meta = {"uploadedBy": new_uuid(rng), "pages": rng.randint(1, 40) if compressible else None}
        name = "-".join(words(rng, 3)) + f"-{first_id + n}"
        created = ts(rng.randrange(SPAN_SECONDS))
        yield line(first_id + n, rng.randint(1, items), name, mime, "\\x" + data.hex(), dumps(meta), created)


def _page_view_lines(
    rng: random.Random, first_id: int, count: int, items: int, workspaces: int, spread: bool = False
) -> Any:
    step = max(1, SPAN_SECONDS // max(1, count))
    for n in range(count):
        at = rng.randrange(SPAN_SECONDS) if spread else min(SPAN_SECONDS - 1, n * step + rng.randrange(step))
        props = {
            "device": rng.choice(_DEVICES),
            "referrer": rng.choice(_REFERRERS),
            "durationMs": rng.randint(200, 600_000),
            "scrollDepth": round(rng.random(), 2),
            "utm": {"source": rng.choice(("newsletter", "twitter", "direct")), "campaign": words(rng, 1)[0]},
        }
        yield line(
            first_id + n,
            rng.randint(1, workspaces),
            rng.randint(1, items),
            new_uuid(rng),
            dumps(props),
            ts(at),
        )


def _event_lines(rng: random.Random, first_id: int, count: int, workspaces: int, start: int) -> Any:
    for n in range(count):
        payload = {"actor": new_uuid(rng), "itemId": rng.randint(1, 10_000), "q": " ".join(words(rng, 3))}
        yield line(first_id + n, rng.randint(1, workspaces), "content.viewed", dumps(payload), ts(start + n))


def _counts(cur: psycopg.Cursor[Any]) -> tuple[int, int]:
    cur.execute("SELECT (SELECT max(id) FROM content_items), (SELECT max(id) FROM workspaces)")
    row = cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def build(conn: psycopg.Connection[Any], size_mb: int, seed: int = 42) -> dict[str, int]:
    """Create and fill the realistic dataset (about ``size_mb`` MiB on disk) in an empty database;
    returns rows per table. Ends with ``VACUUM ANALYZE``; ``conn`` must be in autocommit mode."""
    datagen.create_schema(conn)
    counts = datagen.populate(conn, max(16, round(size_mb * CORE_SHARE)), seed=seed)
    n_attach = max(10, round(size_mb * ATTACHMENT_SHARE * MiB / ATTACHMENT_BYTES))
    n_views = max(100, round(size_mb * (1 - CORE_SHARE - ATTACHMENT_SHARE) * MiB / PAGE_VIEW_BYTES))
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(SCHEMA_SQL)
        items, workspaces = _counts(cur)
        rng = random.Random(f"{seed}:attachments")
        counts["bench_extra.attachments"] = copy_lines(
            cur,
            "bench_extra.attachments",
            "id, content_item_id, name, mime_type, data, meta, created_at",
            _attachment_lines(rng, 1, n_attach, items),
        )
        rng = random.Random(f"{seed}:page_views")
        counts["bench_extra.page_views"] = copy_lines(
            cur,
            "bench_extra.page_views",
            "id, workspace_id, content_item_id, session_id, props, viewed_at",
            _page_view_lines(rng, 1, n_views, items, workspaces),
        )
        # An application's life: retention deletes and updates leave free space all over the heaps.
        cur.execute("DELETE FROM events WHERE id % 20 = 7")
        cur.execute("DELETE FROM bench_extra.page_views WHERE id % 25 = 3")
        cur.execute(
            "UPDATE content_items SET metadata = metadata || '{\"reviewed\": true}',"
            " updated_at = updated_at + interval '1 day' WHERE id % 33 = 1"
        )
    conn.execute("VACUUM ANALYZE")
    return counts


def spread_change(conn: psycopg.Connection[Any], rows: int, seed: int = 7) -> dict[str, int]:
    """About ``rows`` rows inserted or updated across the heaps; deterministic for a database state.

    45% new ``events``, 35% new ``page_views`` at random times (so in every partition), 5% new
    small attachments, 15% updates of random ``content_items`` (status and JSONB metadata). The
    free space map puts the new rows and row versions into the holes the dataset left all over
    each heap, as an application's writes do.
    """
    n_events = round(rows * 0.45)
    n_views = round(rows * 0.35)
    n_attach = max(1, round(rows * 0.05))
    n_updates = max(1, rows - n_events - n_views - n_attach)
    with conn.transaction(), conn.cursor() as cur:
        items, workspaces = _counts(cur)
        cur.execute(
            "SELECT (SELECT max(id) FROM events), (SELECT max(id) FROM bench_extra.page_views),"
            " (SELECT coalesce(max(id), 0) FROM bench_extra.attachments),"
            " (SELECT extract(epoch FROM max(created_at))::bigint FROM events)"
        )
        row = cur.fetchone()
        assert row is not None
        max_event, max_view, max_attach, last_ts = (int(v) for v in row)
        rng = random.Random(f"{seed}:{max_event}:{max_view}:{max_attach}")
        start = last_ts + 60 - int(EPOCH.timestamp())
        done = {
            "events": copy_lines(
                cur,
                "events",
                "id, workspace_id, kind, payload, created_at",
                _event_lines(rng, max_event + 1, n_events, workspaces, start),
            ),
            "bench_extra.page_views": copy_lines(
                cur,
                "bench_extra.page_views",
                "id, workspace_id, content_item_id, session_id, props, viewed_at",
                _page_view_lines(rng, max_view + 1, n_views, items, workspaces, spread=True),
            ),
            "bench_extra.attachments": copy_lines(
                cur,
                "bench_extra.attachments",
                "id, content_item_id, name, mime_type, data, meta, created_at",
                _attachment_lines(rng, max_attach + 1, n_attach, items, small=True),
            ),
        }
        ids = sorted(rng.sample(range(1, items + 1), min(n_updates, items)))
        cur.execute(
            "UPDATE content_items SET status = CASE status WHEN 'draft' THEN 'review'"
            " WHEN 'review' THEN 'published' WHEN 'published' THEN 'archived' ELSE 'draft' END,"
            " metadata = metadata || jsonb_build_object('editedBy', 'bench'),"
            " updated_at = updated_at + interval '1 hour' WHERE id = ANY(%s)",
            (ids,),
        )
        done["content_items updated"] = cur.rowcount
        cur.execute("SELECT setval(pg_get_serial_sequence('events', 'id'), max(id)) FROM events")
    return done


def change_rows_for(database_bytes: int) -> int:
    """The issue's ~1% change: 600 rows on a 29 MB database, proportionally more on larger ones."""
    return max(600, round(600 * database_bytes / (29 * 1_000_000)))
