"""Seeded text and row helpers for the demo data: a Zipf vocabulary and COPY text formatting."""

from __future__ import annotations

import array
import bisect
import json
import random
import sys
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.copy import QueuedLibpqWriter

EPOCH = datetime(2022, 1, 1, tzinfo=UTC)
_FLUSH_CHARS = 1 << 20

_COMMON_TEXT = (
    "the of and to a in is that for it as with was on be by this are from at or an have not "
    "which but all they their can more has one will we our you your new about also when there "
    "content team workspace editor draft publish release review page article guide update "
    "customer product design launch feature campaign brand story audience platform data "
    "workflow approval schedule channel asset image video search report insight strategy "
    "growth market sales support developer api integration plugin template section heading "
    "version history change comment mention feedback task status owner deadline quarter goal"
)
_SYLLABLES_TEXT = (
    "ka lo mi ne tor vel an es ri um par sen dol ex qui ta ber gan fi os lu re co ma ti "
    "pre con ver sta lin mor dra che tal nis pho gra ly ment tion ous ive ple"
)


def _build_tables() -> tuple[list[str], list[str]]:
    """A 65536-slot Zipf table of words, and the same words with sentence punctuation."""
    rng = random.Random(0x5EED)  # fixed: the vocabulary never depends on the data seed
    syllables = _SYLLABLES_TEXT.split()
    pseudo: set[str] = set()
    while len(pseudo) < 3000:
        pseudo.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    shuffled = sorted(pseudo)
    rng.shuffle(shuffled)
    ranked = list(dict.fromkeys(_COMMON_TEXT.split())) + shuffled
    cumulative: list[float] = []
    total = 0.0
    for rank in range(len(ranked)):
        total += 1.0 / (rank + 3) ** 1.05
        cumulative.append(total)
    words = [
        ranked[min(bisect.bisect(cumulative, (slot + 0.5) / 65536 * total), len(ranked) - 1)]
        for slot in range(65536)
    ]
    tokens = []
    for word in words:
        roll = rng.random()
        tokens.append(word + "." if roll < 0.07 else word + "," if roll < 0.12 else word)
    return words, tokens


WORDS, _TOKENS = _build_tables()
_WORD_AT = WORDS.__getitem__
_TOKEN_AT = _TOKENS.__getitem__


def _indexes(rng: random.Random, count: int) -> array.array[int]:
    idx = array.array("H")
    idx.frombytes(rng.randbytes(2 * count))
    if sys.byteorder == "big":  # randbytes is little-endian-defined; keep the output portable
        idx.byteswap()
    return idx


def words(rng: random.Random, count: int) -> list[str]:
    return list(map(_WORD_AT, _indexes(rng, count)))


def paragraph(rng: random.Random, count: int) -> str:
    text = " ".join(map(_TOKEN_AT, _indexes(rng, count))).rstrip(",.")
    return text[0].upper() + text[1:] + "."


def title(rng: random.Random) -> str:
    return " ".join(w.capitalize() for w in words(rng, rng.randint(3, 8)))


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def ts(seconds: int) -> str:
    return (EPOCH + timedelta(seconds=seconds)).isoformat()


def _esc(value: str) -> str:
    """Escape a value for COPY text format."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if "\t" in value:
        value = value.replace("\t", "\\t")
    if "\r" in value:
        value = value.replace("\r", "\\r")
    return value


def line(*fields: object) -> str:
    return "\t".join("\\N" if f is None else _esc(str(f)) for f in fields) + "\n"


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def copy_lines(cur: psycopg.Cursor[Any], table: str, columns: str, lines: Iterable[str]) -> int:
    """Stream ``lines`` (COPY text rows) into ``table``; returns the row count."""
    rows = 0
    buf: list[str] = []
    size = 0
    stmt = f"COPY {table} ({columns}) FROM STDIN"
    with cur.copy(stmt, writer=QueuedLibpqWriter(cur)) as copy:
        for row in lines:
            buf.append(row)
            size += len(row)
            rows += 1
            if size >= _FLUSH_CHARS:
                copy.write("".join(buf))
                buf.clear()
                size = 0
        if buf:
            copy.write("".join(buf))
    return rows
