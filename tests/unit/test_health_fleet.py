"""The health of the whole daemon from each cluster's report (ops/health/fleet.py), pure."""

from __future__ import annotations

from datetime import UTC, datetime

from contentflow_backupd.ops.health.evaluate import DependencyState, HealthCheck, HealthReport
from contentflow_backupd.ops.health.fleet import ClusterHealth, fleet_health, starting_report

NOW = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)


def report(*oks: bool) -> HealthReport:
    return HealthReport(tuple(HealthCheck(f"check_{i}", ok, "d") for i, ok in enumerate(oks)), NOW)


def test_the_implicit_cluster_keeps_its_checks_as_the_wholes() -> None:
    doc = fleet_health({"main": report(True, False)}, implicit=True, catalog=DependencyState(True), now=NOW)
    out = doc.to_json()
    assert out["checks"] == report(True, False).to_json()["checks"]  # as before
    assert set(out) == {"ok", "status", "checked_at", "checks", "clusters"}
    assert out["ok"] is False and out["clusters"][0]["cluster"] == "main"


def test_named_clusters_the_whole_is_the_daemons_check_and_every_cluster() -> None:
    reports = {"orders": report(True), "billing": report(True)}
    healthy = fleet_health(reports, implicit=False, catalog=DependencyState(True), now=NOW)
    assert healthy.ok and [c["cluster"] for c in healthy.to_json()["clusters"]] == ["billing", "orders"]
    assert [c["name"] for c in healthy.to_json()["checks"]] == ["dependency_catalog"]
    one_bad = fleet_health({**reports, "orders": report(False)}, implicit=False, catalog=None, now=NOW)
    assert not one_bad.ok and one_bad.to_json()["checks"] == []
    catalog_down = fleet_health(reports, implicit=False, catalog=DependencyState(False, "gone"), now=NOW)
    assert not catalog_down.ok and catalog_down.to_json()["checks"][0]["detail"] == "gone"


def test_a_cluster_not_started_fails_one_check_naming_why() -> None:
    starting = starting_report("starting", "storage unreachable", NOW)
    assert not starting.ok and [c.name for c in starting.checks] == ["cluster_start"]
    assert "retried" in starting.checks[0].detail and "storage unreachable" in starting.checks[0].detail
    failed = starting_report("failed", "the encryption key is wrong", NOW)
    assert failed.checks[0].detail == "not started: the encryption key is wrong"
    one = ClusterHealth("orders", starting).to_json()
    assert one["cluster"] == "orders" and one["ok"] is False and one["checks"][0]["name"] == "cluster_start"
