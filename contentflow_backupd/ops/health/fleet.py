"""The health of a daemon serving several clusters: each cluster's ``HealthReport`` and the whole.

Pure: the daemon hands in each cluster's report (``ClusterRuntime.health``, or
:func:`starting_report` while the cluster has not started) and its own catalog probe.

- ``FleetHealth.to_json()`` keeps the keys of ``HealthReport.to_json()`` (``ok``, ``status``,
  ``checked_at``, ``checks``) and adds ``clusters``: ``[{cluster, ok, status, checks}]``, in name
  order. With the implicit cluster (no ``[clusters.<name>]``), ``checks`` is that cluster's list,
  exactly as before; with named clusters it holds the daemon's own checks (``dependency_catalog``).
- ``ok`` is true when every check of the whole and of every cluster is.
- ``ClusterHealth.to_json()`` (``/healthz?cluster=NAME``) is one cluster's ``HealthReport`` with
  its ``cluster``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contentflow_backupd.model import iso
from contentflow_backupd.ops.health.evaluate import DependencyState, HealthCheck, HealthReport

START_CHECK = "cluster_start"
"""The check a cluster that has not started yet fails."""


@dataclass(frozen=True)
class ClusterHealth:
    cluster: str
    report: HealthReport

    @property
    def ok(self) -> bool:
        return self.report.ok

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, **self.report.to_json()}


@dataclass(frozen=True)
class FleetHealth:
    checks: tuple[HealthCheck, ...]
    """The whole's own checks (the implicit cluster's, or the daemon's with named clusters)."""
    clusters: tuple[ClusterHealth, ...]
    checked_at: datetime
    elsewhere: Mapping[str, str] = field(default_factory=dict)
    """Clusters configured here and owned by another daemon of the fleet: cluster -> owner
    (``member(host:pid)``); listed, not evaluated here."""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and all(c.ok for c in self.clusters)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "status": "healthy" if self.ok else "unhealthy",
            "checked_at": iso(self.checked_at),
            "checks": [c.to_json() for c in self.checks],
            "clusters": [
                {
                    "cluster": c.cluster,
                    "ok": c.ok,
                    "status": "healthy" if c.ok else "unhealthy",
                    "checks": [check.to_json() for check in c.report.checks],
                }
                for c in self.clusters
            ],
            **(
                {"owned_elsewhere": [{"cluster": c, "owner": o} for c, o in sorted(self.elsewhere.items())]}
                if self.elsewhere
                else {}
            ),
        }


def fleet_health(
    reports: Mapping[str, HealthReport],
    *,
    implicit: bool,
    catalog: DependencyState | None,
    now: datetime,
    fleet_checks: tuple[HealthCheck, ...] = (),
    elsewhere: Mapping[str, str] | None = None,
) -> FleetHealth:
    """The whole from each cluster's report. ``implicit``: one cluster, whose checks are also the
    whole's (today's ``/healthz``). Else the whole's checks are the daemon's: its catalog
    (``catalog``; None: not probed yet, no check). ``fleet_checks`` (``cluster_owners``) are added
    to the whole's checks; ``elsewhere``: the clusters owned by other daemons, with their owner."""
    clusters = tuple(ClusterHealth(name, reports[name]) for name in sorted(reports))
    if implicit and len(clusters) == 1:
        checks = clusters[0].report.checks
    elif catalog is None:
        checks = ()
    else:
        detail = catalog.detail or ("reachable" if catalog.up else "unreachable")
        checks = (HealthCheck("dependency_catalog", catalog.up, detail),)
    return FleetHealth((*checks, *fleet_checks), clusters, now, dict(elsewhere or {}))


OWNERLESS_LIMIT_S = 60.0
"""``cluster_owners`` fails once a configured cluster has had no live owner for this long."""


def owners_check(ownerless_since: Mapping[str, datetime], now: datetime) -> HealthCheck:
    """``cluster_owners``: fails while a configured cluster has had no live owner in the fleet
    for ``OWNERLESS_LIMIT_S`` or more (``ownerless_since``: cluster -> when it was first seen
    without one)."""
    late = sorted(
        c for c, since in ownerless_since.items() if (now - since).total_seconds() >= OWNERLESS_LIMIT_S
    )
    if late:
        return HealthCheck(
            "cluster_owners",
            False,
            f"no live daemon owns {', '.join(late)} (for {OWNERLESS_LIMIT_S:g} s or more)",
        )
    waiting = sorted(ownerless_since)
    detail = "every configured cluster has an owner"
    if waiting:
        detail += f" or is being taken over ({', '.join(waiting)})"
    return HealthCheck("cluster_owners", True, detail)


def starting_report(state: str, error: str | None, now: datetime) -> HealthReport:
    """The report of a cluster that is not serving yet: one failing ``cluster_start`` check.
    ``state``: ``starting`` (retried) or ``failed`` (a configuration error: not retried)."""
    if state == "failed":
        detail = f"not started: {error}" if error else "not started"
    elif error:
        detail = f"starting, retried after: {error}"
    else:
        detail = "starting"
    return HealthReport((HealthCheck(START_CHECK, False, detail),), now)
