"""plan_expiry: table tests of each rule, and hypothesis properties over random histories."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contentflow_backupd.model import BackupKind, BackupMode
from contentflow_backupd.ops.retention.plan import (
    WAL_HELD,
    WAL_HISTORY,
    WAL_NEEDED,
    WAL_OLD,
    WAL_ROLL_FORWARD,
    WAL_YOUNG,
    ExpiryPlan,
    RetentionPolicy,
    StoredBackup,
    StoredGeneration,
    StoredWal,
    plan_expiry,
)

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
H = 3600.0
DAY = 86400.0
POLICY = RetentionPolicy(full_s=30 * DAY, incremental_s=7 * DAY, wal_s=DAY, min_full=1, gc_grace_s=DAY)
_serial = iter(range(1, 1 << 24))


def backup_id(started: datetime, kind: BackupKind) -> str:
    tag = "full" if kind == "full" else "incr"
    return f"{started:%Y%m%dT%H%M%SZ}-{tag}-{next(_serial):06x}"


def make_backup(
    age_days: float,
    kind: BackupKind = "full",
    mode: BackupMode = "logical",
    generation: str | None = None,
    wal: tuple[str, str] | None = None,
) -> StoredBackup:
    finished = NOW - timedelta(days=age_days)
    bid = backup_id(finished - timedelta(minutes=5), kind)
    return StoredBackup(
        id=bid,
        kind=kind,
        manifest_key=f"main/backups/{bid}.json",
        manifest_bytes=1000,
        mode=mode,
        generation=generation or bid,
        finished_at=finished,
        wal_first=wal[0] if wal else None,
        wal_last=wal[1] if wal else None,
    )


def unreadable(age_days: float, kind: BackupKind) -> StoredBackup:
    bid = backup_id(NOW - timedelta(days=age_days), kind)
    return StoredBackup(bid, kind, f"main/backups/{bid}.json", 500, error="object failed authentication")


def gen(name: str, age_days: float | None, objects: int = 10) -> StoredGeneration:
    newest = None if age_days is None else NOW - timedelta(days=age_days)
    return StoredGeneration(name, objects, objects * 1000, newest)


def seg(n: int, tli: int = 1) -> str:
    return f"{tli:08X}{n // 256:08X}{n % 256:08X}"


def wal(name: str, age_days: float | None, size: int = 16) -> StoredWal:
    modified = None if age_days is None else NOW - timedelta(days=age_days)
    return StoredWal(f"main/wal/{name[:8]}/{name}", name, size, modified)


def plan(
    backups: list[StoredBackup],
    generations: list[StoredGeneration] | None = None,
    wals: list[StoredWal] | None = None,
    policy: RetentionPolicy = POLICY,
) -> ExpiryPlan:
    return plan_expiry(backups, generations or [], wals or [], policy, NOW)


def actions(p: ExpiryPlan) -> dict[str, str]:
    return {d.backup.id: d.action for d in p.backups}


# -- backups ---------------------------------------------------------------------------------
def test_the_only_full_is_kept_however_old() -> None:
    old = make_backup(400)
    p = plan([old])
    assert actions(p) == {old.id: "keep"}
    assert "newest logical full" in p.backups[0].reason


def test_old_fulls_go_and_the_newest_stays() -> None:
    a, b, c = make_backup(40), make_backup(35), make_backup(1)
    p = plan([c, a, b])
    assert actions(p) == {a.id: "delete", b.id: "delete", c.id: "keep"}
    assert [d.backup.id for d in p.backups] == [a.id, b.id, c.id]  # oldest first
    assert "older than retention.full (30d)" in p.backups[0].reason


def test_the_newest_full_is_kept_even_when_it_is_old_and_newer_incrementals_exist() -> None:
    full = make_backup(60)
    incr = make_backup(2, "incremental", generation=full.id)
    assert actions(plan([full, incr])) == {full.id: "keep", incr.id: "keep"}


def test_min_full_keeps_that_many_newest_fulls() -> None:
    fulls = [make_backup(age) for age in (90, 60, 45, 40, 1)]
    p = plan(fulls, policy=RetentionPolicy(30 * DAY, 7 * DAY, DAY, min_full=3))
    assert [actions(p)[f.id] for f in fulls] == ["delete", "delete", "keep", "keep", "keep"]
    assert "retention.min_full" in p.backups[2].reason


def test_fulls_started_in_one_second_keep_the_newest_and_the_greatest_id() -> None:
    finished = NOW - timedelta(days=40)
    ids = ["20261015T120000Z-full-000001", "20261015T120000Z-full-ffffff", "20261015T120000Z-full-888888"]
    fulls = [
        StoredBackup(i, "full", f"main/backups/{i}.json", 1, "logical", i, finished + timedelta(seconds=n))
        for n, i in enumerate(ids)
    ]
    got = {d.backup.id: d.reason for d in plan(fulls).backups if d.action == "keep"}
    assert set(got) == {ids[2], ids[1]}  # newest by finished_at, and the greatest id
    assert "newest logical full" in got[ids[2]] and "incrementals join" in got[ids[1]]


def test_a_full_is_kept_at_exactly_its_retention_and_deleted_just_after() -> None:
    newest = make_backup(0)
    edge = make_backup(30)
    over = make_backup(30 + 1 / DAY)
    assert actions(plan([edge, over, newest])) == {edge.id: "keep", over.id: "delete", newest.id: "keep"}


def test_protection_is_per_mode() -> None:
    logical = make_backup(100, mode="logical")
    phys_old = make_backup(50, mode="physical")
    phys_new = make_backup(1, mode="physical")
    p = plan([logical, phys_old, phys_new])
    assert actions(p) == {logical.id: "keep", phys_old.id: "delete", phys_new.id: "keep"}
    assert "newest physical full" in dict((d.backup.id, d.reason) for d in p.backups)[phys_new.id]


def test_incrementals_expire_on_their_own_retention() -> None:
    full = make_backup(10)
    old = make_backup(8, "incremental", generation=full.id)
    young = make_backup(6, "incremental", generation=full.id)
    assert actions(plan([full, old, young])) == {full.id: "keep", old.id: "delete", young.id: "keep"}


def native(age_days: float, parent: StoredBackup) -> StoredBackup:
    b = make_backup(age_days, "incremental", "physical", generation=parent.generation)
    return StoredBackup(**{**b.__dict__, "parent_id": parent.id, "native": True})


@pytest.mark.parametrize(
    ("ages", "natives", "expected"),
    [
        # full 40 days (a newer full exists), incrementals 20, 10 and 1 day old (retention: fulls
        # 30 days, incrementals 7): the newest keeps its whole chain
        ((40, 20, 10, 1), (True, True, True), ("keep", "keep", "keep", "keep")),
        # a chunk incremental is a chain's base: what is before it may go
        ((40, 20, 10, 1), (True, False, True), ("delete", "delete", "keep", "keep")),
        # only chunk incrementals: each expires on its own
        ((40, 20, 10, 1), (False, False, False), ("delete", "delete", "delete", "keep")),
        # an expired native at the end of the chain keeps nothing alive
        ((40, 20, 10), (True, True), ("delete", "delete", "delete")),
    ],
)
def test_a_kept_native_incremental_keeps_its_chain_whole(
    ages: tuple[float, ...], natives: tuple[bool, ...], expected: tuple[str, ...]
) -> None:
    full = make_backup(ages[0], "full", "physical")
    chain = [full]
    for age, is_native in zip(ages[1:], natives, strict=True):
        parent = chain[-1]
        if is_native:
            chain.append(native(age, parent))
        else:
            chain.append(make_backup(age, "incremental", "physical", generation=full.id))
    newer_full = make_backup(0.5, "full", "physical")
    p = plan([*chain, newer_full])
    got = actions(p)
    assert tuple(got[b.id] for b in chain) == expected
    reasons = {d.backup.id: d.reason for d in p.backups}
    for b, action in zip(chain[:-1], expected[:-1], strict=True):
        if action == "keep":
            assert "native incremental" in reasons[b.id] and "needs it" in reasons[b.id]


def test_an_unreadable_manifest_is_kept_and_never_protects_nor_counts_as_a_full() -> None:
    broken = unreadable(1, "full")
    old = make_backup(90)
    p = plan([old, broken])
    assert actions(p) == {old.id: "keep", broken.id: "keep"}  # old is still the newest readable full
    assert "unreadable" in p.backups[1].reason and len(p.warnings) == 1


# -- generations -----------------------------------------------------------------------------
def test_generations_are_kept_while_used_and_collected_after_grace() -> None:
    expired = make_backup(40)
    kept_full = make_backup(20)
    orphan_full = make_backup(50)  # expired full whose generation an incremental still uses
    incr = make_backup(3, "incremental", generation=orphan_full.id)
    p = plan(
        [expired, kept_full, orphan_full, incr],
        [
            gen(expired.id, 39),
            gen(kept_full.id, 19),
            gen(orphan_full.id, 3),
            gen("20260101T000000Z-full-0000aa", 2),  # a crashed full: no manifest, old chunks
            gen("20261124T110000Z-full-0000bb", 0.5),  # being written now: within grace
            gen("20261001T000000Z-full-0000cc", None),  # age unknown
        ],
    )
    assert actions(p)[orphan_full.id] == "delete"
    got = {d.generation.generation: (d.action, d.reason) for d in p.generations}
    assert got[expired.id][0] == "delete" and "older than retention.gc_grace" in got[expired.id][1]
    assert got[kept_full.id] == ("keep", f"used by kept backup {kept_full.id}")
    assert got[orphan_full.id] == ("keep", f"used by kept backup {incr.id}")
    assert got["20260101T000000Z-full-0000aa"][0] == "delete"
    assert got["20261124T110000Z-full-0000bb"][0] == "keep"
    assert "a backup may still be writing it" in got["20261124T110000Z-full-0000bb"][1]
    assert got["20261001T000000Z-full-0000cc"][0] == "keep"
    assert p.delete_bytes == 2 * 1000 + 2 * 10 * 1000


def test_unreadable_manifests_hold_the_generations_they_may_use() -> None:
    newest = make_backup(1)
    a = make_backup(60)
    b = make_backup(50)
    broken_incr = unreadable(45, "incremental")  # may belong to a's generation (or older)
    c = make_backup(40)
    broken_full = unreadable(35, "full")
    gens = [gen(x, 30) for x in (a.id, b.id, c.id, broken_full.id, newest.id)]
    p = plan([newest, a, b, c, broken_incr, broken_full], gens)
    got = {d.generation.generation: d.action for d in p.generations}
    assert got == {a.id: "keep", b.id: "keep", c.id: "delete", broken_full.id: "keep", newest.id: "keep"}


# -- WAL -------------------------------------------------------------------------------------
def test_wal_rules() -> None:
    old_phys = make_backup(20, mode="physical", wal=(seg(10), seg(11)))
    gone_phys = make_backup(40, mode="physical", wal=(seg(5), seg(6)))
    new_phys = make_backup(2, mode="physical", wal=(seg(30), seg(31)))
    files = [
        wal(seg(5), 40),  # only the expired backup needed it
        wal(seg(9), 21),
        wal(seg(10), 20),
        wal(seg(11), 20),
        wal(f"{seg(11)}.00000028.backup", 20),
        wal(seg(12), 19),
        wal(seg(29), 0.5),
        wal(seg(30), 2.1),
        wal(f"{seg(30)}.00000060.backup", 2),
        wal(seg(40), 1.5),
        wal(seg(3, tli=2), 1.5),  # a later timeline sorts after
        wal("00000002.history", 300),
    ]
    p = plan([old_phys, gone_phys, new_phys], wals=files)
    assert actions(p)[gone_phys.id] == "delete"
    got = {d.wal.name: d.reason for d in p.wal}
    assert got == {
        seg(5): WAL_OLD,
        seg(9): WAL_OLD,
        seg(10): WAL_NEEDED,
        seg(11): WAL_NEEDED,
        f"{seg(11)}.00000028.backup": WAL_NEEDED,
        seg(12): WAL_OLD,
        seg(29): WAL_YOUNG,
        seg(30): WAL_NEEDED,
        f"{seg(30)}.00000060.backup": WAL_NEEDED,
        seg(40): WAL_ROLL_FORWARD,
        seg(3, tli=2): WAL_ROLL_FORWARD,
        "00000002.history": WAL_HISTORY,
    }
    report = p.to_json()["wal"]
    assert report["delete_segments"] == 3 and report["delete_bytes"] == 48
    assert (report["first"], report["last"]) == (seg(5), seg(12))
    assert report["kept_segments"] == 9 and report["kept_reasons"][WAL_NEEDED] == 5


def test_without_physical_backups_old_wal_goes_but_history_stays() -> None:
    p = plan([make_backup(1)], wals=[wal(seg(1), 3), wal(seg(2), 0.1), wal("00000003.history", 3)])
    assert [d.action for d in p.wal] == ["delete", "keep", "keep"]


def test_an_unreadable_manifest_stops_wal_deletion() -> None:
    p = plan([make_backup(1), unreadable(3, "incremental")], wals=[wal(seg(1), 30)])
    assert [(d.action, d.reason) for d in p.wal] == [("keep", WAL_HELD)]


# -- the report and the policy ---------------------------------------------------------------
def test_to_json_shape() -> None:
    full = make_backup(40)
    newest = make_backup(1)
    p = plan([full, newest], [gen(full.id, 39)], [wal(seg(1), 3)])
    out = p.to_json()
    assert set(out) >= {"backups", "generations", "wal", "plan_delete_bytes", "stored_bytes"}
    assert out["backups"][0] == {
        "id": full.id,
        "kind": "full",
        "mode": "logical",
        "finished_at": full.finished_at.isoformat().replace("+00:00", "Z") if full.finished_at else None,
        "action": "delete",
        "reason": out["backups"][0]["reason"],
    }
    assert out["generations"] == [
        {
            "generation": full.id,
            "objects": 10,
            "bytes": 10000,
            "action": "delete",
            "reason": out["generations"][0]["reason"],
        }
    ]
    assert set(out["wal"]) >= {"delete_segments", "delete_bytes", "first", "last", "kept_segments"}
    assert out["plan_delete_bytes"] == 1000 + 10000 + 16
    assert out["stored_bytes"] == 2000 + 10000 + 16


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_full": 0},
        {"full_s": 0},
        {"wal_s": -1},
        {"gc_grace_s": 0},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    base = {"full_s": DAY, "incremental_s": DAY, "wal_s": DAY, "min_full": 1, "gc_grace_s": DAY}
    base.update(kwargs)
    with pytest.raises(ValueError):
        RetentionPolicy(**base)  # type: ignore[arg-type]


# -- properties ------------------------------------------------------------------------------
SEG_MINUTES = 15  # one WAL segment per 15 minutes in the generated histories


def _num(name: str) -> int:
    return int(name[8:16], 16) * 256 + int(name[16:24], 16)


def _seg_at(t: datetime) -> int:
    return int((t - (NOW - timedelta(days=200))).total_seconds() // (SEG_MINUTES * 60))


@st.composite
def histories(
    draw: st.DrawFn,
) -> tuple[list[StoredBackup], list[StoredGeneration], list[StoredWal], RetentionPolicy]:
    policy = RetentionPolicy(
        full_s=draw(st.integers(1, 60)) * DAY,
        incremental_s=draw(st.integers(1, 30)) * DAY,
        wal_s=draw(st.integers(1, 10 * 24)) * H,
        min_full=draw(st.integers(1, 4)),
        gc_grace_s=draw(st.integers(1, 72)) * H,
    )
    starts = sorted(draw(st.lists(st.integers(0, 120 * 24 * 60), max_size=30)), reverse=True)  # minutes ago
    last_full: dict[str, str] = {}
    last: dict[str, str] = {}  # the newest backup of each mode: a native incremental's parent
    backups: list[StoredBackup] = []
    for minutes in starts:
        started = NOW - timedelta(minutes=minutes)
        kind: BackupKind = draw(st.sampled_from(["full", "incremental"]))
        mode: BackupMode = draw(st.sampled_from(["logical", "physical"]))
        if kind == "incremental" and mode not in last_full:
            kind = "full"
        bid = backup_id(started, kind)
        generation = bid if kind == "full" else last_full[mode]
        if kind == "full":
            last_full[mode] = bid
        finished = started + timedelta(minutes=draw(st.integers(0, 30)))
        parent = last.get(mode)
        last[mode] = bid
        native = kind == "incremental" and mode == "physical" and draw(st.booleans())
        if draw(st.integers(0, 15)) == 0:
            backups.append(StoredBackup(bid, kind, f"main/backups/{bid}.json", 10, error="damaged"))
            continue
        wal_range = (seg(_seg_at(started)), seg(_seg_at(finished) + draw(st.integers(0, 2))))
        backups.append(
            StoredBackup(
                id=bid,
                kind=kind,
                manifest_key=f"main/backups/{bid}.json",
                manifest_bytes=10,
                mode=mode,
                generation=generation,
                finished_at=finished,
                wal_first=wal_range[0] if mode == "physical" else None,
                wal_last=wal_range[1] if mode == "physical" else None,
                parent_id=parent if kind == "incremental" else None,
                native=native,
            )
        )
    names = {b.generation or b.id for b in backups} | set(
        draw(
            st.lists(st.sampled_from([f"2026010{i}T000000Z-full-00000{i}" for i in range(1, 9)]), max_size=4)
        )
    )
    generations = [
        StoredGeneration(
            name,
            3,
            300,
            None if draw(st.integers(0, 10)) == 0 else NOW - timedelta(hours=draw(st.integers(0, 2000))),
        )
        for name in sorted(names)
    ]
    top = _seg_at(NOW)
    numbers = draw(st.sets(st.integers(top - 130 * 24 * 4, top), max_size=60))
    for b in backups:  # the archive holds the WAL of most physical backups
        if b.wal_first and b.wal_last and draw(st.integers(0, 4)):
            numbers |= set(range(_num(b.wal_first), _num(b.wal_last) + 1))
    wals = [wal(seg(n), (top - n) * SEG_MINUTES / (24 * 60)) for n in sorted(numbers)]
    wals += [
        wal(f"{seg(n)}.partial", 50)
        for n in draw(st.sets(st.sampled_from(sorted(numbers) or [1]), max_size=2))
    ]
    wals += [
        wal(f"{t:08X}.history", draw(st.integers(0, 300)))
        for t in draw(st.sets(st.integers(2, 5), max_size=3))
    ]
    return backups, generations, wals, policy


def _newest_first(backups: list[StoredBackup], mode: str) -> list[StoredBackup]:
    fulls = [b for b in backups if b.readable and b.kind == "full" and b.mode == mode]
    return sorted(fulls, key=lambda b: (b.finished_at, b.id), reverse=True)


@settings(max_examples=300, deadline=None)
@given(histories())
def test_properties_of_every_plan(
    history: tuple[list[StoredBackup], list[StoredGeneration], list[StoredWal], RetentionPolicy],
) -> None:
    backups, generations, wals, policy = history
    p = plan_expiry(backups, generations, wals, policy, NOW)
    action = actions(p)
    kept = [b for b in backups if action[b.id] == "keep"]
    deleted = [b for b in backups if action[b.id] == "delete"]

    for mode in ("logical", "physical"):
        fulls = _newest_first(backups, mode)
        # the newest successful full of a mode is never planned for deletion, nor the one with
        # the greatest id (the generation new incrementals join)
        if fulls:
            assert action[fulls[0].id] == "keep"
            assert action[max(f.id for f in fulls)] == "keep"
        # at least min_full fulls are kept (all there are, when fewer)
        assert sum(action[f.id] == "keep" for f in fulls) >= min(policy.min_full, len(fulls))
        assert all(action[f.id] == "keep" for f in fulls[: policy.min_full])

    # unreadable manifests are never deleted
    assert all(b.readable for b in deleted)
    # deletions respect the ages, and nothing expired and unprotected is kept
    protected = {
        f.id for mode in ("logical", "physical") for f in _newest_first(backups, mode)[: policy.min_full]
    }
    protected |= {
        max(f.id for f in fs) for mode in ("logical", "physical") if (fs := _newest_first(backups, mode))
    }
    # a kept native incremental keeps its parent (so its whole chain, up to its base)
    by_id = {b.id: b for b in backups}
    for b in kept:
        if b.native and b.parent_id in by_id:
            assert action[b.parent_id or ""] == "keep"
    needed = {b.parent_id for b in kept if b.native}
    for b in backups:
        if not b.readable or b.id in protected:
            continue
        if b.id in needed:
            assert action[b.id] == "keep"
            continue
        assert b.finished_at is not None
        limit = policy.full_s if b.kind == "full" else policy.incremental_s
        assert (action[b.id] == "delete") == ((NOW - b.finished_at).total_seconds() > limit)

    # no kept backup's generation is collected; collected ones are older than the grace
    gen_action = {d.generation.generation: d.action for d in p.generations}
    for b in kept:
        if b.generation is not None:
            assert gen_action.get(b.generation, "keep") == "keep"
    for d in p.generations:
        if d.action == "delete":
            assert d.generation.newest_modified is not None
            assert (NOW - d.generation.newest_modified).total_seconds() > policy.gc_grace_s

    # no WAL a kept physical backup needs is deleted, nor WAL after the newest one's start
    wal_deleted = [d.wal for d in p.wal if d.action == "delete"]
    physical = [b for b in kept if b.readable and b.mode == "physical"]
    for w in wal_deleted:
        for b in physical:
            assert b.wal_first is not None and b.wal_last is not None
            assert not b.wal_first <= w.name[:24] <= b.wal_last
        if physical:
            newest = max(physical, key=lambda b: (b.finished_at, b.id))
            assert newest.wal_first is not None and w.name[:24] < newest.wal_first
        assert w.modified is not None and (NOW - w.modified).total_seconds() > policy.wal_s
    # no history file is deleted; nothing at all while a manifest is unreadable
    assert not [w for w in wal_deleted if w.name.endswith(".history")]
    if any(not b.readable for b in backups):
        assert wal_deleted == []
        assert all(action[b.id] == "keep" for b in backups if not b.readable)

    # the plan does not depend on the order of its inputs
    shuffled = random.Random(len(backups)).sample
    again = plan_expiry(
        shuffled(backups, len(backups)),
        shuffled(generations, len(generations)),
        shuffled(wals, len(wals)),
        policy,
        NOW,
    )
    assert again == p
