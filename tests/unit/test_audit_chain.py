"""The audit hash chain (catalog/audit_records.py): pure functions, tables and properties."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentflow_backupd.catalog.audit_records import (
    GENESIS_HASH,
    AuditEvent,
    chained,
    event_hash,
    find_break,
    rehash,
)
from contentflow_backupd.ops.audit import settings_digest

T0 = datetime(2026, 11, 24, 5, 0, 0, 123456, tzinfo=UTC)


def chain(n: int) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    for i in range(n):
        events.append(
            chained(
                events[-1] if events else None,
                at=T0 + timedelta(minutes=i),
                actor="backupd@host",
                action="backup" if i % 2 else "verify",
                outcome="succeeded",
                objects=[f"b{i}"],
                details={"i": i, "nested": {"x": [1, 2.5, "é"]}},
            )
        )
    return events


def test_a_chain_links_each_record_to_the_one_before() -> None:
    events = chain(3)
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS_HASH
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash
    assert all(event_hash(e) == e.hash and len(e.hash) == 64 for e in events)
    assert find_break(events) is None
    assert find_break([]) is None


def test_the_hash_covers_every_field_and_json_round_trips() -> None:
    event = chain(1)[0]
    for name, value in [
        ("at", T0 + timedelta(microseconds=1)),
        ("actor", "mallory@host"),
        ("action", "restore"),
        ("outcome", "failed"),
        ("objects", ("other",)),
        ("details", {"i": 1}),
        ("prev_hash", "1" * 64),
        ("seq", 2),
    ]:
        assert event_hash(dataclasses.replace(event, **{name: value})) != event.hash, name
    assert AuditEvent.from_json(event.to_json()) == event


@pytest.mark.parametrize(
    ("tamper", "seq", "words"),
    [
        (lambda ev: [ev[0], dataclasses.replace(ev[1], outcome="failed"), *ev[2:]], 2, "edited"),
        (
            lambda ev: [ev[0], rehash(dataclasses.replace(ev[1], outcome="failed")), *ev[2:]],
            3,
            "chain broken",
        ),
        (lambda ev: [ev[0], *ev[2:]], 3, "deleted or reordered"),
        (lambda ev: [ev[0], ev[2], ev[1], *ev[3:]], 3, "deleted or reordered"),
        (lambda ev: ev[1:], 2, "deleted or reordered"),
    ],
    ids=["edited", "edited-and-rehashed", "deleted", "reordered", "first-deleted"],
)
def test_tampering_is_found_at_the_first_bad_record(
    tamper: Callable[[list[AuditEvent]], list[AuditEvent]], seq: int, words: str
) -> None:
    broken = find_break(tamper(chain(5)))
    assert broken is not None
    assert (broken.seq, words in broken.problem) == (seq, True), broken


@given(n=st.integers(2, 12), data=st.data())
def test_any_single_edit_is_detected(n: int, data: st.DataObject) -> None:
    events = chain(n)
    i = data.draw(st.integers(0, n - 1))
    field = data.draw(st.sampled_from(["actor", "action", "outcome", "objects", "details", "at"]))
    value = {
        "actor": "x@y",
        "action": "delete",
        "outcome": "refused",
        "objects": ("zz",),
        "details": {"changed": True},
        "at": T0 - timedelta(days=1),
    }[field]
    events[i] = dataclasses.replace(events[i], **{field: value})
    broken = find_break(events)
    assert broken is not None and broken.seq == i + 1


def test_settings_digest_names_no_value_and_changes_with_any_value() -> None:
    whole, keys = settings_digest({"BACKUPD_CLUSTER": "main", "BACKUPD_MODE": "logical"})
    assert set(keys) == {"BACKUPD_CLUSTER", "BACKUPD_MODE"}
    assert "main" not in str(keys) and "logical" not in str(keys)
    other, other_keys = settings_digest({"BACKUPD_CLUSTER": "main", "BACKUPD_MODE": "physical"})
    assert other != whole and other_keys["BACKUPD_CLUSTER"] == keys["BACKUPD_CLUSTER"]
