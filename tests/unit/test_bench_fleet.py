"""bench/fleet.py's own logic, without running the bench: quantiles, slopes, the count of the
daemon's logged problems, the /proc readings and the table of a result (no figure is asserted
about the machine: only that the helpers compute what they say)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import fleet


def test_percentile_is_the_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert fleet.percentile(values, 0.0) == 1.0
    assert fleet.percentile(values, 0.5) == 3.0
    assert fleet.percentile(values, 1.0) == 5.0
    assert fleet.percentile([7.0], 0.95) == 7.0


def test_slope_is_least_squares_per_cluster() -> None:
    points = [{"clusters": 10, "pss_kib": 1100}, {"clusters": 100, "pss_kib": 10100}]
    assert fleet.slope(points, "pss_kib") == pytest.approx(100.0)
    assert fleet.slope(points[:1], "pss_kib") is None


def test_logged_problems_counts_warnings_and_errors_by_event(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    lines = [
        {"event": "job_started", "level": "info"},
        {"event": "cluster_start_failed", "level": "error"},
        {"event": "cluster_start_failed", "level": "error"},
        {"event": "probe_skipped", "level": "warning"},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    assert fleet.logged_problems(log) == {"cluster_start_failed": 2, "probe_skipped": 1}


def test_proc_readings_of_this_process() -> None:
    assert fleet.cpu_seconds() >= 0.0
    assert fleet.cpu_seconds(os.getpid()) >= 0.0
    memory = fleet.memory_kib()
    assert 0 < memory["pss"] <= memory["rss"]


def test_render_shows_a_daemon_that_did_not_start_every_cluster_and_one_killed() -> None:
    delays = {"runs": 0, "p50_s": None, "p95_s": None, "max_s": None}
    run = {
        "clusters": 1000,
        "start_s": None,
        "first_fulls_done": 503,
        "first_fulls_s": 150.4,
        "running_at_start_of_measure": 506,
        "running_at_end_of_measure": 611,
        "cpu_s_per_minute": 53.6,
        "cpu_s_per_run": 0.41,
        "pss_kib": 568_320,
        "catalog_statements_per_minute": 145_448,
        "runs_per_minute": 131.3,
        "start_delay": {
            "wal": delays,
            "backup": {"runs": 177, "p50_s": 1.34, "p95_s": 2.36, "max_s": 3.63},
            "maintenance": delays,
        },
        "errors_logged": {"cluster_start_failed": 239},
        "killed": True,
    }
    result = {
        "clusters": 1000,
        "spread_s": 1800.0,
        "spread": fleet.measure_spread(fleet.cluster_names(20), 1800.0),
        "daemon": {
            "schedules": fleet.DAEMON_SCHEDULES,
            "runs": [run],
            "cpu_s_per_minute_per_cluster": None,
            "pss_kib_per_cluster": None,
            "catalog_statements_per_minute_per_cluster": None,
        },
        "machine": {"nproc": 2, "cpu_model": "x", "load": [1.0, 1.0, 1.0], "python": "3"},
    }
    text = fleet.render(result)
    assert "| 1000 | not within 150.4 s | 503 in 150.4 s | 506 / 611 |" in text
    assert "1.34 / 2.36 / 3.63 s (177) | - |" in text
    assert "stop after SIGTERM not within the bench's wait" in text
    assert "cluster_start_failed x239" in text
