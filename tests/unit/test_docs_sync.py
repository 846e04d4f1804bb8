"""The docs that list what the program exposes are checked against the program: the metric
table of docs/observability.md against the daemon's metrics registry (names, types, labels), its
health-check table against the checks ``evaluate_health`` can produce. A new metric or check
without a row (or a row for one that is gone) fails here."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.ops.health.evaluate import (
    DEPENDENCY_ORDER,
    DependencyState,
    DrillState,
    HealthInputs,
    HealthObjectives,
    RecoveryState,
    WalState,
    evaluate_health,
)
from contentflow_backupd.ops.health.fleet import owners_check, starting_report

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def _section(title: str) -> str:
    text = DOC.read_text()
    assert f"\n## {title}\n" in text, f"docs/observability.md lost its section {title!r}"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def registry_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name (as scraped: counters end in ``_total``) -> (type, label names), from the registry."""
    found = {}
    for value in vars(Metrics()).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            found[name] = (value._type, tuple(value._labelnames))
        elif hasattr(value, "describe"):  # a custom collector (the job progress gauges)
            for family in value.describe():
                found[family.name] = (family.type, tuple(value.LABELS))
    return found


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = re.findall(
        r"^\| `(backupd_[a-z_]+)(?:\{([a-z_,]+)\})?` \| (\w+) \|", _section("Metrics"), re.MULTILINE
    )
    return {name: (kind, tuple(labels.split(",")) if labels else ()) for name, labels, kind in rows}


def test_the_metric_table_is_the_registry() -> None:
    documented, registered = documented_metrics(), registry_metrics()
    assert registered, "no metrics found on Metrics()"
    assert sorted(set(registered) - set(documented)) == [], "metrics missing from docs/observability.md"
    assert sorted(set(documented) - set(registered)) == [], "documented metrics the daemon does not have"
    for name, (kind, labels) in registered.items():
        assert documented[name] == (kind, labels), name


def every_check_name() -> set[str]:
    """Every check ``evaluate_health`` produces when every input is known and every objective set,
    the one of a cluster that has not started (``ops/health/fleet.py: starting_report``) and the
    fleet's ``cluster_owners`` (``owners_check``)."""
    inputs = HealthInputs(
        kinds={},
        wal=WalState(None),
        dependencies={name: DependencyState(True) for name in DEPENDENCY_ORDER},
        leader=True,
        corrupt_objects=0,
        drill=DrillState(),
        recovery=RecoveryState(),
    )
    objectives = HealthObjectives(full=3600, incremental=3600, wal=600)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    report = evaluate_health(inputs, objectives, now)
    starting = starting_report("starting", None, now)
    owners = owners_check({}, now)
    return {c.name for c in (*report.checks, *starting.checks, owners)}


def documented_checks() -> set[str]:
    table = _section("The health report").split("| check | breach when |", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for line in table.splitlines():
        first = line.split("|")[1] if line.startswith("|") else ""
        names.update(re.findall(r"`([a-z_]+)`", first))
    return names


def test_the_health_table_is_every_check() -> None:
    checks = every_check_name()
    assert len(checks) > 5
    assert documented_checks() == checks
