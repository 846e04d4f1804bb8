"""Which daemon of the fleet owns which cluster: rendezvous hashing with a load cap (pure).

``assign(members, current)`` maps every cluster some live member has configured to one such
member (docs/design/fleet.md, step 8). The rule, in order:

1. ``cap = ceil(clusters / members)``, over the clusters some member has configured.
2. **Stickiness.** A cluster stays with its current owner (``current``, read from the leases)
   while that owner is live and has it configured, up to ``cap`` clusters per owner; an owner
   over the cap keeps first the clusters fewest members have configured, then the best-scored.
3. **Rendezvous.** The others, taken as (cluster, member) pairs, best score first, go to the
   first member that has the cluster configured and is under the cap. Clusters fewer members
   have configured go first (a cluster only one member has is placed before the others fill
   it); with every cluster on every member, that is the plain rendezvous order. The score of a pair is
   ``blake2b(cluster + "\\n" + member)`` (8 bytes, big-endian): the same on every daemon, every
   version and every platform (a table test pins it).
4. **When the cap cannot hold** (every member that has a cluster configured is full), the
   cluster goes to its current owner if that one may keep it, else to its least loaded member
   (ties: best score).

What follows, checked by property tests: every cluster is assigned exactly once, to a member
that has it configured; with every cluster configured on every member, no member is above the
cap; a member leaving moves only its own clusters when the survivors stay under the new cap
(always the case when every member has every cluster): the cap never falls when a member leaves,
so every survivor keeps what it holds; and the map depends only on the snapshot (members, their
clusters, ``current``), not on the order of anything, so every daemon computes the same.

Why stickiness, when the design text says rendezvous alone: without the current owners as input,
a cap makes placement depend on the order of the whole greedy pass, and removing one member can
move clusters between two survivors (a cluster whose best member was full gets it once the cap
grows). With them, a member joining takes over only the excess above the new cap, which is the
least movement the cap allows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping

__all__ = ["assign", "score"]


def score(cluster: str, member: str) -> int:
    """The rendezvous score of ``member`` for ``cluster``: higher is better."""
    digest = hashlib.blake2b(f"{cluster}\n{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(
    members: Mapping[str, Collection[str]], current: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Cluster -> member. ``members``: each live member and the clusters it has configured;
    ``current``: cluster -> its current owner (any member, live or not; absent: none).
    Clusters no live member has configured are left out; no members, an empty map."""
    configured = {member: frozenset(clusters) for member, clusters in members.items()}
    clusters = sorted(set().union(*configured.values())) if configured else []
    if not clusters:
        return {}
    cap = math.ceil(len(clusters) / len(configured))
    load = dict.fromkeys(configured, 0)
    sharers = {c: sum(c in mine for mine in configured.values()) for c in clusters}
    owner: dict[str, str] = {}

    def may_keep(cluster: str) -> str | None:
        held_by = (current or {}).get(cluster)
        return held_by if held_by in configured and cluster in configured[held_by] else None

    kept: dict[str, list[str]] = {}
    for cluster in clusters:
        held_by = may_keep(cluster)
        if held_by is not None:
            kept.setdefault(held_by, []).append(cluster)
    for member, held in sorted(kept.items()):
        for cluster in sorted(held, key=lambda c: (sharers[c], -score(c, member), c))[:cap]:
            owner[cluster] = member
            load[member] += 1

    pairs = sorted(
        (
            (cluster, member)
            for cluster in clusters
            if cluster not in owner
            for member in configured
            if cluster in configured[member]
        ),
        key=lambda pair: (sharers[pair[0]], -score(*pair), pair),
    )
    for cluster, member in pairs:
        if cluster not in owner and load[member] < cap:
            owner[cluster] = member
            load[member] += 1

    for cluster in clusters:
        if cluster in owner:
            continue
        member = may_keep(cluster) or min(
            (m for m in configured if cluster in configured[m]),
            key=lambda m: (load[m], -score(cluster, m), m),
        )
        owner[cluster] = member
        load[member] += 1
    return {cluster: owner[cluster] for cluster in clusters}
