"""Audit records and their hash chain: pure data and pure functions (no database, no I/O).

Each ``AuditEvent`` stores the hash of the one before it (``prev_hash``; ``GENESIS_HASH`` for the
first) and its own ``hash``: SHA-256 over the canonical JSON of every field but ``hash`` (keys
sorted, no spaces, UTF-8, ``at`` as ISO 8601 UTC with microseconds). Editing a record changes its
hash; deleting or reordering records breaks the ``prev_hash`` links or the ``seq`` sequence.
``find_break`` names the first record where the chain does not hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contentflow_backupd.model import iso, parse_iso

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditEvent:
    """One audit record. ``seq`` counts from 1 without gaps; ``actor`` is ``user@host``;
    ``outcome`` is ``succeeded``, ``failed`` or ``refused`` (free text is accepted);
    ``objects`` names what the operation concerned (deleted backups, key ids ...)."""

    seq: int
    at: datetime
    actor: str
    action: str
    outcome: str
    objects: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    def body(self) -> dict[str, Any]:
        """Every field but ``hash``, as JSON values: what the hash covers."""
        return {
            "seq": self.seq,
            "at": iso(self.at),
            "actor": self.actor,
            "action": self.action,
            "outcome": self.outcome,
            "objects": list(self.objects),
            "details": dict(self.details),
            "prev_hash": self.prev_hash,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditEvent:
        """The inverse of ``to_json``; ``ValueError`` (or ``KeyError``/``TypeError``) when malformed."""
        at = parse_iso(str(data["at"]))
        if at is None:
            raise ValueError("audit record without a time")
        return cls(
            seq=int(data["seq"]),
            at=at,
            actor=str(data["actor"]),
            action=str(data["action"]),
            outcome=str(data["outcome"]),
            objects=tuple(str(o) for o in data.get("objects") or ()),
            details=dict(data.get("details") or {}),
            prev_hash=str(data["prev_hash"]),
            hash=str(data["hash"]),
        )


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data (what a JSON column gives back): tuples become lists,
    anything else unknown its ``str``."""
    return json.loads(canonical_json(value))


def event_hash(event: AuditEvent) -> str:
    return hashlib.sha256(canonical_json(event.body()).encode()).hexdigest()


def chained(
    prev: AuditEvent | None,
    *,
    at: datetime,
    actor: str,
    action: str,
    outcome: str,
    objects: Sequence[str] = (),
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """The record that follows ``prev`` (None: the first record), with its hash."""
    event = AuditEvent(
        seq=1 if prev is None else prev.seq + 1,
        at=at,
        actor=actor,
        action=action,
        outcome=outcome,
        objects=tuple(str(o) for o in objects),
        details=json_safe(dict(details or {})),
        prev_hash=GENESIS_HASH if prev is None else prev.hash,
    )
    return rehash(event)


def rehash(event: AuditEvent) -> AuditEvent:
    return AuditEvent(**{**event.__dict__, "hash": event_hash(event)})


@dataclass(frozen=True)
class ChainBreak:
    """Where a chain stops holding: the ``seq`` of the first bad record and why."""

    seq: int
    problem: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "problem": self.problem}


def find_break(events: Sequence[AuditEvent], *, start: AuditEvent | None = None) -> ChainBreak | None:
    """The first record (in the given order) that does not chain: its hash does not match its
    content (edited), its ``seq`` is not one more than the previous (deleted or reordered), or
    its ``prev_hash`` is not the previous record's hash. None when the whole chain holds.
    ``start``: the record before ``events[0]`` (None: ``events`` must begin at seq 1)."""
    prev = start
    for event in events:
        expected_seq = 1 if prev is None else prev.seq + 1
        if event.seq != expected_seq:
            return ChainBreak(
                event.seq,
                f"expected record {expected_seq} here, found {event.seq} (records deleted or reordered)",
            )
        if event_hash(event) != event.hash:
            return ChainBreak(event.seq, "its content does not match its hash (record edited)")
        expected_prev = GENESIS_HASH if prev is None else prev.hash
        if event.prev_hash != expected_prev:
            return ChainBreak(
                event.seq, "its prev_hash is not the hash of the record before it (chain broken)"
            )
        prev = event
    return None
