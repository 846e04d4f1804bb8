"""The ``FleetCatalog`` role on SQLite and PostgreSQL: daemons, leases on the catalog's clock,
epochs, fenced runs, reaping a dead daemon's runs, concurrent claims, and revision 0009 up and
down (docs/design/fleet.md, step 8)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from contentflow_backupd.catalog.base import FleetCatalog
from contentflow_backupd.catalog.models import VERSION_TABLE, Base
from contentflow_backupd.catalog.runs import INTERRUPTED_ERROR
from contentflow_backupd.catalog.sql import SqlCatalog, alembic_config, open_catalog
from contentflow_backupd.errors import CatalogError
from contentflow_backupd.model import BackupRecord, Scope
from tests.catalog.test_catalog import sqla_url

LONG = 600.0
"""A TTL no test outlives: the lease or daemon stays alive."""
SHORT = 1.0
"""A TTL the test waits out (by polling the catalog, never by asserting a duration)."""
WAIT_S = 120.0
"""How long ``wait_until`` polls before the test fails: generous, the machine is shared."""

A, B = "host-a/1111", "host-b/2222"
ORDERS = Scope("repo-1", "orders")
BILLING = Scope("repo-1", "billing")


def announce(catalog: FleetCatalog, daemon_id: str, clusters: list[str], ttl_s: float = LONG) -> None:
    member, _, incarnation = daemon_id.partition("/")
    catalog.announce(
        daemon_id,
        member=member,
        host=member,
        pid=int(incarnation),
        version="test",
        clusters={name: f"digest-{name}" for name in clusters},
        ttl_s=ttl_s,
    )


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not {what} after {WAIT_S} s")
        time.sleep(0.2)


def lease(catalog: FleetCatalog, cluster: str) -> tuple[str | None, int, bool]:
    (found,) = [x for x in catalog.leases() if x.cluster == cluster]
    return found.owner, found.epoch, found.held


def lease_expired(catalog: FleetCatalog, cluster: str) -> Callable[[], bool]:
    return lambda: not lease(catalog, cluster)[2]


def daemon_dead(catalog: FleetCatalog, daemon_id: str) -> Callable[[], bool]:
    return lambda: daemon_id not in {d.id for d in catalog.live_daemons()}


# -- daemons -------------------------------------------------------------------------------


def test_announce_records_the_daemon_and_adds_free_leases(catalog: SqlCatalog) -> None:
    announce(catalog, A, ["orders", "billing"])
    (daemon,) = catalog.live_daemons()
    assert (daemon.id, daemon.member, daemon.host, daemon.pid, daemon.version) == (
        A,
        "host-a",
        "host-a",
        1111,
        "test",
    )
    assert daemon.clusters == {"orders": "digest-orders", "billing": "digest-billing"}
    assert daemon.started_at == daemon.heartbeat_at < daemon.expires_at
    assert daemon.expires_at.tzinfo is not None and daemon.expires_at.utcoffset() == UTC.utcoffset(None)
    leases = catalog.leases()
    assert [(x.cluster, x.owner, x.epoch, x.held) for x in leases] == [
        ("billing", None, 0, False),
        ("orders", None, 0, False),
    ]
    announce(catalog, B, ["orders"])  # an existing lease row is left as it is
    assert [x.cluster for x in catalog.leases()] == ["billing", "orders"]
    assert [d.id for d in catalog.live_daemons()] == [A, B]


def test_a_daemon_not_heartbeating_is_no_longer_live(catalog: SqlCatalog) -> None:
    announce(catalog, A, ["orders"], ttl_s=SHORT)
    announce(catalog, B, ["orders"])
    wait_until(daemon_dead(catalog, A), "expired")
    assert [d.id for d in catalog.live_daemons()] == [B]
    catalog.heartbeat_and_renew(A, LONG)  # a heartbeat brings it back
    assert [d.id for d in catalog.live_daemons()] == [A, B]


def test_heartbeat_of_a_daemon_never_announced_is_an_error(catalog: SqlCatalog) -> None:
    with pytest.raises(CatalogError, match="no fleet daemon"):
        catalog.heartbeat_and_renew(A, LONG)


def test_a_ttl_must_be_positive(catalog: SqlCatalog) -> None:
    with pytest.raises(ValueError, match="TTL"):
        announce(catalog, A, ["orders"], ttl_s=0)


# -- claims, renewals, expiry, release, epochs ---------------------------------------------


def test_a_claim_takes_free_leases_once_and_raises_their_epoch(catalog: SqlCatalog) -> None:
    announce(catalog, A, ["orders"])
    announce(catalog, B, ["orders", "billing"])
    assert catalog.claim(A, ["orders", "billing", "new"], LONG) == {"billing": 1, "new": 1, "orders": 1}
    assert catalog.claim(B, ["orders", "billing", "new"], LONG) == {}
    assert catalog.claim(A, ["orders"], LONG) == {}  # held by itself: no new epoch
    assert lease(catalog, "orders") == (A, 1, True)
    assert catalog.claim(A, [], LONG) == {}


def test_a_daemon_not_live_claims_nothing(catalog: SqlCatalog) -> None:
    assert catalog.claim(A, ["orders"], LONG) == {}  # never announced
    announce(catalog, A, ["orders"], ttl_s=SHORT)
    wait_until(daemon_dead(catalog, A), "expired")
    assert catalog.claim(A, ["orders"], LONG) == {}
    assert lease(catalog, "orders") == (None, 0, False)


def test_renewal_keeps_held_leases_and_an_expired_lease_is_lost(catalog: SqlCatalog) -> None:
    announce(catalog, A, ["orders", "billing"])
    announce(catalog, B, ["orders", "billing"])
    assert catalog.claim(A, ["orders"], SHORT) == {"orders": 1}
    assert catalog.claim(A, ["billing"], LONG) == {"billing": 1}
    renewed_before = {x.cluster: x.renewed_at for x in catalog.leases()}
    wait_until(lease_expired(catalog, "orders"), "expired")
    # the expired lease is not renewed, the held one is
    assert catalog.heartbeat_and_renew(A, LONG) == {"billing": 1}
    after = {x.cluster: x for x in catalog.leases()}
    assert after["orders"].held is False and after["orders"].owner == A
    assert after["billing"].held is True
    assert after["billing"].renewed_at is not None and renewed_before["billing"] is not None
    assert after["billing"].renewed_at > renewed_before["billing"]
    # another daemon wins the expired one, with a new epoch; the loser renews nothing of it
    assert catalog.claim(B, ["orders", "billing"], LONG) == {"orders": 2}
    assert catalog.heartbeat_and_renew(A, LONG) == {"billing": 1}
    assert lease(catalog, "orders") == (B, 2, True)


def test_an_expired_lease_can_be_claimed_again_by_its_owner_with_a_new_epoch(catalog: SqlCatalog) -> None:
    announce(catalog, A, ["orders"])
    assert catalog.claim(A, ["orders"], SHORT) == {"orders": 1}
    wait_until(lease_expired(catalog, "orders"), "expired")
    assert catalog.claim(A, ["orders"], LONG) == {"orders": 2}


def test_release_frees_own_leases_and_the_next_claim_raises_the_epoch(catalog: SqlCatalog) -> None:
    announce(catalog, A, ["orders", "billing", "web"])
    announce(catalog, B, ["orders", "billing", "web"])
    assert catalog.claim(A, ["orders", "billing", "web"], LONG) == {"billing": 1, "orders": 1, "web": 1}
    assert catalog.release(B) == []  # not its leases
    assert catalog.release(A, ["orders", "unknown"]) == ["orders"]
    assert lease(catalog, "orders") == (None, 1, False)
    assert catalog.heartbeat_and_renew(A, LONG) == {"billing": 1, "web": 1}
    assert catalog.claim(B, ["orders"], LONG) == {"orders": 2}
    assert catalog.release(A) == ["billing", "web"]
    assert catalog.release(A) == []
    assert catalog.claim(B, ["billing", "web"], LONG) == {"billing": 2, "web": 2}
    assert [(x.cluster, x.owner, x.epoch, x.held) for x in catalog.leases()] == [
        ("billing", B, 2, True),
        ("orders", B, 2, True),
        ("web", B, 2, True),
    ]


# -- fenced runs -----------------------------------------------------------------------------


def run_row(catalog: SqlCatalog, run_id: int) -> tuple[str | None, int | None]:
    with catalog.engine.connect() as conn:
        row = conn.execute(
            text("select daemon_id, lease_epoch from runs where id = :id"), {"id": run_id}
        ).one()
    return row[0], row[1]


def test_a_fenced_run_starts_only_for_the_owner_of_the_current_epoch(catalog: SqlCatalog) -> None:
    announce(catalog, A, ["orders", "billing"])
    announce(catalog, B, ["orders", "billing"])
    assert catalog.start_run_fenced(A, 0, ORDERS, "full", "scheduled") is None  # no lease held
    assert catalog.start_run_fenced(A, 1, Scope("repo-1", "nowhere"), "full", "scheduled") is None
    assert catalog.claim(A, ["orders"], LONG) == {"orders": 1}
    run = catalog.start_run_fenced(A, 1, ORDERS, "full", "scheduled", pid=1111, host="host-a")
    assert run is not None
    assert (run.job, run.trigger, run.status, run.cluster, run.repository_id) == (
        "full",
        "scheduled",
        "running",
        "orders",
        "repo-1",
    )
    assert (run.pid, run.host) == (1111, "host-a")
    assert run_row(catalog, run.id) == (A, 1)
    assert catalog.list_runs(ORDERS) == [run]
    assert catalog.start_run_fenced(A, 2, ORDERS, "full", "scheduled") is None  # wrong epoch
    assert catalog.start_run_fenced(B, 1, ORDERS, "full", "scheduled") is None  # not the owner
    assert catalog.start_run_fenced(A, 1, BILLING, "full", "scheduled") is None  # other cluster
    assert catalog.list_runs(ORDERS) == [run] and catalog.list_runs(BILLING) == []


def test_a_fenced_run_is_refused_once_the_lease_is_lost(catalog: SqlCatalog) -> None:
    announce(catalog, A, ["orders"])
    announce(catalog, B, ["orders"])
    assert catalog.claim(A, ["orders"], SHORT) == {"orders": 1}
    wait_until(lease_expired(catalog, "orders"), "expired")
    # expired, not yet claimed by anyone: already refused
    assert catalog.start_run_fenced(A, 1, ORDERS, "full", "scheduled") is None
    assert catalog.claim(B, ["orders"], LONG) == {"orders": 2}
    assert catalog.start_run_fenced(A, 1, ORDERS, "full", "scheduled") is None
    won = catalog.start_run_fenced(B, 2, ORDERS, "full", "catch-up")
    assert won is not None and run_row(catalog, won.id) == (B, 2)
    assert catalog.release(B) == ["orders"]
    assert catalog.start_run_fenced(B, 2, ORDERS, "full", "scheduled") is None  # released
    assert [r.id for r in catalog.list_runs(ORDERS)] == [won.id]


def test_a_fenced_run_starts_under_its_own_lease_of_one_cluster_name_in_two_repositories(
    catalog: SqlCatalog,
) -> None:
    """Two repositories with a cluster ``a``: two leases, ``a@x`` and ``a@y`` (the daemon names
    a lease ``<cluster>@<repository hash>``), held by two daemons. A run of (repo, ``a``) fenced
    under ``a@x`` starts only for the daemon holding ``a@x``, stored with the cluster's name."""
    repo_x, repo_y = Scope("repo-x", "a"), Scope("repo-y", "a")
    announce(catalog, A, ["a@x"])
    announce(catalog, B, ["a@y"])
    assert catalog.claim(A, ["a@x"], LONG) == {"a@x": 1}
    assert catalog.claim(B, ["a@y"], LONG) == {"a@y": 1}
    assert catalog.start_run_fenced(B, 1, repo_x, "full", "scheduled", lease="a@x") is None
    assert catalog.start_run_fenced(A, 1, repo_x, "full", "scheduled") is None  # no lease "a"
    run = catalog.start_run_fenced(A, 1, repo_x, "full", "scheduled", lease="a@x")
    assert run is not None and (run.repository_id, run.cluster) == ("repo-x", "a")
    assert run_row(catalog, run.id) == (A, 1)
    assert catalog.start_run_fenced(A, 1, repo_y, "full", "scheduled", lease="a@y") is None
    other = catalog.start_run_fenced(B, 1, repo_y, "full", "scheduled", lease="a@y")
    assert other is not None and run_row(catalog, other.id) == (B, 1)
    assert catalog.list_runs(repo_x) == [run] and catalog.list_runs(repo_y) == [other]


# -- reaping a dead daemon's runs ----------------------------------------------------------


def running_backup(catalog: SqlCatalog, backup_id: str, cluster: str, *, pid: int, host: str) -> None:
    catalog.upsert_backup(
        BackupRecord(
            id=backup_id,
            cluster=cluster,
            kind="full",
            mode="logical",
            status="running",
            generation=backup_id,
            started_at=datetime.now(UTC),
            pid=pid,
            host=host,
            repository_id="repo-1",
        )
    )


def test_reap_runs_of_a_dead_daemon_interrupts_its_runs_and_backups_of_the_given_clusters(
    catalog: SqlCatalog,
) -> None:
    announce(catalog, A, ["orders", "billing"], ttl_s=SHORT)
    announce(catalog, B, ["orders", "billing"])
    assert catalog.claim(A, ["orders", "billing"], SHORT) == {"billing": 1, "orders": 1}
    mine = catalog.start_run_fenced(A, 1, ORDERS, "full", "scheduled", pid=1111, host="host-a")
    other_cluster = catalog.start_run_fenced(A, 1, BILLING, "full", "scheduled", pid=1111, host="host-a")
    manual = catalog.start_run(ORDERS, "verify", "manual", pid=1111, host="host-a")  # no daemon id
    assert mine is not None and other_cluster is not None
    running_backup(catalog, "b-tagged", "orders", pid=1111, host="host-a")
    with catalog.engine.begin() as conn:
        conn.execute(text("update backups set daemon_id = :d where id = 'b-tagged'"), {"d": A})
    running_backup(catalog, "b-same-process", "orders", pid=1111, host="host-a")  # untagged, same pid
    running_backup(catalog, "b-other-process", "orders", pid=4242, host="host-a")
    running_backup(catalog, "b-billing", "billing", pid=1111, host="host-a")
    # A is alive: nothing of it is reaped
    assert catalog.reap_runs_of([A], ["orders", "billing"]).runs == []
    wait_until(daemon_dead(catalog, A), "expired")
    assert catalog.claim(B, ["orders"], LONG) == {"orders": 2}
    ours = catalog.start_run_fenced(B, 2, ORDERS, "wal", "scheduled")
    assert ours is not None
    reaped = catalog.reap_runs_of([A, B], ["orders"])
    assert [r.id for r in reaped.runs] == [mine.id]
    (run,) = reaped.runs
    assert run.status == "interrupted" and run.error == INTERRUPTED_ERROR and run.finished_at is not None
    assert reaped.backup_ids == ["b-same-process", "b-tagged"]
    status = {r.id: r.status for r in [*catalog.list_runs(ORDERS), *catalog.list_runs(BILLING)]}
    assert status == {
        mine.id: "interrupted",
        manual.id: "running",  # a manual command keeps the pid rule (mark_interrupted)
        ours.id: "running",  # B is alive
        other_cluster.id: "running",  # not a cluster asked for
    }
    for backup_id, want in [
        ("b-tagged", "interrupted"),
        ("b-same-process", "interrupted"),
        ("b-other-process", "running"),
        ("b-billing", "running"),
    ]:
        found = catalog.get_backup(backup_id)
        assert found is not None and found.status == want, backup_id
    again = catalog.reap_runs_of([A], ["orders"])  # idempotent
    assert again.runs == [] and again.backup_ids == []
    assert [r.id for r in catalog.reap_runs_of([A], ["billing"]).runs] == [other_cluster.id]
    assert catalog.reap_runs_of(["never/1"], ["orders"]).runs == []


# -- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("rows_exist", [True, False], ids=["announced-leases", "new-leases"])
def test_daemons_claiming_at_once_get_each_cluster_exactly_once(catalog_url: str, rows_exist: bool) -> None:
    clusters = [f"c{i:02d}" for i in range(40)]
    daemons = [f"host-{i}/{1000 + i}" for i in range(4)]
    catalogs = [open_catalog(catalog_url) for _ in daemons]
    try:
        for daemon_id, opened in zip(daemons, catalogs, strict=True):
            announce(opened, daemon_id, clusters if rows_exist else [])
        start = threading.Barrier(len(daemons))
        won: dict[str, dict[str, int]] = {}
        errors: list[BaseException] = []

        def claim(daemon_id: str, opened: SqlCatalog) -> None:
            try:
                start.wait()
                for _round in range(3):  # again and again: nothing held is taken twice
                    for cluster, epoch in opened.claim(daemon_id, clusters, LONG).items():
                        won.setdefault(daemon_id, {})[cluster] = epoch
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=claim, args=pair) for pair in zip(daemons, catalogs, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        taken = [cluster for mine in won.values() for cluster in mine]
        assert sorted(taken) == clusters  # every cluster once
        assert {e for mine in won.values() for e in mine.values()} == {1}
        owners = {x.cluster: x.owner for x in catalogs[0].leases()}
        assert owners == {cluster: d for d, mine in won.items() for cluster in mine}
    finally:
        for opened in catalogs:
            opened.close()


# -- revision 0009 --------------------------------------------------------------------------


def test_revision_0009_goes_up_and_down(catalog_url: str) -> None:
    with open_catalog(catalog_url) as opened:  # at head (0009), with fleet rows
        announce(opened, A, ["orders"])
        assert opened.claim(A, ["orders"], LONG) == {"orders": 1}
        assert opened.start_run_fenced(A, 1, ORDERS, "full", "scheduled") is not None
    engine = create_engine(sqla_url(catalog_url))
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(connection=conn), "0008")
        with engine.connect() as conn:
            found = inspect(conn)
            tables = set(found.get_table_names())
            assert "fleet_daemons" not in tables and "fleet_leases" not in tables
            assert {"daemon_id", "lease_epoch"}.isdisjoint(c["name"] for c in found.get_columns("runs"))
            assert "daemon_id" not in {c["name"] for c in found.get_columns("backups")}
            assert conn.execute(text(f"select version_num from {VERSION_TABLE}")).scalar() == "0008"
            assert conn.execute(text("select count(*) from runs")).scalar() == 1  # rows kept
        with open_catalog(catalog_url) as opened:  # up again, as a start does
            assert opened.leases() == []
            assert [r.job for r in opened.list_runs(ORDERS)] == ["full"]
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_a_version_that_does_not_know_the_catalogs_revision_refuses_to_open_it(catalog_url: str) -> None:
    """Mixed versions (design, step 8): a daemon older than 0009 cannot open a catalog at 0009.
    Seen from this version: a catalog at a revision newer than its head is refused, unchanged."""
    open_catalog(catalog_url).close()
    engine = create_engine(sqla_url(catalog_url))
    try:
        with engine.begin() as conn:
            conn.execute(text(f"update {VERSION_TABLE} set version_num = '9999'"))
        with pytest.raises(CatalogError, match="9999"):
            open_catalog(catalog_url)
        with engine.connect() as conn:
            assert conn.execute(text(f"select version_num from {VERSION_TABLE}")).scalar() == "9999"
    finally:
        engine.dispose()


def test_a_fleet_run_is_not_reaped_by_pid_but_by_the_fleet(catalog: SqlCatalog) -> None:
    """``mark_interrupted`` (the pid rule of manual commands) leaves a fenced run alone, so that the
    daemon taking the cluster over reaps it with ``reap_runs_of`` and catches it up; a run
    without a daemon id is still reaped by pid."""
    announce(catalog, A, ["orders"], ttl_s=SHORT)
    assert catalog.claim(A, ["orders"], SHORT) == {"orders": 1}
    fleet_run = catalog.start_run_fenced(A, 1, ORDERS, "full", "scheduled", pid=1111, host="host-a")
    manual = catalog.start_run(ORDERS, "full", "manual", pid=2222, host="host-a")
    assert fleet_run is not None
    catalog.mark_interrupted(lambda pid, host: False)  # every process gone
    status = {r.id: r.status for r in catalog.list_runs(ORDERS)}
    assert status == {fleet_run.id: "running", manual.id: "interrupted"}
    wait_until(daemon_dead(catalog, A), "expired")  # A's row and lease expire: A is dead
    reaped = catalog.reap_runs_of([A], ["orders"])
    assert [r.id for r in reaped.runs] == [fleet_run.id]
    assert {r.id: r.status for r in catalog.list_runs(ORDERS)}[fleet_run.id] == "interrupted"
