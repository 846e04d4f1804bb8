"""The catalog a daemon of the fleet hands to ``ops``: the whole ``Catalog``, except that every
run starts fenced by this daemon's lease of the run's cluster (docs/design/fleet.md, step 8).

``start_run`` goes through ``FleetCatalog.start_run_fenced`` under the runtime's lease
(``<cluster>@<repository hash>``, ``DaemonApp.lease_name``) with the epoch ``epoch_of(lease)``
gives (``Membership.epoch_of``): the run is inserted only while the catalog, in the insert's own
transaction, still has this daemon as the lease's owner at that epoch and not expired. Refused
(the lease moved, expired, or was never held here), it raises :class:`LeaseLost` and records
nothing, so the use case stops before doing anything: ``ops`` starts every run before its work.
Finishing a run is not fenced: a run started under the lease records how it ended.

Every other method is the wrapped catalog's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.errors import LeaseLost
from contentflow_backupd.model import RunRecord, RunTrigger, Scope

__all__ = ["FencedCatalog", "LeaseLost", "fenced"]

log = structlog.get_logger(__name__)


class FencedCatalog:
    """``Catalog`` with fenced ``start_run``; everything else delegated to ``catalog``."""

    def __init__(
        self,
        catalog: Catalog,
        daemon_id: str,
        epoch_of: Callable[[str], int | None],
        lease: str | None = None,
    ) -> None:
        self._catalog = catalog
        self.daemon_id = daemon_id
        self._epoch_of = epoch_of
        self.lease = lease
        """The lease of this runtime's repository and cluster every run starts under (the
        daemon's ``DaemonApp.lease_name``); None: the lease named as the run's cluster."""

    def start_run(
        self,
        scope: Scope,
        job: str,
        trigger: RunTrigger,
        *,
        pid: int | None = None,
        host: str | None = None,
    ) -> RunRecord:
        """``RunCatalog.start_run`` under this daemon's lease ``self.lease`` (its repository and
        ``scope.cluster``); ``LeaseLost``, recording nothing, when it does not hold it (any more)."""
        lease = scope.cluster if self.lease is None else self.lease
        epoch = self._epoch_of(lease)
        if epoch is None:
            log.warning("fleet_run_refused", cluster=scope.cluster, job=job, reason="lease not held")
            raise LeaseLost(
                f"{job} of cluster {scope.cluster!r} not started: this daemon ({self.daemon_id}) "
                "does not hold the cluster's lease"
            )
        run = self._catalog.start_run_fenced(
            self.daemon_id, epoch, scope, job, trigger, pid=pid, host=host, lease=lease
        )
        if run is None:
            log.warning("fleet_run_refused", cluster=scope.cluster, job=job, epoch=epoch, reason="moved")
            raise LeaseLost(
                f"{job} of cluster {scope.cluster!r} not started: the catalog refused it, the lease "
                f"of this daemon ({self.daemon_id}, epoch {epoch}) has expired or moved to another daemon"
            )
        return run

    def __getattr__(self, name: str) -> Any:
        # Only the catalog's own roles pass through (not its private members).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._catalog, name)


def fenced(
    catalog: Catalog, daemon_id: str, epoch_of: Callable[[str], int | None], lease: str | None = None
) -> Catalog:
    """A ``FencedCatalog`` of lease ``lease``, typed as the ``Catalog`` it stands for (what wiring
    hands to ``ops``)."""
    return FencedCatalog(catalog, daemon_id, epoch_of, lease)
