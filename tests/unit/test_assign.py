"""The fleet's assignment rule (daemon/assign.py): tables, then properties."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentflow_backupd.daemon.assign import assign, score

SIX = ["orders", "billing", "web", "search", "auth", "mail"]


def everywhere(members: list[str], clusters: list[str]) -> dict[str, list[str]]:
    return {member: list(clusters) for member in members}


def loads(mapping: dict[str, str]) -> Counter[str]:
    return Counter(mapping.values())


# -- tables ----------------------------------------------------------------------------------


def test_the_score_is_pinned_so_every_version_computes_the_same_map() -> None:
    assert score("orders", "host-a") == 425414084919943178
    assert score("billing", "host-b") == 6608111819509416132
    assert assign(everywhere(["host-a", "host-b", "host-c"], SIX)) == {
        "auth": "host-a",
        "billing": "host-b",
        "mail": "host-a",
        "orders": "host-c",
        "search": "host-c",
        "web": "host-b",
    }


@pytest.mark.parametrize(
    ("members", "current", "want"),
    [
        ({}, {}, {}),
        ({"a": []}, {}, {}),
        ({"a": ["x", "y", "z"]}, {}, {"x": "a", "y": "a", "z": "a"}),
        # only a has them: over the cap (2) rather than unassigned
        ({"a": ["x", "y", "z"], "b": []}, {}, {"x": "a", "y": "a", "z": "a"}),
        # a cluster only one member has goes to it
        ({"a": ["x"], "b": ["y"]}, {}, {"x": "a", "y": "b"}),
        # the current owner keeps its clusters while it is live, has them and is under the cap
        ({"a": ["x", "y"], "b": ["x", "y"]}, {"x": "b", "y": "a"}, {"x": "b", "y": "a"}),
        ({"a": ["x", "y"], "b": ["x", "y"]}, {"x": "a", "y": "b"}, {"x": "a", "y": "b"}),
        # an owner that is gone, or no longer has the cluster, loses it
        ({"a": ["x", "y"]}, {"x": "gone", "y": "a"}, {"x": "a", "y": "a"}),
        ({"a": ["x", "y"], "b": ["y"]}, {"x": "b", "y": "b"}, {"x": "a", "y": "b"}),
        # over the cap: the owner keeps its best-scored one, the other moves to the free member
        ({"a": ["x", "y"], "b": ["x", "y"]}, {"x": "a", "y": "a"}, "one each"),
        # over the cap: the owner keeps what nobody else has, the shared one moves
        ({"a": ["x", "y", "z"], "b": ["x"]}, {"x": "a", "y": "a", "z": "a"}, {"x": "b", "y": "a", "z": "a"}),
        # the clusters only one member has are placed first, so the cap holds
        ({"a": ["x", "y", "z"], "b": ["x"]}, {}, {"x": "b", "y": "a", "z": "a"}),
    ],
)
def test_assignment_table(
    members: dict[str, list[str]], current: dict[str, str], want: dict[str, str] | str
) -> None:
    got = assign(members, current)
    if want == "one each":
        assert sorted(got.values()) == ["a", "b"]
        best = max(["x", "y"], key=lambda c: score(c, "a"))
        assert got[best] == "a"
    else:
        assert got == want


def test_a_member_joining_takes_only_the_excess_above_the_new_cap() -> None:
    two = everywhere(["a", "b"], SIX)
    before = assign(two)
    assert sorted(loads(before).values()) == [3, 3]
    after = assign({**two, "c": SIX}, before)
    assert sorted(loads(after).values()) == [2, 2, 2]
    assert sum(before[c] != after[c] for c in SIX) == 2  # one from each of a and b


# -- properties ------------------------------------------------------------------------------

NAMES = st.text(alphabet="abcdefgh0123456789-", min_size=1, max_size=6)


@st.composite
def fleets(draw: st.DrawFn, *, full: bool) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Members and their clusters (all of them when ``full``), and a current owner map that may
    name members that are gone."""
    clusters = draw(st.lists(NAMES, max_size=25, unique=True))
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    members = {
        member: list(clusters)
        if full
        else draw(st.lists(st.sampled_from(clusters), unique=True))
        if clusters
        else []
        for member in names
    }
    owners = st.sampled_from([*names, "gone"])
    current = draw(st.dictionaries(st.sampled_from(clusters), owners) if clusters else st.just({}))
    return members, current


@given(fleets(full=False))
def test_every_configured_cluster_goes_to_exactly_one_member_that_has_it(
    fleet: tuple[dict[str, list[str]], dict[str, str]],
) -> None:
    members, current = fleet
    got = assign(members, current)
    assert set(got) == {c for clusters in members.values() for c in clusters}
    for cluster, member in got.items():
        assert cluster in members[member]


@given(fleets(full=True))
def test_with_every_cluster_everywhere_no_member_is_above_the_cap(
    fleet: tuple[dict[str, list[str]], dict[str, str]],
) -> None:
    members, current = fleet
    got = assign(members, current)
    if got:
        assert max(loads(got).values()) <= math.ceil(len(got) / len(members))


def removal_keeps_the_survivors(members: dict[str, list[str]], current: dict[str, str], gone: str) -> bool:
    """Removing ``gone`` from a settled fleet moves only its clusters; False when the premise
    (every survivor within the new cap) does not hold."""
    before = assign(members, current)
    rest = {m: c for m, c in members.items() if m != gone}
    after = assign(rest, before)
    cap = math.ceil(len(after) / len(rest)) if after else 0
    if any(n > cap for m, n in loads(before).items() if m != gone):
        return False
    assert {c: m for c, m in after.items() if before[c] != gone} == {
        c: m for c, m in before.items() if m != gone
    }
    return True


@given(fleets(full=True), st.data())
def test_with_every_cluster_everywhere_a_member_leaving_moves_only_its_clusters(
    fleet: tuple[dict[str, list[str]], dict[str, str]], data: st.DataObject
) -> None:
    members, current = fleet
    if len(members) < 2:
        return
    gone = data.draw(st.sampled_from(sorted(members)))
    assert removal_keeps_the_survivors(members, current, gone)  # the premise always holds here


@given(fleets(full=False), st.data())
def test_a_member_leaving_moves_only_its_clusters_when_the_survivors_fit_the_cap(
    fleet: tuple[dict[str, list[str]], dict[str, str]], data: st.DataObject
) -> None:
    members, current = fleet
    if len(members) < 2:
        return
    removal_keeps_the_survivors(members, current, data.draw(st.sampled_from(sorted(members))))


@given(fleets(full=False), st.randoms(use_true_random=False))
def test_every_member_computes_the_same_map_whatever_the_order(
    fleet: tuple[dict[str, list[str]], dict[str, str]], rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    members, current = fleet
    want = assign(members, current)
    order = list(members.items())
    rnd.shuffle(order)
    shuffled = {m: rnd.sample(clusters, len(clusters)) for m, clusters in order}
    owners = list(current.items())
    rnd.shuffle(owners)
    assert assign(shuffled, dict(owners)) == want
