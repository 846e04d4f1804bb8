"""The daemon side of the fleet's leases (``daemon/membership.py``, ``daemon/fenced.py``,
``daemon/owners.py``; docs/design/fleet.md, step 8) over a real catalog, SQLite and PostgreSQL.

Several ``Membership`` instances share one catalog, each with its own daemon id, and are driven
by calling ``tick()``; the local deadlines and the 60 s of imbalance run on a clock the test
moves. Leases and daemon rows expire on the catalog's own clock: a member that "dies" (stops
ticking, as after ``kill -9``) uses a short TTL, and the test polls the catalog until its rows
have expired (never asserting how long that took).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog
from contentflow_backupd.daemon.fenced import FencedCatalog, LeaseLost, fenced
from contentflow_backupd.daemon.membership import CATCH_UP_JOBS, GIVE_UP_AFTER, Membership, new_daemon_id
from contentflow_backupd.daemon.owners import fleet_owners
from contentflow_backupd.model import Scope
from tests.catalog.test_fleet import LONG, daemon_dead, wait_until
from tests.support.pg import PgCluster

CLUSTERS = [f"db{i:02d}" for i in range(12)]
DIES = 5.0
"""The TTL of a member that stops ticking: its rows expire this long after its last tick."""
REPO = "repo-1"


class Clock:
    """Monotonic seconds the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Member:
    """A ``Membership`` and what its callbacks were told."""

    def __init__(
        self,
        catalog: SqlCatalog,
        name: str,
        clock: Clock,
        clusters: list[str],
        ttl: float = LONG,
        busy: Callable[[str], bool] = lambda cluster: False,
        digest: str = "digest",
    ) -> None:
        self.gained: dict[str, tuple[int, list[str]]] = {}
        self.lost: list[tuple[str, str]] = []
        self.clusters = clusters
        self.m = Membership(
            catalog,
            name,
            new_daemon_id(name),
            lambda: {c: f"{digest}-{c}" for c in self.clusters},
            self._gain,
            lambda cluster, reason: self.lost.append((cluster, reason)),
            busy=busy,
            ttl=ttl,
            clock=clock,
            host=f"host-{name}",
            pid=os.getpid(),
        )

    def _gain(self, cluster: str, epoch: int, catch_up: list[str]) -> None:
        self.gained[cluster] = (epoch, catch_up)

    @property
    def id(self) -> str:
        return self.m.daemon_id


def owners(catalog: SqlCatalog) -> dict[str, str | None]:
    return {lease.cluster: lease.owner for lease in catalog.leases()}


def load(catalog: SqlCatalog) -> Counter[str | None]:
    return Counter(owners(catalog).values())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def second(catalog_url: str) -> Iterator[SqlCatalog]:
    """A second connection pool on the same catalog: another daemon's."""
    opened = open_catalog(catalog_url)
    try:
        yield opened
    finally:
        opened.close()


def test_three_members_share_twelve_clusters_and_survivors_take_over_a_dead_ones(
    catalog: SqlCatalog, second: SqlCatalog, clock: Clock
) -> None:
    a = Member(catalog, "alpha", clock, CLUSTERS)
    b = Member(catalog, "bravo", clock, CLUSTERS)
    c = Member(second, "charlie", clock, CLUSTERS, ttl=DIES)
    for x in (a, b, c):
        assert x.m.announce()
    for x in (a, b, c):
        x.m.tick()

    # An even spread, each cluster owned by exactly one member, each told once.
    assert load(catalog) == {a.id: 4, b.id: 4, c.id: 4}
    for x in (a, b, c):
        assert set(x.m.held()) == {k for k, v in owners(catalog).items() if v == x.id}
        assert set(x.gained) == set(x.m.held()) and x.lost == []
        assert all(catch_up == [] for _epoch, catch_up in x.gained.values())
    for x in (a, b):
        x.m.tick()  # a second round changes nothing
        assert len(x.gained) == 4 and x.lost == []

    # charlie runs jobs under its lease (fenced), then dies without a word (kill -9).
    victim = sorted(c.m.held())[0]
    scope = Scope(REPO, victim)
    c_catalog = FencedCatalog(second, c.id, c.m.epoch_of)
    interrupted = [c_catalog.start_run(scope, job, "scheduled") for job in ("full", "verify", "wal")]
    assert {r.id for r in catalog.list_runs(scope)} == {r.id for r in interrupted}
    done = catalog.start_run(scope, "verify", "manual")  # verify succeeded after: no catch-up
    catalog.finish_run(done.id, "succeeded")

    wait_until(daemon_dead(catalog, c.id), "charlie's row expired")
    wait_until(lambda: not any(x.held for x in catalog.leases() if x.owner == c.id), "its leases expired")
    a.m.tick()
    b.m.tick()

    assert load(catalog) == {a.id: 6, b.id: 6}
    assert set(a.gained) | set(b.gained) == set(CLUSTERS) and len(a.gained) + len(b.gained) == 12
    (new_owner,) = [x for x in (a, b) if victim in x.m.held()]
    epoch, catch_up = new_owner.gained[victim]
    assert catch_up == ["full"]  # verify succeeded later; wal is never caught up
    for x in (a, b):  # charlie's other clusters, reaped in the same call, had no run
        caught_up = {k: jobs for k, (_epoch, jobs) in x.gained.items() if jobs}
        assert caught_up == ({victim: ["full"]} if x is new_owner else {})
    runs = {r.id: r for r in catalog.list_runs(scope)}
    assert [runs[r.id].status for r in interrupted] == ["interrupted"] * 3
    assert epoch > 1 and a.lost == [] and b.lost == []

    # charlie does not know: its fenced catalog still has its old epoch, and the catalog refuses.
    before = len(catalog.list_runs(scope))
    with pytest.raises(LeaseLost, match="refused"):
        c_catalog.start_run(scope, "full", "scheduled")
    assert len(catalog.list_runs(scope)) == before  # no run recorded

    # Its local deadline passes: every lease it held is lost, nothing more starts.
    clock.now += DIES
    held = sorted(c.m.held())
    assert c.m.check_deadlines() == held and c.lost == [(k, "lease_expired") for k in held]
    assert c.m.held() == {}
    with pytest.raises(LeaseLost, match="does not hold"):
        c_catalog.start_run(scope, "full", "scheduled")

    # The fenced catalog of the new owner starts runs; everything else is the catalog's own.
    mine = fenced(catalog, new_owner.id, new_owner.m.epoch_of)
    run = mine.start_run(scope, "full", "catch-up")
    assert (run.status, run.trigger) == ("running", "catch-up")
    mine.finish_run(run.id, "succeeded")
    assert mine.list_runs(scope, limit=1)[0].status == "succeeded"


def test_a_joining_member_gets_its_share_after_the_imbalance_lasted_and_never_a_busy_one(
    catalog: SqlCatalog, second: SqlCatalog, clock: Clock
) -> None:
    busy: set[str] = set()
    a = Member(catalog, "alpha", clock, CLUSTERS, busy=lambda cluster: cluster in busy)
    a.m.tick()
    assert load(catalog) == {a.id: 12}

    b = Member(second, "bravo", clock, CLUSTERS)
    b.m.tick()  # all held by alpha: nothing to claim yet
    assert load(catalog) == {a.id: 12} and b.gained == {}
    a.m.tick()  # the imbalance starts now
    clock.now += GIVE_UP_AFTER - 1
    a.m.tick()
    b.m.tick()
    assert load(catalog) == {a.id: 12} and a.lost == []

    clock.now += 1
    leaving = {k for k, v in _assigned_to(a, b).items() if v == "bravo"}
    assert len(leaving) == 6
    stuck = sorted(leaving)[0]
    busy.add(stuck)  # a job runs there: alpha keeps it
    a.m.tick()
    assert sorted(a.lost) == [(k, "reassigned") for k in sorted(leaving - {stuck})]
    assert stuck in a.m.held() and a.m.epoch_of(stuck) is not None
    b.m.tick()
    assert load(catalog) == {a.id: 7, b.id: 5}
    assert all(catch_up == [] for _e, catch_up in b.gained.values())  # alpha is alive: nothing reaped

    busy.clear()
    a.m.tick()
    b.m.tick()
    assert load(catalog) == {a.id: 6, b.id: 6}
    assert set(b.m.held()) == leaving and a.m.epoch_of(stuck) is None


def _assigned_to(*members: Member) -> dict[str, str]:
    from contentflow_backupd.daemon.assign import assign

    catalog = members[0].m.catalog
    current = {x.cluster: x.owner.partition("/")[0] for x in catalog.leases() if x.owner}
    return assign({x.m.member: x.clusters for x in members}, current)


def test_a_restarted_member_takes_its_clusters_back_and_catches_up(
    catalog: SqlCatalog, second: SqlCatalog, clock: Clock
) -> None:
    a = Member(catalog, "alpha", clock, CLUSTERS[:3], ttl=DIES)
    a.m.tick()
    assert load(catalog) == {a.id: 3}
    scope = Scope(REPO, "db00")
    FencedCatalog(catalog, a.id, a.m.epoch_of).start_run(scope, "restore_test", "scheduled")
    wait_until(lambda: not any(x.held for x in catalog.leases()), "alpha's leases expired")

    again = Member(second, "alpha", clock, CLUSTERS[:3])  # same member, new incarnation
    again.m.tick()
    assert load(catalog) == {again.id: 3}
    assert again.gained["db00"][1] == ["restore_test"]
    assert again.gained["db01"][1] == [] and again.gained["db01"][0] == 2


def test_leases_of_one_cluster_name_in_two_repositories_are_independent_and_reaped_by_cluster(
    catalog: SqlCatalog, second: SqlCatalog, clock: Clock
) -> None:
    """A daemon names its leases ``<cluster>@<repository hash>``: two repositories' daemons with
    a cluster ``a`` each hold their own lease on one catalog. The runs are stored by cluster
    name, so the takeover of ``a@x`` reaps and catches up the dead daemon's run of ``a`` in
    its repository, and leaves the other repository's running run alone."""
    repo_x, repo_y = Scope("repo-x", "a"), Scope("repo-y", "a")
    x = Member(catalog, "alpha", clock, ["a@x"], ttl=DIES)
    y = Member(second, "bravo", clock, ["a@y"])
    x.m.tick()
    y.m.tick()
    assert owners(catalog) == {"a@x": x.id, "a@y": y.id}
    assert set(x.gained) == {"a@x"} and set(y.gained) == {"a@y"}
    dead_run = FencedCatalog(catalog, x.id, x.m.epoch_of, "a@x").start_run(
        repo_x, "restore_test", "scheduled"
    )
    live_run = FencedCatalog(second, y.id, y.m.epoch_of, "a@y").start_run(repo_y, "restore_test", "scheduled")
    with pytest.raises(LeaseLost):  # bravo does not hold repository x's lease
        FencedCatalog(second, y.id, y.m.epoch_of, "a@x").start_run(repo_x, "full", "scheduled")
    wait_until(daemon_dead(catalog, x.id), "alpha's row expired")
    y.m.tick()  # the other repository's daemon never takes a lease it does not announce
    assert "a@x" not in y.gained
    again = Member(catalog, "alpha", clock, ["a@x"])  # alpha restarted
    again.m.tick()
    assert again.gained["a@x"] == (2, ["restore_test"])
    assert [r.status for r in catalog.list_runs(repo_x)] == ["interrupted"]
    assert [(r.id, r.status) for r in catalog.list_runs(repo_y)] == [(live_run.id, "running")]
    assert dead_run.id != live_run.id


def test_release_all_hands_over_at_the_next_tick(
    catalog: SqlCatalog, second: SqlCatalog, clock: Clock
) -> None:
    a = Member(catalog, "alpha", clock, CLUSTERS[:4])
    b = Member(second, "bravo", clock, CLUSTERS[:4])
    assert a.m.announce() and b.m.announce()
    a.m.tick()
    b.m.tick()
    assert load(catalog) == {a.id: 2, b.id: 2}
    assert sorted(a.m.release_all()) == sorted(a.gained)
    wait_until(daemon_dead(catalog, a.id), "alpha's row ended")  # within RETIRED_TTL
    a.m.tick()  # stopped: claims nothing any more
    b.m.tick()
    assert load(catalog) == {b.id: 4}
    assert all(catch_up == [] for _e, catch_up in b.gained.values())


def test_a_cluster_nobody_configures_any_more_is_given_up_at_once(catalog: SqlCatalog, clock: Clock) -> None:
    a = Member(catalog, "alpha", clock, CLUSTERS[:3])
    a.m.tick()
    a.clusters = CLUSTERS[:2]  # a reload removed db02: announced again at the next tick
    a.m.tick()
    assert a.lost == [("db02", "unconfigured")]
    assert owners(catalog)["db02"] is None and sorted(a.m.held()) == CLUSTERS[:2]
    (daemon,) = catalog.live_daemons()
    assert sorted(daemon.clusters) == CLUSTERS[:2]


def test_fleet_owners_shows_each_clusters_owner(
    catalog: SqlCatalog, second: SqlCatalog, clock: Clock
) -> None:
    a = Member(catalog, "alpha", clock, CLUSTERS[:2])
    b = Member(second, "bravo", clock, ["db01", "db09"], digest="other")  # db01 set up differently
    assert a.m.announce() and b.m.announce()
    a.m.tick()
    b.m.tick()
    view = fleet_owners(catalog)
    assert sorted(view) == ["db00", "db01", "db09"]
    for cluster, info in view.items():
        owner = a if cluster in a.m.held() else b
        assert (info.daemon_id, info.member, info.host, info.pid) == (
            owner.id,
            owner.m.member,
            f"host-{owner.m.member}",
            os.getpid(),
        )
        assert info.held and info.live and info.since is not None and info.epoch == 1
        assert info.config_differs is (cluster == "db01")
    b.m.release_all()
    released = fleet_owners(catalog)["db09"]
    assert (released.daemon_id, released.member, released.held, released.live) == (None, None, False, False)


def test_the_catch_up_jobs_are_the_job_names_of_the_daemon() -> None:
    from contentflow_backupd.model import JOB_NAMES

    assert set(CATCH_UP_JOBS) == set(JOB_NAMES) - {"wal"}


@pytest.mark.pg
def test_catalog_errors_keep_the_leases_until_the_local_deadline(pg: PgCluster, clock: Clock) -> None:
    db = pg.create_database()
    catalog = open_catalog(pg.url(db))
    try:
        a = Member(catalog, "alpha", clock, CLUSTERS[:2], ttl=15.0)
        a.m.tick()
        held = a.m.held()
        assert sorted(held) == CLUSTERS[:2]
        pg.drop_database(db)  # the catalog is gone: every call fails
        clock.now += 5
        a.m.tick()  # does not raise; the leases stay until their local deadline
        assert a.m.held() == held and a.lost == []
        assert a.m.epoch_of("db00") == held["db00"]
        clock.now += 15 - 2 - 5  # request time + TTL - 2 s
        a.m.tick()
        assert sorted(a.lost) == [(k, "lease_expired") for k in CLUSTERS[:2]]
        assert a.m.held() == {} and a.m.epoch_of("db00") is None
    finally:
        catalog.close()
        pg.drop_database(db)


def test_the_fenced_catalog_is_the_whole_catalog(catalog: SqlCatalog) -> None:
    from contentflow_backupd.catalog.base import Catalog
    from tests.catalog.test_roles import every_member

    wrapped = FencedCatalog(catalog, "alpha/1", lambda cluster: None)
    for name in sorted(every_member(Catalog)):
        assert getattr(wrapped, name) is not None, name
    assert wrapped.engine is catalog.engine
    with pytest.raises(AttributeError):
        _ = wrapped._sessions_private
    with pytest.raises(LeaseLost, match="does not hold"):
        wrapped.start_run(Scope(REPO, "db00"), "full", "scheduled")
    assert catalog.list_runs(Scope(REPO, "db00")) == []


def test_run_ticks_and_watches_the_deadlines_until_stopped(catalog: SqlCatalog, clock: Clock) -> None:
    """``run`` on a thread, as the daemon starts it: it claims, and its deadline watcher notices a
    local deadline passing between ticks (the clock moves; the poll is long)."""
    import threading

    a = Member(catalog, "alpha", clock, CLUSTERS[:2])
    a.m.poll = 3600.0  # one tick only: what follows is the watcher's doing
    stop = threading.Event()
    runner = threading.Thread(target=a.m.run, args=(stop,))
    runner.start()
    try:
        wait_until(lambda: sorted(a.gained) == CLUSTERS[:2], "claimed")
        assert a.lost == []
        clock.now += LONG
        wait_until(lambda: len(a.lost) == 2, "the deadline noticed")
        assert sorted(a.lost) == [(k, "lease_expired") for k in CLUSTERS[:2]]
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive()


def test_a_daemon_whose_row_vanished_announces_again_and_keeps_its_leases(
    catalog: SqlCatalog, clock: Clock
) -> None:
    from sqlalchemy import text

    a = Member(catalog, "alpha", clock, CLUSTERS[:2])
    a.m.tick()
    held = a.m.held()
    with catalog.engine.begin() as conn:  # as if the catalog had lost the row
        conn.execute(text("DELETE FROM fleet_daemons"))
    a.m.tick()  # the renewal fails: the row is gone
    assert catalog.live_daemons() == [] and a.m.held() == held
    a.m.tick()  # announced again, then renewed
    assert [d.id for d in catalog.live_daemons()] == [a.id]
    assert a.m.held() == held and a.lost == [] and load(catalog) == {a.id: 2}
