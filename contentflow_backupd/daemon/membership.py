"""One daemon's membership in the fleet: its leases, renewed, claimed and given up per the
assignment (docs/design/fleet.md, step 8; docs/daemon.md "Several daemons").

A daemon announces itself (``announce``), then calls ``tick`` every ``poll`` seconds (``run``
does, on a thread the daemon starts; tests call ``tick`` directly, with an injected clock). One
tick:

1. **Renew.** One ``heartbeat_and_renew``. Each lease it renews gets a new *local deadline*:
   the time the request was sent + TTL - ``DEADLINE_MARGIN``, on this process's monotonic clock
   (the catalog's expiry is its own clock's now + TTL, so the local deadline passes first). A
   lease held here that the renewal does not return was lost (expired in the catalog, or taken):
   ``on_lose(cluster, "lease_lost")``. A lease the catalog says is ours that this process did not
   know (a claim whose answer was lost) is taken up as if claimed.
2. **Assign.** ``assign()`` over the live daemons (one per member: its newest incarnation) and
   the current owners of the leases (by member, so a restarted daemon keeps its clusters).
3. **Claim** the clusters assigned to this member whose lease nobody holds. For each one won:
   ``reap_runs_of([previous owner], [cluster name])`` (a lease ``<cluster>@<repository hash>``
   names its cluster before the ``@``: :func:`cluster_of_lease`; runs are stored by cluster
   name), then ``on_gain(cluster, epoch, catch_up)``
   with the jobs to catch up (:func:`catch_up_jobs`). A reap that fails is retried next tick
   before ``on_gain``.
4. **Give up** a cluster assigned to another member once that has lasted ``give_up_after``
   (60 s: no flapping while daemons restart) and ``busy(cluster)`` is false (no job running
   there): ``on_lose(cluster, "reassigned")``, then ``release``. A cluster no live member has
   configured any more (this one included) is given up as soon as it is not busy
   (``"unconfigured"``).
5. **Deadlines.** Every lease past its local deadline: ``on_lose(cluster, "lease_expired")``;
   the daemon cancels its jobs there (they are recorded ``interrupted``). ``run`` also checks the
   deadlines on a thread of their own, so a catalog call that hangs (up to the catalog's
   connect and lock timeouts) does not hold them back.

A catalog error never leaves ``tick``: it is logged, the leases are kept until their local
deadlines, and the next tick tries again. ``epoch_of(cluster)`` is the epoch of a lease held
and gained here and not past its deadline, else None: what the fenced catalog
(``daemon/fenced.py``) starts runs under. At SIGTERM, once the jobs have stopped, ``release_all``
frees the leases and ends this daemon's row, so the others take over at their next tick.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from contentflow_backupd import __version__
from contentflow_backupd.catalog.base import FleetMemberCatalog, RunCatalog
from contentflow_backupd.catalog.fleet_records import DaemonRecord, LeaseRecord, ReapedRuns
from contentflow_backupd.daemon.assign import assign
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import Scope

log = structlog.get_logger(__name__)

POLL = 5.0
"""Seconds between ticks: the lease renewal period (``settings_sections.FLEET_RENEW_S``)."""
GIVE_UP_AFTER = 60.0
"""A cluster assigned elsewhere is given up once that has lasted this long."""
DEADLINE_MARGIN = 2.0
"""The local deadline is this much before the lease's TTL runs out."""
CATCH_UP_JOBS = ("full", "incremental", "retention", "verify", "restore_test")
"""Jobs whose interrupted run the new owner runs again at once (the WAL job runs every few
minutes anyway), in this order."""
WATCH_EVERY = 1.0
"""``run``'s deadline watcher looks at least this often (and at each deadline)."""
RETIRED_TTL = 0.001
"""The TTL of the last heartbeat at shutdown: the daemon's row expires at once."""

OnGain = Callable[[str, int, list[str]], None]
"""``on_gain(cluster, epoch, catch_up)``: start serving the cluster; ``catch_up`` the jobs to
run now (``Scheduler.run_soon(job_id, catch_up=True)``)."""
OnLose = Callable[[str, str], None]
"""``on_lose(cluster, reason)``: stop serving the cluster now, cancelling its jobs;
``reason``: ``lease_expired``, ``lease_lost``, ``reassigned`` or ``unconfigured``."""


def new_daemon_id(member: str) -> str:
    """A new incarnation's id, ``<member>/<pid>-<random>`` (``DaemonRecord.id``)."""
    return f"{member}/{os.getpid()}-{uuid.uuid4().hex[:8]}"


def member_of(daemon_id: str) -> str:
    return daemon_id.partition("/")[0]


@dataclass
class _Holding:
    epoch: int
    deadline: float
    previous: str | None
    """The lease's owner before this claim, whose runs are reaped before ``on_gain``."""
    gained: bool = False


class Membership:
    def __init__(
        self,
        catalog: FleetMemberCatalog,
        member: str,
        daemon_id: str,
        configured: Callable[[], Mapping[str, str]],
        on_gain: OnGain,
        on_lose: OnLose,
        *,
        busy: Callable[[str], bool] = lambda cluster: False,
        ttl: float = 15.0,
        poll: float = POLL,
        clock: Callable[[], float] = time.monotonic,
        give_up_after: float = GIVE_UP_AFTER,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        """``configured()``: the clusters this daemon has configured now, lease name -> digest of
        its settings (the daemon names a lease ``<cluster>@<repository hash>``; "cluster" in this
        class is the lease name) (read every tick: a reload that changes it announces again). ``ttl``: the
        lease TTL in seconds (``fleet.lease_ttl``). ``clock``: monotonic seconds."""
        if member != member_of(daemon_id):
            raise ValueError(f"daemon id {daemon_id!r} is not of member {member!r}")
        self.catalog = catalog
        self.member = member
        self.daemon_id = daemon_id
        self.ttl = ttl
        self.poll = poll
        self._configured = configured
        self._on_gain = on_gain
        self._on_lose = on_lose
        self._busy = busy
        self._clock = clock
        self._give_up_after = give_up_after
        self._host = host or socket.gethostname()
        self._pid = os.getpid() if pid is None else pid
        self._lock = threading.Lock()
        self._held: dict[str, _Holding] = {}
        self._elsewhere_since: dict[str, float] = {}
        self._announced: dict[str, str] | None = None
        self._stopped = False
        self._unreleased: set[str] = set()
        """Clusters given up whose ``release`` failed: retried each tick, never taken up again."""

    # -- what the daemon asks ----------------------------------------------------------------
    def epoch_of(self, cluster: str) -> int | None:
        """The epoch of this daemon's lease of ``cluster`` while it serves it (gained, local
        deadline not past), else None."""
        with self._lock:
            held = self._held.get(cluster)
            if held is None or not held.gained or self._clock() >= held.deadline:
                return None
            return held.epoch

    def held(self) -> dict[str, int]:
        """The clusters served here (gained), cluster -> epoch."""
        with self._lock:
            return {c: h.epoch for c, h in sorted(self._held.items()) if h.gained}

    # -- the loop ----------------------------------------------------------------------------
    def announce(self) -> bool:
        """Write this daemon's row (and free lease rows of its clusters). False, logged, when
        the catalog fails: ``tick`` tries again."""
        clusters = dict(self._configured())
        try:
            self.catalog.announce(
                self.daemon_id,
                member=self.member,
                host=self._host,
                pid=self._pid,
                version=__version__,
                clusters=clusters,
                ttl_s=self.ttl,
            )
        except BackupdError as exc:
            log.error("fleet_announce_failed", daemon_id=self.daemon_id, error=exc.message)
            return False
        self._announced = clusters
        log.info("fleet_announced", daemon_id=self.daemon_id, member=self.member, clusters=sorted(clusters))
        return True

    def tick(self) -> None:
        """One round: renew, assign, claim, give up, check deadlines. Never raises."""
        try:
            if not self._stopped:
                self._tick()
        except Exception as exc:  # the loop must go on; the leases expire on their own
            log.exception("fleet_tick_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.check_deadlines()

    def check_deadlines(self) -> list[str]:
        """Drop every lease past its local deadline, ``on_lose(cluster, "lease_expired")`` for
        those served here. Returns the clusters dropped."""
        now = self._clock()
        with self._lock:
            expired = {c: h for c, h in self._held.items() if now >= h.deadline}
            for cluster in expired:
                del self._held[cluster]
        for cluster, holding in sorted(expired.items()):
            log.warning("fleet_lease_expired", cluster=cluster, epoch=holding.epoch)
            if holding.gained:
                self._lose(cluster, "lease_expired")
        return sorted(expired)

    def run(self, stop: threading.Event) -> None:
        """``tick`` every ``poll`` seconds until ``stop`` is set, and the local deadlines checked
        on a thread of their own meanwhile. Does not release: ``release_all`` does, after the
        jobs stop."""
        watcher = threading.Thread(target=self._watch, args=(stop,), name="fleet-deadlines", daemon=True)
        watcher.start()
        while not stop.is_set():
            self.tick()
            stop.wait(self.poll)
        watcher.join()

    def release_all(self) -> list[str]:
        """At shutdown, after the jobs stopped: stop ticking, free every lease of this daemon and
        end its row (a last heartbeat with a TTL of ``RETIRED_TTL``), so that the other daemons
        take its clusters over at their next tick. Returns the clusters released."""
        with self._lock:
            self._stopped = True
            self._held.clear()
        released: list[str] = []
        try:
            released = self.catalog.release(self.daemon_id)
            self.catalog.heartbeat_and_renew(self.daemon_id, RETIRED_TTL)
        except BackupdError as exc:
            log.error("fleet_release_failed", daemon_id=self.daemon_id, error=exc.message)
        log.info("fleet_released", daemon_id=self.daemon_id, clusters=released)
        return released

    # -- one tick --------------------------------------------------------------------------
    def _tick(self) -> None:
        changed = self._announced is None or dict(self._configured()) != self._announced
        if changed and not self.announce():
            return
        sent = self._clock()
        try:
            renewed = self.catalog.heartbeat_and_renew(self.daemon_id, self.ttl)
        except BackupdError as exc:
            log.error("fleet_renew_failed", daemon_id=self.daemon_id, error=exc.message)
            self._announce_again_if_gone()
            return
        self._renewed(renewed, sent)
        self._release_given_up(renewed)
        assignment: dict[str, str] | None = None
        try:
            leases = self.catalog.leases()
            assignment = assign(_members(self.catalog.live_daemons()), _owners(leases))
        except BackupdError as exc:
            log.error("fleet_read_failed", daemon_id=self.daemon_id, error=exc.message)
        if assignment is not None:
            self._claim(assignment, {lease.cluster: lease for lease in leases})
        self._gain_pending()
        if assignment is not None:
            self._give_up(assignment)

    def _announce_again_if_gone(self) -> None:
        """After a failed renewal: when the catalog answers and has no live row of this daemon
        (removed: a renewal revives an expired row), announce again at the next tick."""
        try:
            alive = {daemon.id for daemon in self.catalog.live_daemons()}
        except BackupdError:
            return  # the catalog is down: keep trying to renew
        if self.daemon_id not in alive:
            self._announced = None

    def _renewed(self, renewed: Mapping[str, int], sent: float) -> None:
        lost: list[str] = []
        with self._lock:
            for cluster, holding in list(self._held.items()):
                if renewed.get(cluster) == holding.epoch:
                    holding.deadline = sent + self.ttl - DEADLINE_MARGIN
                else:
                    del self._held[cluster]
                    if holding.gained:
                        lost.append(cluster)
            for cluster, epoch in renewed.items():
                if cluster not in self._held and cluster not in self._unreleased:
                    # Ours in the catalog, unknown here (a claim whose answer was lost): take it up.
                    self._held[cluster] = _Holding(epoch, sent + self.ttl - DEADLINE_MARGIN, previous=None)
        for cluster in lost:
            log.warning("fleet_lease_lost", cluster=cluster)
            self._lose(cluster, "lease_lost")

    def _claim(self, assignment: Mapping[str, str], leases: Mapping[str, LeaseRecord]) -> None:
        with self._lock:
            held = set(self._held)
        wanted = sorted(
            cluster
            for cluster, member in assignment.items()
            if member == self.member
            and cluster not in held
            and not (cluster in leases and leases[cluster].held)
        )
        if not wanted:
            return
        sent = self._clock()
        try:
            won = self.catalog.claim(self.daemon_id, wanted, self.ttl)
        except BackupdError as exc:
            log.error("fleet_claim_failed", clusters=wanted, error=exc.message)
            return
        with self._lock:
            for cluster, epoch in won.items():
                previous = leases[cluster].owner if cluster in leases else None
                self._held[cluster] = _Holding(epoch, sent + self.ttl - DEADLINE_MARGIN, previous)
        if won:
            log.info("fleet_leases_claimed", clusters=won)

    def _gain_pending(self) -> None:
        """Reap the previous owners' runs (one call per previous owner, for all its clusters
        taken here: a takeover of hundreds of clusters is a few statements), then ``on_gain``."""
        with self._lock:
            pending = {c: h for c, h in self._held.items() if not h.gained}
        by_previous: dict[str | None, list[str]] = {}
        for cluster, holding in sorted(pending.items()):
            dead = holding.previous if holding.previous != self.daemon_id else None
            by_previous.setdefault(dead, []).append(cluster)
        for previous, clusters in sorted(by_previous.items(), key=lambda item: item[0] or ""):
            # Runs are stored with the cluster's name, not the lease's: reaped by (dead daemon,
            # cluster name), which is precise, one daemon never serving two clusters of one name.
            names = sorted({cluster_of_lease(c) for c in clusters})
            try:
                reaped = self.catalog.reap_runs_of([previous], names) if previous else ReapedRuns()
                runs = {c: [r for r in reaped.runs if r.cluster == cluster_of_lease(c)] for c in clusters}
                catch_up = {c: catch_up_jobs(self.catalog, ReapedRuns(runs=runs[c])) for c in clusters}
            except BackupdError as exc:
                log.error("fleet_reap_failed", clusters=clusters, previous_owner=previous, error=exc.message)
                continue
            for cluster in clusters:
                holding = pending[cluster]
                with self._lock:
                    if self._held.get(cluster) is not holding:
                        continue  # lost meanwhile
                    holding.gained = True
                log.info(
                    "fleet_cluster_gained",
                    cluster=cluster,
                    epoch=holding.epoch,
                    previous_owner=holding.previous,
                    interrupted_runs=[r.id for r in runs[cluster]],
                    catch_up=catch_up[cluster],
                )
                self._call(self._on_gain, cluster, holding.epoch, catch_up[cluster])

    def _give_up(self, assignment: Mapping[str, str]) -> None:
        now = self._clock()
        with self._lock:
            served = {c for c, h in self._held.items() if h.gained}
        for cluster in list(self._elsewhere_since):
            if cluster not in served or assignment.get(cluster) == self.member:
                del self._elsewhere_since[cluster]
        for cluster in sorted(served):
            owner = assignment.get(cluster)
            if owner == self.member:
                continue
            since = self._elsewhere_since.setdefault(cluster, now)
            if owner is not None and now - since < self._give_up_after:
                continue
            if self._busy(cluster):
                continue
            reason = "reassigned" if owner is not None else "unconfigured"
            with self._lock:
                self._held.pop(cluster, None)  # no new run from here on (epoch_of is None)
            del self._elsewhere_since[cluster]
            log.info("fleet_cluster_given_up", cluster=cluster, to_member=owner, reason=reason)
            self._lose(cluster, reason)
            self._unreleased.add(cluster)
            self._release_given_up({cluster: 0})

    def _release_given_up(self, still_ours: Mapping[str, int]) -> None:
        """Release the given-up clusters that the catalog still says are ours."""
        self._unreleased &= set(still_ours)
        if not self._unreleased:
            return
        try:
            self.catalog.release(self.daemon_id, sorted(self._unreleased))
        except BackupdError as exc:  # retried next tick; it expires within the TTL anyway
            log.error("fleet_release_failed", clusters=sorted(self._unreleased), error=exc.message)
            return
        self._unreleased.clear()

    def _lose(self, cluster: str, reason: str) -> None:
        self._call(self._on_lose, cluster, reason)

    def _call(self, callback: Callable[..., None], cluster: str, *args: object) -> None:
        try:
            callback(cluster, *args)
        except Exception as exc:  # one cluster's failure stops no other's
            what = "on_gain" if callback is self._on_gain else "on_lose"
            log.exception("fleet_callback_failed", callback=what, cluster=cluster, error=str(exc))

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self._until_next_deadline()):
            self.check_deadlines()

    def _until_next_deadline(self) -> float:
        with self._lock:
            deadlines = [h.deadline for h in self._held.values()]
        if not deadlines:
            return WATCH_EVERY
        return min(max(min(deadlines) - self._clock(), 0.05), WATCH_EVERY)


def _members(daemons: list[DaemonRecord]) -> dict[str, dict[str, str]]:
    """Member -> the clusters its newest live incarnation has configured."""
    newest: dict[str, DaemonRecord] = {}
    for daemon in daemons:
        seen = newest.get(daemon.member)
        if seen is None or (daemon.started_at, daemon.id) > (seen.started_at, seen.id):
            newest[daemon.member] = daemon
    return {member: daemon.clusters for member, daemon in newest.items()}


def _owners(leases: list[LeaseRecord]) -> dict[str, str]:
    """Cluster -> the member of its lease's last owner (live or not: a member restarted within
    the TTL keeps its clusters)."""
    return {lease.cluster: member_of(lease.owner) for lease in leases if lease.owner}


def cluster_of_lease(lease: str) -> str:
    """The cluster of lease ``lease``: a daemon names its leases ``<cluster>@<repository hash>``
    (``DaemonApp.lease_name``) and a cluster name holds no ``@``; a lease named as a bare cluster
    is that cluster."""
    return lease.split("@")[0]


def catch_up_jobs(catalog: RunCatalog, reaped: ReapedRuns) -> list[str]:
    """The jobs of ``CATCH_UP_JOBS`` with a reaped run not followed by a success of that job in
    its scope, each once, in ``CATCH_UP_JOBS`` order."""
    jobs: set[str] = set()
    for run in reaped.runs:
        if run.job not in CATCH_UP_JOBS or run.job in jobs:
            continue
        if run.repository_id is not None and run.cluster is not None:
            later = catalog.list_runs(Scope(run.repository_id, run.cluster), limit=20, job=run.job)
            if any(r.id > run.id and r.status == "succeeded" for r in later):
                continue
        jobs.add(run.job)
    return [job for job in CATCH_UP_JOBS if job in jobs]


__all__ = [
    "CATCH_UP_JOBS",
    "GIVE_UP_AFTER",
    "POLL",
    "Membership",
    "catch_up_jobs",
    "cluster_of_lease",
    "member_of",
    "new_daemon_id",
]
