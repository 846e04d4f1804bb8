"""``backupd_leader 0`` alone for a cluster a daemon of the fleet has configured but does not own
(observability/metrics.py: ``set_standby``, used by daemon/fleetrun.py)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from contentflow_backupd.observability.metrics import Metrics


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
