"""Deterministic ContentFlow-like data: bulk load and an append-heavy change.

The schema lives in :mod:`.schema` and the comparison helpers in :mod:`.checksums`; both are
re-exported here. Everything is a pure function of ``(size_mb, seed)`` (for a given Python minor
version, since ``random``'s helper methods may change between versions): no ``now()``,
``random()`` or sequence gaps; ids are explicit and sequences are set to the maximum afterwards,
timestamps come from a fixed epoch. Rows are generated in Python (words from a fixed vocabulary
drawn with a seeded ``random.Random``) and streamed with ``COPY ... FROM STDIN``. Only psycopg
and the stdlib.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from contentflow_backupd.demo.checksums import (
    one_row,
    sequence_values,
    table_checksums,
    user_table_count,
)
from contentflow_backupd.demo.schema import create_schema
from contentflow_backupd.demo.textgen import (
    EPOCH,
    WORDS,
    copy_lines,
    dumps,
    line,
    new_uuid,
    paragraph,
    title,
    ts,
    words,
)

__all__ = [
    "ChangeSummary",
    "append_heavy_change",
    "create_schema",
    "populate",
    "sequence_values",
    "table_checksums",
    "user_table_count",
]

MiB = 1024 * 1024
SPAN_SECONDS = 2 * 365 * 86400

# Size model, calibrated against PostgreSQL 15 (pglz TOAST compression): an empty database
# weighs about BASE_MB, and each content item with its revisions, media and events about
# BYTES_PER_ITEM on disk, heap, TOAST and indexes included.
BASE_MB = 7.6
BYTES_PER_ITEM = 16_400
EVENTS_PER_ITEM = 6
_REVISION_COLUMNS = "id, content_item_id, revision, author_id, body, diff, created_at"
_EVENT_COLUMNS = "id, workspace_id, kind, payload, created_at"

# Sequences to set to max(id) once rows with explicit ids are in.
_ID_TABLES = ("workspaces", "content_items", "revisions", "events")

_TLDS = ("com", "io", "net", "org", "dev")
_PLANS = ("free", "starter", "team", "business", "enterprise")
_ROLES = ("owner", "admin", "editor", "editor", "editor", "viewer", "viewer")
_LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "nl-NL", "ja-JP")
_STATUSES = ("published",) * 11 + ("draft",) * 4 + ("review",) * 2 + ("archived",) * 3
_FLIP = {"draft": "review", "review": "published", "published": "archived", "archived": "draft"}
_MIMES = (
    ("image/jpeg", "jpg"),
    ("image/jpeg", "jpg"),
    ("image/png", "png"),
    ("image/webp", "webp"),
    ("application/pdf", "pdf"),
    ("video/mp4", "mp4"),
)
_CAMERAS = ("Canon EOS R5", "Nikon Z6", "Sony A7 IV", "Fujifilm X-T4", "iPhone 14 Pro")
_EVENT_KINDS = (
    "content.viewed",
    "content.viewed",
    "content.viewed",
    "content.updated",
    "content.updated",
    "content.created",
    "content.published",
    "comment.added",
    "media.uploaded",
    "user.login",
    "user.login",
    "search.performed",
)
_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 13_4) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/118.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:119.0) Gecko/20100101 Firefox/119.0",
    "contentflow-cli/2.3.1 node/20.9.0",
)
_FOOTER = (
    "This article is part of the {name} knowledge base. Content published here is reviewed by "
    "the {name} editorial team before release; if you spot an error, open a comment on the "
    "draft or contact the workspace owner. All trademarks belong to their respective owners. "
    "Subscribe to the {name} newsletter to get new guides, release notes and case studies "
    "delivered every week."
)


# -- plan and row generators -----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Row counts and the item -> workspace/author assignment, all derived from (size, seed)."""

    seed: int
    workspaces: int
    users: int
    items: int
    events: int
    user_ids: list[str]
    user_ws: list[int]
    ws_users: dict[int, list[str]]
    item_ws: list[int]
    item_author: list[str]

    @classmethod
    def make(cls, size_mb: int, seed: int) -> Plan:
        items = max(20, round((size_mb - BASE_MB) * MiB / BYTES_PER_ITEM))
        n_ws = min(500, max(3, items // 300))
        n_users = max(2 * n_ws, items // 12)
        rng = random.Random(f"{seed}:plan")
        user_ids = [new_uuid(rng) for _ in range(n_users)]
        user_ws = [i % n_ws + 1 for i in range(n_users)]
        ws_users: dict[int, list[str]] = {}
        for uid, ws in zip(user_ids, user_ws, strict=True):
            ws_users.setdefault(ws, []).append(uid)
        weights = [1.0 / (w + 1) ** 0.8 for w in range(n_ws)]
        item_ws = rng.choices(range(1, n_ws + 1), weights=weights, k=items)
        item_author = [rng.choice(ws_users[ws]) for ws in item_ws]
        return cls(
            seed, n_ws, n_users, items, items * EVENTS_PER_ITEM,
            user_ids, user_ws, ws_users, item_ws, item_author,
        )  # fmt: skip

    def ws_name(self, ws: int) -> str:
        return f"{WORDS[(ws * 7919 + self.seed) % 65536].capitalize()} {ws}"


def _migration_rows(plan: Plan) -> Iterator[str]:
    rng = random.Random(f"{plan.seed}:migrations")
    names = ("init", "add_media", "content_metadata", "revisions_diff", "events_log", "analytics")
    for n, name in enumerate(names):
        migration = f"2021{n + 1:02d}01000000_{name}"
        started = -86400 * (60 - 7 * n)
        checksum = hashlib.sha256(migration.encode()).hexdigest()
        yield line(new_uuid(rng), checksum, ts(started + 2), migration, None, None, ts(started), 1)


def _workspace_rows(plan: Plan) -> Iterator[str]:
    rng = random.Random(f"{plan.seed}:workspaces")
    for ws in range(1, plan.workspaces + 1):
        name = plan.ws_name(ws)
        settings = {
            "theme": rng.choice(("light", "dark", "system")),
            "locale": rng.choice(_LOCALES),
            "features": sorted(rng.sample(("ai", "sso", "audit", "webhooks", "i18n"), 2)),
            "seats": rng.randint(3, 400),
        }
        slug = name.lower().replace(" ", "-")
        created = rng.randrange(SPAN_SECONDS // 8)
        yield line(ws, slug, name, rng.choice(_PLANS), dumps(settings), ts(created))


def _user_rows(plan: Plan) -> Iterator[str]:
    rng = random.Random(f"{plan.seed}:users")
    for n, (uid, ws) in enumerate(zip(plan.user_ids, plan.user_ws, strict=True)):
        first, last = (w.capitalize() for w in words(rng, 2))
        email = f"{first.lower()}.{last.lower()}.{n}@{plan.ws_name(ws).split()[0].lower()}."
        created = SPAN_SECONDS // 8 + rng.randrange(SPAN_SECONDS // 2)
        login = None if rng.random() < 0.1 else ts(created + rng.randrange(SPAN_SECONDS // 2))
        role = "owner" if n < plan.workspaces else rng.choice(_ROLES)
        yield line(uid, ws, email + rng.choice(_TLDS), f"{first} {last}", role, ts(created), login)


@dataclass(frozen=True)
class Revision:
    number: int
    body: str
    diff: dict[str, Any]
    created: int
    words: int


def _item_history(plan: Plan, item: int) -> tuple[random.Random, str, list[Revision]]:
    """The title and every revision of content item ``item`` (1-based), deterministically."""
    rng = random.Random(f"{plan.seed}:item:{item}")
    heading = title(rng)
    ws = plan.item_ws[item - 1]
    head = f"# {heading}\n\n_{plan.ws_name(ws)} / {rng.choice(_LOCALES)}_\n\n"
    foot = "\n\n---\n\n" + _FOOTER.format(name=plan.ws_name(ws))
    lengths = [rng.randint(40, 140) for _ in range(rng.randint(4, 10))]
    paras = [paragraph(rng, k) for k in lengths]
    created = item * (SPAN_SECONDS // (plan.items + 1)) + rng.randrange(3600)
    diff: dict[str, Any] = {"op": "create", "paragraphs": len(paras)}
    revisions = []
    for number in range(1, rng.choice((1, 1, 2, 2, 3, 3, 4, 5)) + 1):
        if number > 1:
            created += rng.randrange(600, 7 * 86400)
            pos = rng.randrange(len(paras))
            op = rng.choice(("edit", "edit", "append", "delete")) if len(paras) > 3 else "append"
            before = lengths[pos]
            if op == "delete":
                del paras[pos], lengths[pos]
                diff = {"op": op, "paragraph": pos, "words": -before}
            else:
                k = rng.randint(40, 140)
                if op == "append":
                    pos = len(paras)
                    paras.append("")
                    lengths.append(0)
                paras[pos], lengths[pos] = paragraph(rng, k), k
                diff = {"op": op, "paragraph": pos, "words": k - (before if op == "edit" else 0)}
        body = head + "\n\n".join(paras) + foot
        revisions.append(Revision(number, body, diff, created, sum(lengths)))
    return rng, heading, revisions


def _content_rows(plan: Plan) -> Iterator[str]:
    for item in range(1, plan.items + 1):
        rng, heading, revisions = _item_history(plan, item)
        last = revisions[-1]
        status = rng.choice(_STATUSES)
        published = None
        if status in ("published", "archived"):
            published = ts(revisions[0].created + rng.randrange(86400))
        metadata = {
            "tags": sorted(set(words(rng, rng.randint(1, 5)))),
            "seo": {"title": heading[:60], "description": " ".join(words(rng, 18))},
            "locale": rng.choice(_LOCALES),
            "featured": rng.random() < 0.1,
            "readingTimeMinutes": last.words // 220 + 1,
            "revisionCount": len(revisions),
        }
        slug = "-".join(heading.lower().split()[:6]) + f"-{item}"
        yield line(
            item, plan.item_ws[item - 1], plan.item_author[item - 1], heading, slug, last.body,
            dumps(metadata), status, last.words, published,
            ts(revisions[0].created), ts(last.created),
        )  # fmt: skip


def _revision_rows(plan: Plan) -> Iterator[str]:
    rev_id = 0
    for item in range(1, plan.items + 1):
        _, _, revisions = _item_history(plan, item)
        authors = plan.ws_users[plan.item_ws[item - 1]]
        for rev in revisions:
            rev_id += 1
            author = authors[(item + rev.number) % len(authors)]
            diff = dumps(rev.diff)
            yield line(rev_id, item, rev.number, author, rev.body, diff, ts(rev.created))


def _media_rows(plan: Plan) -> Iterator[str]:
    rng = random.Random(f"{plan.seed}:media")
    step = SPAN_SECONDS // (plan.items + 1)
    for item in range(1, plan.items + 1):
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 4))):
            mime, ext = rng.choice(_MIMES)
            width = height = exif = None
            if mime.startswith("image/"):
                width, height = rng.choice(((1920, 1080), (1200, 800), (800, 800), (4032, 3024)))
                exif = dumps(
                    {
                        "camera": rng.choice(_CAMERAS),
                        "iso": rng.choice((100, 200, 400, 800, 1600)),
                        "fNumber": rng.choice((1.8, 2.8, 4.0, 5.6, 8.0)),
                        "exposure": f"1/{rng.choice((60, 125, 250, 500, 1000))}",
                        "gps": {
                            "lat": round(rng.uniform(-60, 70), 5),
                            "lon": round(rng.uniform(-180, 180), 5),
                        },
                    }
                )  # fmt: skip
            elif mime == "video/mp4":
                width, height = 1920, 1080
            filename = "-".join(words(rng, 3)) + f"-{rng.randrange(10000)}.{ext}"
            checksum = "\\x" + rng.randbytes(32).hex()
            size = rng.randint(20_000, 40_000_000)
            created = ts(item * step + rng.randrange(86400))
            yield line(
                new_uuid(rng), plan.item_ws[item - 1], item, filename, mime, size, width, height,
                checksum, exif, created,
            )  # fmt: skip


def _event_lines(
    rng: random.Random,
    first_id: int,
    count: int,
    start: int,
    step: int,
    pick: Callable[[random.Random], tuple[int, str]],
    max_item: int,
) -> Iterator[str]:
    """``count`` events with ids from ``first_id``, strictly increasing times from ``start``."""
    for n in range(count):
        ws, actor = pick(rng)
        kind = rng.choice(_EVENT_KINDS)
        payload: dict[str, Any] = {"actor": actor, "ip": f"10.{ws % 256}.{rng.randrange(256)}.7"}
        if kind.startswith(("content", "comment", "media")):
            payload["itemId"] = rng.randint(1, max_item)
        if kind == "search.performed":
            payload["query"] = " ".join(words(rng, rng.randint(1, 4)))
        elif kind == "comment.added":
            payload["text"] = paragraph(rng, rng.randint(5, 30))
        elif kind == "user.login":
            payload["userAgent"] = rng.choice(_AGENTS)
        elif kind == "content.updated":
            payload["fields"] = rng.sample(("title", "body", "metadata", "status"), 2)
        created = ts(start + n * step + rng.randrange(step))
        yield line(first_id + n, ws, kind, dumps(payload), created)


def _plan_picker(plan: Plan) -> Callable[[random.Random], tuple[int, str]]:
    def pick(rng: random.Random) -> tuple[int, str]:
        item = rng.randrange(plan.items)
        ws = plan.item_ws[item]
        return ws, rng.choice(plan.ws_users[ws])

    return pick


def populate(conn: psycopg.Connection[Any], size_mb: int, seed: int = 42) -> dict[str, int]:
    """Fill a fresh :func:`create_schema` database with about ``size_mb`` MiB; rows per table.

    Same ``size_mb`` and ``seed`` give identical table contents. Runs ANALYZE at the end.
    """
    plan = Plan.make(size_mb, seed)
    step = SPAN_SECONDS // (plan.events + 1)
    events = _event_lines(
        random.Random(f"{seed}:events"), 1, plan.events, 0, step, _plan_picker(plan), plan.items
    )
    loads: list[tuple[str, str, Iterable[str]]] = [
        (
            "_prisma_migrations",
            "id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, "
            "applied_steps_count",
            _migration_rows(plan),
        ),
        ("workspaces", "id, slug, name, plan, settings, created_at", _workspace_rows(plan)),
        (
            "users",
            "id, workspace_id, email, display_name, role, created_at, last_login_at",
            _user_rows(plan),
        ),
        (
            "content_items",
            "id, workspace_id, author_id, title, slug, body, metadata, status, word_count, "
            "published_at, created_at, updated_at",
            _content_rows(plan),
        ),
        ("revisions", _REVISION_COLUMNS, _revision_rows(plan)),
        (
            "media",
            "id, workspace_id, content_item_id, filename, mime_type, size_bytes, width, height, "
            "checksum, exif, created_at",
            _media_rows(plan),
        ),
        ("events", _EVENT_COLUMNS, events),
    ]
    counts: dict[str, int] = {}
    with conn.transaction(), conn.cursor() as cur:
        for table, columns, lines in loads:
            counts[table] = copy_lines(cur, table, columns, lines)
        cur.execute(
            "INSERT INTO analytics.daily_workspace_stats (workspace_id, day, events)"
            " SELECT workspace_id, (created_at AT TIME ZONE 'UTC')::date, count(*)"
            " FROM events GROUP BY 1, 2"
        )
        counts["analytics.daily_workspace_stats"] = cur.rowcount
        _reset_sequences(cur)
    conn.execute("ANALYZE")
    return counts


@dataclass(frozen=True)
class ChangeSummary:
    """Rows touched by :func:`append_heavy_change`."""

    events_inserted: int
    revisions_inserted: int
    items_updated: int


def append_heavy_change(
    conn: psycopg.Connection[Any], fraction: float = 0.01, seed: int = 7
) -> ChangeSummary:
    """About ``fraction`` of rows change, mostly appends (the incremental-dedup workload).

    Inserts ``fraction`` x the existing rows into ``events`` and ``revisions`` (a new revision
    appends a paragraph to the item's body), and flips the status of a tenth as many content items.
    Deterministic for a given database state and ``seed``.
    """
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT coalesce(max(id), 0) FROM events),"
            " (SELECT coalesce(extract(epoch FROM max(created_at))::bigint, 0) FROM events),"
            " (SELECT count(*) FROM revisions), (SELECT coalesce(max(id), 0) FROM revisions)"
        )
        n_events, max_event, last_ts, n_revs, max_rev = one_row(cur)
        cur.execute("SELECT id FROM content_items ORDER BY id")
        items = [row[0] for row in cur.fetchall()]
        cur.execute("SELECT workspace_id, id::text FROM users ORDER BY workspace_id, id")
        users = [(int(ws), str(uid)) for ws, uid in cur.fetchall()]
        rng = random.Random(f"{seed}:{n_events}:{n_revs}:{len(items)}")
        new_events = round(n_events * fraction)
        new_revs = min(round(n_revs * fraction), len(items))
        updates = min(max(1, round(len(items) * fraction / 10)), len(items))

        def pick(r: random.Random) -> tuple[int, str]:
            return r.choice(users)

        start = int(last_ts) + 60 - int(EPOCH.timestamp())
        lines = _event_lines(rng, max_event + 1, new_events, start, 45, pick, max(items))
        events_rows = copy_lines(cur, "events", _EVENT_COLUMNS, lines)
        revs = _revision_appends(cur, rng, sorted(rng.sample(items, new_revs)), max_rev)
        revision_rows = copy_lines(cur, "revisions", _REVISION_COLUMNS, revs)
        flipped = sorted(rng.sample(items, updates))
        cur.execute(
            "UPDATE content_items SET status = CASE status"
            + "".join(f" WHEN '{a}' THEN '{b}'" for a, b in _FLIP.items())
            + " END, updated_at = updated_at + interval '1 hour' WHERE id = ANY(%s)",
            (flipped,),
        )
        updated = cur.rowcount
        _reset_sequences(cur)
    return ChangeSummary(events_rows, revision_rows, updated)


def _revision_appends(
    cur: psycopg.Cursor[Any], rng: random.Random, item_ids: list[int], max_rev: int
) -> list[str]:
    cur.execute(
        "SELECT r.content_item_id, r.revision, r.body, r.author_id::text,"
        " extract(epoch FROM r.created_at)::bigint"
        " FROM revisions r JOIN (SELECT content_item_id, max(revision) AS revision FROM revisions"
        "  WHERE content_item_id = ANY(%s) GROUP BY 1) m USING (content_item_id, revision)"
        " ORDER BY 1",
        (item_ids,),
    )
    lines = []
    for n, (item, number, body, author, stamp) in enumerate(cur.fetchall(), start=1):
        k = rng.randint(40, 140)
        head, sep, foot = str(body).rpartition("\n\n---\n\n")
        new_body = f"{head}\n\n{paragraph(rng, k)}{sep}{foot}"
        diff = dumps({"op": "append", "words": k})
        created = int(stamp) + rng.randrange(600, 86400) - int(EPOCH.timestamp())
        lines.append(line(max_rev + n, item, number + 1, author, new_body, diff, ts(created)))
    return lines


def _reset_sequences(cur: psycopg.Cursor[Any]) -> None:
    for table in _ID_TABLES:
        cur.execute(
            sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'id'), max(id)) FROM {}").format(
                sql.Literal(table), sql.Identifier(table)
            )
        )
