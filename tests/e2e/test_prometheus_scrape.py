"""A real Prometheus server (Debian package ``prometheus``) scrapes a running daemon: our series
arrive through its HTTP API, each per-cluster one with its ``cluster`` label, and every rule of
deploy/prometheus/alerts.yml evaluates on them without error and stays quiet while the daemon is
healthy. A target label ``cluster`` (Kubernetes) renames ours, and the relabeling that
docs/observability.md gives puts it back."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from contentflow_backupd import __version__
from tests.support.cli import Cli
from tests.support.daemon import Daemon
from tests.support.prometheus import JOB, prometheus_binary, prometheus_server, query, wait_for

pytestmark = pytest.mark.pg

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
OBSERVABILITY = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def _require_prometheus() -> None:
    if prometheus_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed (CI is set): `make test` installs the Debian package")
        pytest.skip("prometheus is not installed: `make test` installs the Debian package")


def _alert_rules() -> dict[str, str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def _documented_relabeling() -> list[dict[str, Any]]:
    """The ``metric_relabel_configs`` of docs/observability.md, "The cluster label"."""
    section = OBSERVABILITY.read_text().split("### The cluster label", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    configs: list[dict[str, Any]] = yaml.safe_load(block)["metric_relabel_configs"]
    return configs


def test_prometheus_scrapes_the_daemon(cli: Cli) -> None:
    _require_prometheus()
    env = {
        **cli.env,
        "BACKUPD_SCHEDULE__FULL": "every 5s",
        "BACKUPD_SCHEDULE__INCREMENTAL": "off",
        "BACKUPD_SCHEDULE__WAL": "off",
        "BACKUPD_SCHEDULE__RETENTION": "off",
        "BACKUPD_SCHEDULE__VERIFY": "off",
        "BACKUPD_SCHEDULE__RESTORE_TEST": "off",
        "BACKUPD_SHUTDOWN_GRACE": "5s",
    }
    with Daemon(env) as daemon:
        daemon.wait_for("/readyz 200", lambda: daemon.get("/readyz")[0] == 200, timeout=90)
        with prometheus_server([f"127.0.0.1:{daemon.port}"]) as url:
            instance = {"job": JOB, "instance": f"127.0.0.1:{daemon.port}"}

            up = wait_for(url, f'up{{job="{JOB}"}} == 1')
            assert up[0]["metric"]["instance"] == instance["instance"]

            info = wait_for(url, "backupd_build_info")
            assert [(s["metric"]["version"], s["value"][1]) for s in info] == [(__version__, "1")]
            assert {k: info[0]["metric"][k] for k in instance} == instance

            runs = wait_for(url, "backupd_backup_runs_total", lambda r: len(r) == 4)
            assert {(s["metric"]["kind"], s["metric"]["result"]) for s in runs} == {
                (kind, result) for kind in ("full", "incremental") for result in ("success", "failure")
            }
            # the scheduled full backup ran and Prometheus saw the counter move
            wait_for(url, 'backupd_backup_runs_total{kind="full", result="success"} > 0', timeout=120)
            wait_for(url, 'backupd_backup_last_success_timestamp_seconds{kind="full"} > 0')

            # the daemon's own `job` label is stored as `exported_job` (alerts.yml relies on it);
            # a job that is off has no next-run series
            next_runs = wait_for(url, "backupd_scheduler_next_run_timestamp_seconds")
            assert {s["metric"]["exported_job"] for s in next_runs} == {"full"}
            assert {s["metric"]["job"] for s in next_runs} == {JOB}
            assert query(url, "backupd_leader") and query(url, "backupd_leader")[0]["value"][1] == "1"
            # every per-cluster series carries the daemon's cluster; only the daemon's own do not
            ours = query(url, '{__name__=~"backupd_.+"}')
            assert len(ours) > 50
            daemon_level = {s["metric"]["__name__"] for s in ours if "cluster" not in s["metric"]}
            assert {re.sub(r"_(bucket|count|sum)$", "", name) for name in daemon_level} == {
                "backupd_build_info",
                "backupd_scheduler_queue_wait_seconds",
                "backupd_config_reloads_total",
            }
            assert {
                s["metric"].get("cluster") for s in ours if s["metric"]["__name__"] not in daemon_level
            } == {"main"}

            # every alert expression evaluates on the real series, and none holds for a healthy
            # daemon with a recent full backup (the promtool tests show each one can fire)
            rules = _alert_rules()
            assert len(rules) >= 7
            # ... and the joins they use match the real label sets (controls for the check below)
            last_full = 'backupd_backup_last_success_timestamp_seconds{kind="full"} > 0'
            age = query(url, f"time() - max without (instance) ({last_full})")
            assert len(age) == 1 and 0 <= float(age[0]["value"][1]) < 600, age
            assert query(
                url,
                "backupd_scheduler_next_run_timestamp_seconds and on (job, instance) (backupd_leader == 1)",
            )
            wait_for(url, 'min(backupd_dependency_up{dependency=~"database|storage|catalog"}) == 1')
            firing = {name: query(url, expr) for name, expr in rules.items()}
            assert {name: result for name, result in firing.items() if result} == {}

        # a target label `cluster` (as Kubernetes setups add): ours becomes exported_cluster ...
        target = {"cluster": "k8s-prod"}
        with prometheus_server([f"127.0.0.1:{daemon.port}"], target_labels=target) as url:
            leader = wait_for(url, "backupd_leader")
            assert (leader[0]["metric"]["cluster"], leader[0]["metric"]["exported_cluster"]) == (
                "k8s-prod",
                "main",
            )
        # ... and the documented relabeling puts it back, keeping the Kubernetes name as k8s_cluster
        relabel = _documented_relabeling()
        with prometheus_server(
            [f"127.0.0.1:{daemon.port}"], target_labels=target, metric_relabel_configs=relabel
        ) as url:
            leader = wait_for(url, "backupd_leader")
            assert leader[0]["metric"]["cluster"] == "main"
            assert leader[0]["metric"]["k8s_cluster"] == "k8s-prod"
            assert not query(url, '{exported_cluster!=""}')
            info = wait_for(url, "backupd_build_info")
            assert "cluster" not in info[0]["metric"] and info[0]["metric"]["k8s_cluster"] == "k8s-prod"
            wait_for(url, 'backupd_backup_last_success_timestamp_seconds{cluster="main", kind="full"} > 0')
            firing = {name: query(url, expr) for name, expr in _alert_rules().items()}
            assert {name: result for name, result in firing.items() if result} == {}
