"""Which daemon of the fleet owns which cluster, for ``status --all-clusters`` (docs/design/fleet.md,
step 8): each cluster's lease joined with the live daemons' rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from contentflow_backupd.catalog.base import FleetCatalog
from contentflow_backupd.daemon.membership import member_of

__all__ = ["OwnerInfo", "fleet_owners"]


@dataclass(frozen=True)
class OwnerInfo:
    """Who serves a cluster, from its lease and the live daemons. ``daemon_id`` None: nobody
    ever held it, or it was released. ``held``: the lease is held now (catalog clock); ``live``:
    its owner's daemon row is live. ``since``: when the owner claimed it. ``config_differs``: the
    live daemons that have the cluster configured disagree on its settings digest
    (``fleet_config_differs``)."""

    cluster: str
    """The lease's name: ``<cluster>@<repository hash>`` (``cluster_of_lease`` gives the cluster)."""
    daemon_id: str | None
    member: str | None
    host: str | None
    pid: int | None
    since: datetime | None
    epoch: int
    held: bool
    live: bool
    config_differs: bool


def fleet_owners(catalog: FleetCatalog) -> dict[str, OwnerInfo]:
    """Lease -> its owner, for every lease row (every lease a daemon ever announced: one per
    repository and cluster, ``<cluster>@<repository hash>``). ``CatalogError`` when the catalog
    cannot be read."""
    leases = catalog.leases()
    daemons = {d.id: d for d in catalog.live_daemons()}
    digests: dict[str, set[str]] = {}
    for daemon in daemons.values():
        for cluster, digest in daemon.clusters.items():
            digests.setdefault(cluster, set()).add(digest)
    owners: dict[str, OwnerInfo] = {}
    for lease in leases:
        owner = daemons.get(lease.owner) if lease.owner else None
        owners[lease.cluster] = OwnerInfo(
            cluster=lease.cluster,
            daemon_id=lease.owner,
            member=member_of(lease.owner) if lease.owner else None,
            host=owner.host if owner else None,
            pid=owner.pid if owner else None,
            since=lease.acquired_at if lease.owner else None,
            epoch=lease.epoch,
            held=lease.held,
            live=owner is not None,
            config_differs=len(digests.get(lease.cluster, ())) > 1,
        )
    return owners
