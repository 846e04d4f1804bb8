"""The progress tracker: phases, counters, snapshots, the `progress` log events off a terminal,
what the daemon publishes for `status`, and the job progress metrics. In-process, no terminal
(tests/e2e/test_progress.py drives the command on a pseudo-terminal)."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from contentflow_backupd.observability import progress
from contentflow_backupd.observability.logging import configure_logging, reset_logging
from contentflow_backupd.observability.metrics import Metrics, running_jobs


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    progress.configure("off")
    reset_logging()


def test_nothing_is_tracked_outside_an_operation() -> None:
    progress.phase("dumping", total=10)
    progress.advance(5)
    assert progress.snapshots() == []


def test_phases_counters_and_snapshot() -> None:
    with progress.tracking("backup") as tracker:
        progress.phase("dumping", total=1000)
        progress.advance(250)
        progress.advance(250)
        snap = tracker.snapshot()
        assert (snap["operation"], snap["phase"], snap["done"], snap["total"], snap["unit"]) == (
            "backup",
            "dumping",
            500,
            1000,
            "B",
        )
        assert snap["percent"] == 50.0
        assert snap["rate"] > 0 and snap["eta_seconds"] is not None
        progress.phase("waiting for WAL", total=3, unit="segments")
        snap = tracker.snapshot()
        assert (snap["phase"], snap["done"], snap["total"], snap["unit"]) == (
            "waiting for WAL",
            0,
            3,
            "segments",
        )
        assert [s["operation"] for s in progress.snapshots()] == ["backup"]
    assert progress.snapshots() == []


def test_an_unknown_total_has_no_percent_and_no_eta() -> None:
    with progress.tracking("restore") as tracker:
        progress.phase("restoring")
        progress.advance(10)
        snap = tracker.snapshot()
    assert snap["total"] is None and snap["percent"] is None and snap["eta_seconds"] is None


def test_a_nested_operation_reports_into_the_outer_one() -> None:
    with progress.tracking("restore-test") as outer, progress.tracking("restore") as inner:
        assert inner is outer
        progress.phase("restoring", total=4)
        progress.advance(4)
    assert outer.snapshot()["operation"] == "restore-test"


def test_each_thread_reports_its_own_operation() -> None:
    seen: dict[str, int] = {}
    ready, release = threading.Barrier(3), threading.Event()

    def job(name: str, n: int) -> None:
        with progress.tracking(name):
            progress.phase("work", total=n)
            progress.advance(n)
            ready.wait()
            release.wait()

    threads = [threading.Thread(target=job, args=(name, n)) for name, n in (("full", 7), ("wal", 3))]
    for t in threads:
        t.start()
    ready.wait()
    for snap in progress.snapshots():
        seen[snap["operation"]] = snap["done"]
    release.set()
    for t in threads:
        t.join()
    assert seen == {"full": 7, "wal": 3}


def test_off_a_terminal_progress_log_events_carry_the_numbers() -> None:
    out = io.StringIO()
    progress.configure("log", 0.05)
    configure_logging("json", stream=out)
    with progress.tracking("backup"):
        progress.phase("dumping", total=100)
        progress.advance(30)
        deadline = time.monotonic() + 30
        while '"progress"' not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    first = next(e for e in events if e["event"] == "progress")
    assert (first["operation"], first["phase"], first["done"], first["total"]) == (
        "backup",
        "dumping",
        30,
        100,
    )
    assert {"rate", "elapsed_seconds", "eta_seconds", "percent"} <= set(first)


def test_publish_and_read_back_for_status(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    progress.publish(path)
    assert not path.exists()  # nothing runs: nothing published
    with progress.tracking("full"):
        progress.phase("copying", total=2048)
        progress.advance(1024)
        progress.publish(path)
        running = progress.read_published(path)
    assert [(r["operation"], r["phase"], r["done"]) for r in running] == [("full", "copying", 1024)]
    assert progress.describe(running[0]).startswith("full: copying 1.0 KiB of 2.0 KiB (50%)")
    progress.publish(path)
    assert not path.exists()


def test_a_stale_or_orphaned_publication_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    snap = {"operation": "full", "phase": "copying", "done": 1, "total": None, "unit": "B"}
    path.write_text(json.dumps({"pid": 2**22 + 12345, "running": [snap]}))  # no such process
    assert progress.read_published(path) == []
    path.write_text(json.dumps({"pid": os.getpid(), "running": [snap]}))
    assert progress.read_published(path) == [snap]
    old = time.time() - progress.PUBLISHED_MAX_AGE - 60
    os.utime(path, (old, old))
    assert progress.read_published(path) == []


def test_the_running_job_is_a_metric() -> None:
    metrics = Metrics()
    metrics.add_cluster("main")  # the daemon's own cluster: its trackers name no cluster
    metrics.add_cluster("other")
    with progress.tracking("full"):
        progress.phase("dumping", total=5000)
        progress.advance(1200)
        text = metrics.render()[0].decode()
    assert 'backupd_job_progress_done{cluster="main",job="full"} 1200.0' in text
    assert 'backupd_job_progress_total{cluster="main",job="full"} 5000.0' in text
    assert 'backupd_job_progress_done{cluster="main",job="verify"} 0.0' in text
    assert 'backupd_job_progress_done{cluster="other",job="full"} 0.0' in text
    with progress.tracking("wal", cluster="other"):  # a daemon job names its cluster
        progress.phase("uploading", total=16)
        progress.advance(3)
        text = metrics.render()[0].decode()
    assert 'backupd_job_progress_done{cluster="other",job="wal"} 3.0' in text
    assert 'backupd_job_progress_done{cluster="main",job="wal"} 0.0' in text
    metrics.remove_cluster("main")
    assert 'cluster="main"' not in metrics.render()[0].decode()


@pytest.mark.parametrize(
    ("snapshots", "clusters", "expected"),
    [
        ([], ["main"], {}),
        ([{"operation": "full", "done": 1}], [], {}),
        # no cluster field: the daemon's own cluster (the first added)
        ([{"operation": "full", "done": 1}], ["main", "b"], {("main", "full"): 1}),
        # a cluster field is matched, whatever the order of the clusters
        ([{"operation": "full", "done": 2, "cluster": "b"}], ["main", "b"], {("b", "full"): 2}),
        # a cluster not exported (removed, or another daemon's): left out, not given to another
        ([{"operation": "full", "done": 3, "cluster": "x"}], ["main"], {}),
        # two clusters running the same job: one series each
        (
            [
                {"operation": "wal", "done": 4, "cluster": "a"},
                {"operation": "wal", "done": 5, "cluster": "b"},
            ],
            ["a", "b"],
            {("a", "wal"): 4, ("b", "wal"): 5},
        ),
        # two snapshots of one (cluster, job): the oldest (first) wins, as before the label
        (
            [{"operation": "verify", "done": 6}, {"operation": "verify", "done": 7, "cluster": "main"}],
            ["main"],
            {("main", "verify"): 6},
        ),
    ],
)
def test_running_jobs_are_matched_to_their_cluster(
    snapshots: list[dict[str, object]], clusters: list[str], expected: dict[tuple[str, str], int]
) -> None:
    got = running_jobs(snapshots, clusters)
    assert {k: v["done"] for k, v in got.items()} == expected


def test_log_lines_go_above_a_live_line() -> None:
    class Bar:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def clear(self) -> None:
            self.calls.append("clear")

        def refresh(self) -> None:
            self.calls.append("refresh")

    out = io.StringIO()
    stream = progress.BarAwareStream(out)  # type: ignore[arg-type]
    with progress.tracking("backup") as tracker:
        bar = Bar()
        tracker._bar = bar
        stream.write("first half ")
        assert bar.calls == [] and out.getvalue() == ""  # a line is written whole
        stream.write("second half\n")
        tracker._bar = None
    assert out.getvalue() == "first half second half\n"
    assert bar.calls == ["clear", "refresh"]
    structlog.reset_defaults()


def test_a_daemon_job_names_its_cluster_in_snapshots_and_progress_json(tmp_path: Path) -> None:
    with progress.tracking("full", cluster="orders"):
        progress.phase("dumping", total=10)
        progress.publish(tmp_path / "progress.json")
        published = json.loads((tmp_path / "progress.json").read_text())["running"]
    assert [(s["operation"], s["cluster"]) for s in published] == [("full", "orders")]
    with progress.tracking("backup") as tracker:  # a command's own operation: no cluster
        assert "cluster" not in tracker.snapshot()
