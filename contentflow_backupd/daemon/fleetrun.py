"""The daemon in a fleet: its clusters' leases decide which runtimes it runs (docs/design/fleet.md,
step 8; docs/daemon.md "Several daemons").

``FleetRun`` is the part of ``lifecycle.Daemon`` that joins the fleet on a PostgreSQL catalog.
There the daemon starts no cluster by itself: it runs a ``daemon/membership.py: Membership`` on
a thread of its own (``run(stop)``), announcing the leases of the clusters it has configured, and

- ``on_gain(lease, epoch, catch_up)`` starts the cluster's runtime (``start_cluster``); once
  it has started, the daemon leads it (``control._lead``: its job store, its jobs, its WAL
  stream) and fires the jobs to catch up (``Scheduler.run_soon(..., catch_up=True)``: the runs
  the previous owner left ``interrupted``, reaped by ``Membership``);
- ``on_lose(lease, reason)`` stops it (``stop_cluster`` with no grace: its running jobs are
  cancelled and recorded ``interrupted``, its stream stopped, its series removed);
- every runtime gets a ``daemon/fenced.py: FencedCatalog`` of its lease: a run starts only under
  the lease held, in the insert's own transaction;
- ``backupd_leader{cluster}`` is 0 for each configured cluster it does not own (the other
  series only on the owner);
- at shutdown, after the jobs stopped, ``release_all()`` frees the leases: the other daemons
  take the clusters over at their next tick.

A lease is per repository and cluster, as the advisory lock was: ``<cluster>@<repository hash>``
(``DaemonApp.lease_name``, computed in wiring), so that daemons of other repositories sharing the
catalog with a cluster of the same name are independent. The membership speaks leases; this
daemon maps each back to its cluster (``_cluster_of``) for its runtimes, metrics and health, which
keep showing cluster names.

Gains and losses of one cluster run in order on a thread of their own (``_in_order``), never on
the membership thread: a stop waits for its jobs and stream, and the renewals must go on.

An older daemon (before the leases) still running keeps its session advisory lock
``leader_key("<repository id>/<cluster>")``: while ``pg_locks`` shows that key held, this daemon
leaves the cluster alone even with its lease (``fleet_old_daemon_holds_cluster``), and looks again
every ``LEADER_POLL`` (``_poll_fleet``). This daemon takes no such lock itself.

On SQLite (one daemon: its file lock refuses a second, exit 1) there is no ``Membership``: the
daemon owns every configured cluster, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.daemon.cluster import ClusterRuntime
from contentflow_backupd.daemon.fenced import fenced
from contentflow_backupd.daemon.membership import Membership, new_daemon_id
from contentflow_backupd.daemon.parts import DaemonApp, FleetApp
from contentflow_backupd.daemon.reload import ReloadPlan
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.ops.health.evaluate import HealthCheck

log = structlog.get_logger(__name__)


class FleetRun:
    """Mixin of ``lifecycle.Daemon``: see the module docstring."""

    fleet: FleetApp
    all_metrics: Metrics
    stopping: threading.Event
    clusters: list[str]
    runtimes: dict[str, ClusterRuntime]
    _catalog: Catalog | None
    _scheduler: Any
    _clusters_lock: threading.Lock

    if TYPE_CHECKING:  # daemon/control.py: ClusterControl, the other mixin of Daemon

        def start_cluster(self, name: str, app: DaemonApp) -> None: ...
        def stop_cluster(self, name: str, *, grace_s: float | None = None) -> None: ...
        def _lead(self, runtime: ClusterRuntime) -> None: ...

    def _init_fleet(self) -> None:
        self.membership: Membership | None = None
        """The leases (PostgreSQL catalog), None on SQLite: every cluster is this daemon's."""
        self.daemon_id: str | None = None
        self._fleet_stop = threading.Event()
        self._fleet_thread: threading.Thread | None = None
        self._fleet_lock = threading.Lock()
        self._catch_up: dict[str, list[str]] = {}
        self._pending: dict[str, list[Callable[[], None]]] = {}
        self._ownerless_since: dict[str, datetime] = {}
        """Configured clusters seen without a live owner, since when (``cluster_owners``)."""
        self._elsewhere: dict[str, str] = {}
        """Configured clusters owned by another daemon: cluster -> ``member(host:pid)``."""
        self._lease_of: dict[str, str] = {}
        """Configured cluster -> its lease (``DaemonApp.lease_name``: ``<cluster>@<repository hash>``)."""
        self._cluster_of: dict[str, str] = {}
        """The inverse of ``_lease_of``: lease -> cluster (the runtime's name)."""

    # -- joining and leaving -------------------------------------------------------------------
    def _start_fleet(self) -> None:
        """Join the fleet: announce this daemon's clusters and tick on a thread of its own."""
        assert self._catalog is not None
        member = self.fleet.fleet_member
        self.daemon_id = new_daemon_id(member)
        self._lease_of = {name: self.fleet.cluster(name).lease_name for name in self.clusters}
        self._cluster_of = {lease: name for name, lease in self._lease_of.items()}
        digests = {self._lease_of[name]: self.fleet.digest(name) for name in self.clusters}
        self.membership = Membership(
            self._catalog,
            member,
            self.daemon_id,
            lambda: digests,
            self._on_gain,
            self._on_lose,
            busy=self._busy,
            ttl=self.fleet.lease_ttl_s,
        )
        for name in self.clusters:
            self.all_metrics.set_standby(name)
        self._fleet_thread = threading.Thread(
            target=self.membership.run, args=(self._fleet_stop,), name="fleet-membership", daemon=True
        )
        self._fleet_thread.start()
        log.info("fleet_joined", daemon_id=self.daemon_id, member=member, ttl_s=self.fleet.lease_ttl_s)

    def _leave_fleet(self, timeout: float) -> None:
        """At shutdown, once the jobs and streams stopped: stop ticking, free the leases."""
        if self.membership is None:
            return
        self._fleet_stop.set()
        if self._fleet_thread is not None:
            self._fleet_thread.join(timeout)
        self.membership.release_all()

    def _runtime_catalog(self, app: DaemonApp) -> Catalog:
        """The catalog a cluster's runtime (and every use case it runs) gets: fenced by the
        cluster's lease (``app.lease_name``) in a fleet."""
        assert self._catalog is not None
        if self.membership is None or self.daemon_id is None:
            return self._catalog
        return fenced(self._catalog, self.daemon_id, self.membership.epoch_of, app.lease_name)

    def reload_refusal(self, plan: ReloadPlan) -> str | None:
        """A reload's clusters on a fleet catalog: the leases decide where a cluster runs, and the
        membership announced this daemon's clusters at start, so only schedule changes apply;
        adding, removing or changing a cluster takes a restart (which announces again)."""
        if self.membership is None or not (plan.added or plan.removed or plan.restarted):
            return None
        return (
            "on a PostgreSQL catalog (fleet leases) a reload applies schedule changes only; adding, "
            "removing or changing a cluster needs a restart"
        )

    def lease_of(self, name: str) -> str:
        """Cluster ``name``'s lease (``<cluster>@<repository hash>``); the name itself for a
        cluster this daemon has not configured."""
        return self._lease_of.get(name, name)

    def owns(self, name: str) -> bool:
        """Whether this daemon may run cluster ``name``'s jobs now: always on SQLite; in a fleet,
        while its lease is held (and gained) and no older daemon holds the cluster."""
        return self.membership is None or self.membership.epoch_of(self.lease_of(name)) is not None

    # -- the membership's callbacks (on its thread), by lease --------------------------------------
    def _on_gain(self, lease: str, epoch: int, catch_up: list[str]) -> None:
        if self.stopping.is_set():
            return
        cluster = self._cluster_of.get(lease)
        if cluster is None:  # not announced by this daemon: never claimed here
            log.error("fleet_unknown_lease_gained", lease=lease, epoch=epoch)
            return
        log.info("fleet_cluster_starting", cluster=cluster, lease=lease, epoch=epoch, catch_up=catch_up)
        with self._fleet_lock:
            self._catch_up[cluster] = list(catch_up)
        self._in_order(cluster, lambda: self._gain(cluster))

    def _on_lose(self, lease: str, reason: str) -> None:
        if self.stopping.is_set():
            return  # the shutdown stops every cluster
        cluster = self._cluster_of.get(lease)
        if cluster is None:
            log.error("fleet_unknown_lease_lost", lease=lease, reason=reason)
            return
        log.warning("fleet_cluster_stopping", cluster=cluster, lease=lease, reason=reason)
        self._in_order(cluster, lambda: self._lose(cluster))

    def _busy(self, lease: str) -> bool:
        runtime = self.runtimes.get(self._cluster_of.get(lease, lease))
        return runtime is not None and bool(runtime.running())

    def _gain(self, cluster: str) -> None:
        if self.stopping.is_set() or not self.owns(cluster):
            return
        with self._clusters_lock:
            runtime = self.runtimes.get(cluster)
        if runtime is None:
            self.start_cluster(cluster, self.fleet.cluster(cluster))  # leads once started
        elif runtime.state == "running":
            self._lead_owned(runtime)

    def _lose(self, cluster: str) -> None:
        if self.stopping.is_set():
            return
        self.stop_cluster(cluster, grace_s=0.0)
        with self._fleet_lock:
            self._catch_up.pop(cluster, None)
        self.all_metrics.set_standby(cluster)

    def _in_order(self, cluster: str, action: Callable[[], None]) -> None:
        """Run ``action`` on a thread, after the cluster's earlier actions."""
        with self._fleet_lock:
            queue = self._pending.setdefault(cluster, [])
            queue.append(action)
            if len(queue) > 1:
                return  # its thread runs it next
        threading.Thread(target=self._drain, args=(cluster,), name=f"fleet-{cluster}", daemon=True).start()

    def _drain(self, cluster: str) -> None:
        while True:
            with self._fleet_lock:
                queue = self._pending.get(cluster)
                if not queue:
                    self._pending.pop(cluster, None)
                    return
                action = queue[0]
            try:
                action()
            except Exception as exc:  # one cluster's failure stops no other's
                log.exception("fleet_cluster_action_failed", cluster=cluster, error=str(exc))
            finally:
                with self._fleet_lock:
                    self._pending[cluster].pop(0)

    # -- health -------------------------------------------------------------------------------
    def _probe_owners(self) -> None:
        """On the probe thread, every probe interval: who owns each configured cluster."""
        if self.membership is None or self._catalog is None:
            return
        from contentflow_backupd.daemon.owners import fleet_owners
        from contentflow_backupd.model import utcnow

        try:
            owners = fleet_owners(self._catalog)
        except BackupdError as exc:
            log.warning("fleet_owners_unreadable", error=exc.message)
            return
        now = utcnow()
        elsewhere: dict[str, str] = {}
        with self._fleet_lock:
            for name in self.clusters:
                owner = owners.get(self.lease_of(name))
                if owner is not None and owner.held and owner.live:
                    self._ownerless_since.pop(name, None)
                    if owner.daemon_id != self.daemon_id:
                        elsewhere[name] = f"{owner.member}({owner.host}:{owner.pid})"
                else:
                    self._ownerless_since.setdefault(name, now)
            self._elsewhere = elsewhere

    def _fleet_health(self, now: datetime) -> tuple[tuple[HealthCheck, ...], dict[str, str]]:
        """``/healthz``'s ``cluster_owners`` check and the clusters owned elsewhere (a fleet only)."""
        if self.membership is None:
            return (), {}
        from contentflow_backupd.ops.health.fleet import owners_check

        with self._fleet_lock:
            elsewhere = {c: o for c, o in self._elsewhere.items() if c not in self.runtimes}
            return (owners_check(dict(self._ownerless_since), now),), elsewhere

    # -- leading -------------------------------------------------------------------------------
    def _lead_owned(self, runtime: ClusterRuntime) -> None:
        """Lead a started runtime whose lease is held, unless an older daemon holds the cluster;
        then fire its catch-up jobs."""
        if self.membership is None:
            self._lead(runtime)
            return
        if runtime.leader or not self.owns(runtime.name) or self._old_daemon_holds(runtime):
            return
        self._lead(runtime)
        if runtime.leader:
            self._fire_catch_up(runtime)

    def _fire_catch_up(self, runtime: ClusterRuntime) -> None:
        with self._fleet_lock:
            jobs = self._catch_up.pop(runtime.name, [])
        for job in jobs:
            job_id = self._scheduler.job_id(job, runtime.name)
            try:
                self._scheduler.run_soon(
                    job_id, catch_up=True, store=runtime.name, reason="its last run was interrupted"
                )
            except Exception as exc:  # noqa: BLE001 - a job not scheduled (off) has nothing to catch up
                log.warning("fleet_catch_up_skipped", cluster=runtime.name, job=job, error=str(exc))

    def _poll_fleet(self) -> None:
        """Every ``LEADER_POLL``: lead the started runtimes owned here but not led yet (an older
        daemon held them, or the lease came while they started)."""
        if self.membership is None or self.stopping.is_set():
            return
        for runtime in list(self.runtimes.values()):
            if runtime.state == "running" and not runtime.leader:
                self._lead_owned(runtime)

    def _old_daemon_holds(self, runtime: ClusterRuntime) -> bool:
        """Whether a daemon of an older version holds the cluster's advisory lock (logged)."""
        from contentflow_backupd.catalog.leader import advisory_lock_held
        from contentflow_backupd.errors import CatalogError

        assert self._catalog is not None
        try:
            held = advisory_lock_held(self._catalog.engine, f"{runtime.scope.repository_id}/{runtime.name}")
        except CatalogError as exc:
            log.error("fleet_old_daemon_check_failed", cluster=runtime.name, error=str(exc))
            return True  # not known: start nothing, look again at the next poll
        if held:
            log.warning(
                "fleet_old_daemon_holds_cluster",
                cluster=runtime.name,
                action="an older daemon holds the cluster's advisory lock: its jobs stay there",
            )
        return held
