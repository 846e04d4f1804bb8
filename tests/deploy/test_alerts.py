"""deploy/prometheus/alerts.yml with its promtool unit tests, and the Grafana dashboard's queries.

promtool comes from the Debian package ``prometheus`` (``make test`` installs it). Without it the
promtool tests are skipped, except in CI (``CI`` set), where a missing promtool is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from contentflow_backupd.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"

REQUIRED_ALERTS = {
    "BackupdDown",
    "BackupdFullBackupTooOld",
    "BackupdIncrementalBackupTooOld",
    "BackupdBackupRunsFailed",
    "BackupdWalArchiveStale",
    "BackupdBackupSizeAnomaly",
    "BackupdSchedulerStuck",
}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (CI is set): `make test` installs the Debian package prometheus")
        pytest.skip("promtool is missing: `make test` installs the Debian package prometheus")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=300)


def alert_rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def our_metric_names() -> set[str]:
    """Every series name the daemon exposes (histogram and counter suffixes included)."""
    metrics = Metrics()
    metrics.add_cluster("main").set_next_run("full", 1.0)  # absent while no job is scheduled
    body, _ = metrics.render()
    return {s.name for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group(0) in PROMQL_KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def test_metric_names_finds_selectors_only() -> None:
    expr = (
        'time() - max without (instance) (backupd_a{kind="full", x=~"a|b"} > 0) > 26 * 3600 '
        "and on (job) rate(backupd_b_total[5m] offset 1h) unless sum by (le) (up) or vector(1)"
    )
    assert metric_names(expr) == {"backupd_a", "backupd_b_total", "up"}


def test_our_metric_names_come_from_the_daemon() -> None:
    names = our_metric_names()
    assert {
        "backupd_build_info",
        "backupd_backup_runs_total",
        "backupd_backup_duration_seconds_bucket",
    } <= names
    assert "backupd_scheduler_next_run_timestamp_seconds" in names


def test_required_alerts_exist_with_severity_and_text() -> None:
    rules = alert_rules()
    assert set(rules) >= REQUIRED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_alerts_use_only_our_metrics_and_up() -> None:
    ours = our_metric_names() | {"up"}
    for name, rule in alert_rules().items():
        assert metric_names(rule["expr"]) <= ours, (name, metric_names(rule["expr"]) - ours)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    doc = yaml.safe_load(ALERT_TESTS.read_text())
    assert doc["rule_files"] == [ALERTS.name]
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test["alert_rule_test"]:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fired == set(alert_rules()), set(alert_rules()) ^ fired
    assert quiet == set(alert_rules()), set(alert_rules()) ^ quiet


def test_promtool_check_rules() -> None:
    proc = run_promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


def test_promtool_test_rules() -> None:
    proc = run_promtool("test", "rules", str(ALERT_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        ("BackupdFullBackupTooOld", "26 * 3600", "30 * 3600"),
        ("BackupdWalArchiveStale", "backupd_wal_pending_segments > 0", "backupd_wal_pending_segments >= 0"),
        ("BackupdSchedulerStuck", "backupd_leader == 1", "backupd_leader >= 0"),
        # the fleet cases: each join names `cluster`, or one cluster's series answer for another's
        ("BackupdSchedulerStuck", "on (job, instance, cluster)", "on (job, instance)"),
        ("BackupdFullBackupNeverSucceeded", "on (job, instance, cluster)", "on (job, instance)"),
        ("BackupdIncrementalBackupTooOld", "on (job, cluster)", "on (job)"),
        (
            "BackupdIncrementalBackupNeverSucceeded",
            "unless on (job, instance, cluster)",
            "unless on (job, instance)",
        ),
        ("BackupdNoLeader", "without (instance, pod)", "without (instance, pod, cluster)"),
        ("BackupdCatalogDown", "max without (cluster) ", ""),
    ],
)
def test_promtool_tests_catch_a_changed_rule(tmp_path: Path, alert: str, old: str, new: str) -> None:
    """The unit tests are not vacuous: a small change to one rule's expression fails them."""
    tests = yaml.safe_load(ALERT_TESTS.read_text())  # only this alert's tests, to keep it quick
    tests["tests"] = [t for t in tests["tests"] if any(c["alertname"] == alert for c in t["alert_rule_test"])]
    (tmp_path / ALERT_TESTS.name).write_text(yaml.safe_dump(tests))
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    control = run_promtool("test", "rules", str(tmp_path / ALERT_TESTS.name))
    assert control.returncode == 0, control.stdout + control.stderr

    rules = yaml.safe_load(ALERTS.read_text())
    changed = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert]
    assert len(changed) == 1 and changed[0]["expr"].count(old) == 1, old
    changed[0]["expr"] = changed[0]["expr"].replace(old, new)
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(rules))
    proc = run_promtool("test", "rules", str(tmp_path / ALERT_TESTS.name))
    assert proc.returncode != 0
    assert f"alertname: {alert}" in proc.stdout + proc.stderr


# -- Grafana dashboard --------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_queries() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        q = var.get("query")
        if var["type"] == "query":
            text = q["query"] if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", text)
            assert m, text
            exprs.append(m.group(1))
    return exprs


def _grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$cluster", ".*")


def test_dashboard_is_valid_with_unique_ids_and_titles() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["title"] and set(p["gridPos"]) == {"h", "w", "x", "y"}
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p.get("targets", []):
            assert t["expr"].strip() and t["refId"], p["title"]


def test_dashboard_covers_successes_durations_sizes_wal_and_retention() -> None:
    used = set().union(*(metric_names(e) for e in dashboard_queries()))
    assert {
        "backupd_backup_last_success_timestamp_seconds",
        "backupd_backup_duration_seconds_bucket",
        "backupd_backup_last_source_bytes",
        "backupd_backup_last_stored_bytes",
        "backupd_wal_last_archived_timestamp_seconds",
        "backupd_retention_deleted_backups_total",
    } <= used


def test_dashboard_uses_only_our_metrics() -> None:
    ours = our_metric_names()
    for expr in dashboard_queries():
        assert metric_names(expr) and metric_names(expr) <= ours, (expr, metric_names(expr) - ours)


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel query (Grafana variables substituted) is valid PromQL for promtool."""
    rules = [
        {"record": f"dashboard_query_{i}", "expr": _grafana_to_promql(expr)}
        for i, expr in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [{"record": "x", "expr": "sum("}]}]}))
    assert run_promtool("check", "rules", str(broken)).returncode != 0


def test_dashboard_works_per_cluster() -> None:
    """A `cluster` variable (every cluster by default), every selector filtered by it, and no
    aggregation that merges clusters (issue 18)."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    cluster = variables["cluster"]
    assert cluster["type"] == "query" and cluster["multi"] and cluster["includeAll"]
    assert cluster["query"]["query"] == "label_values(backupd_leader, cluster)"
    assert cluster["allValue"] == ".*"
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        assert "cluster" in expr, expr
        selectors = re.findall(r"\b(backupd_\w+)(\{[^}]*\})?", expr)
        assert selectors, expr
        for name, labels in selectors:
            assert 'cluster=~"$cluster"' in labels, (name, expr)
        for op, grouping in re.findall(r"\b(sum|max|min|avg|count)\s*(by\s*\([^)]*\))?\s*\(", expr):
            assert grouping and re.search(r"\bcluster\b", grouping), (op, expr)


def test_the_per_cluster_check_sees_a_merging_aggregation() -> None:
    """Control for the test above: its patterns find a missing filter and a merging `by`."""
    selectors = re.findall(r"\b(backupd_\w+)(\{[^}]*\})?", 'max by (kind) (backupd_x{instance=~"$instance"})')
    assert selectors == [("backupd_x", '{instance=~"$instance"}')]
    groups = re.findall(
        r"\b(sum|max|min|avg|count)\s*(by\s*\([^)]*\))?\s*\(", "time() - max(x) + sum by (kind) (y)"
    )
    assert groups == [("max", ""), ("sum", "by (kind)")]
