"""The pure parts of a daemon in a fleet (daemon/fleetrun.py): ``backupd_leader 0`` alone for a
cluster configured here but owned elsewhere (``Metrics.set_standby``), and ``/healthz``'s
``cluster_owners`` check and ``owned_elsewhere`` list (ops/health/fleet.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.ops.health.fleet import fleet_health, owners_check


def series(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render()[0].decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def with_cluster(m: Metrics, cluster: str) -> set[str]:
    return {name for name, labels in series(m) if ("cluster", cluster) in labels}


def test_a_standby_cluster_exports_only_its_leader_series_at_zero() -> None:
    m = Metrics("test")
    m.set_standby("orders")
    assert with_cluster(m, "orders") == {"backupd_leader"}
    assert series(m)[("backupd_leader", (("cluster", "orders"),))] == 0
    view = m.add_cluster("orders")  # the lease is gained: every series, led
    view.set_leader(True)
    assert len(with_cluster(m, "orders")) > 10
    assert series(m)[("backupd_leader", (("cluster", "orders"),))] == 1
    m.set_standby("orders")  # owned: untouched
    assert series(m)[("backupd_leader", (("cluster", "orders"),))] == 1
    m.remove_cluster("orders")  # the lease is lost
    assert with_cluster(m, "orders") == set()
    m.set_standby("orders")
    assert with_cluster(m, "orders") == {"backupd_leader"}
    m.clear_standby("orders")
    assert with_cluster(m, "orders") == set()


def test_cluster_owners_fails_only_after_a_minute_without_an_owner() -> None:
    now = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)
    assert owners_check({}, now).ok
    fresh = owners_check({"orders": now - timedelta(seconds=59)}, now)
    assert fresh.ok and "orders" in fresh.detail
    late = owners_check({"orders": now - timedelta(seconds=60), "billing": now}, now)
    assert not late.ok and "orders" in late.detail and "billing" not in late.detail


def test_the_whole_lists_clusters_owned_elsewhere_and_the_owners_check() -> None:
    now = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)
    check = owners_check({"orders": now - timedelta(minutes=5)}, now)
    whole = fleet_health(
        {}, implicit=False, catalog=None, now=now, fleet_checks=(check,), elsewhere={"b": "d2(h:1)"}
    )
    doc = whole.to_json()
    assert doc["ok"] is False and [c["name"] for c in doc["checks"]] == ["cluster_owners"]
    assert doc["owned_elsewhere"] == [{"cluster": "b", "owner": "d2(h:1)"}]
    assert "owned_elsewhere" not in fleet_health({}, implicit=False, catalog=None, now=now).to_json()


def test_a_lease_is_named_by_cluster_and_repository_location() -> None:
    from contentflow_backupd.daemon.membership import cluster_of_lease
    from contentflow_backupd.wiring.app import lease_name

    main = lease_name("main", "file:///srv/repo")
    assert main.startswith("main@") and len(main.split("@")[1]) == 8
    assert cluster_of_lease(main) == "main" and cluster_of_lease("main") == "main"
    assert lease_name("main", "file:///srv/repo/") == main  # a trailing / is the same location
    assert lease_name("main", "file:///srv/repo2") != main  # another repository: another lease
    assert lease_name("orders", "file:///srv/repo").split("@")[1] == main.split("@")[1]
    s3 = lease_name("main", "s3://bucket/pg")
    assert lease_name("main", "s3://bucket/pg", "http://minio:9000") != s3  # another endpoint
