"""Metrics: exactly the documented series, pre-created at 0 for each cluster added, in a registry of
their own; every per-cluster series carries ``cluster``."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from contentflow_backupd.observability.metrics import DURATION_BUCKETS, ClusterMetrics, Metrics

# name -> type, as the issue lists them (counters keep their _total sample name).
SERIES = {
    "backupd_build_info": "gauge",
    "backupd_backup_runs_total": "counter",
    "backupd_backup_last_success_timestamp_seconds": "gauge",
    "backupd_backup_last_failure_timestamp_seconds": "gauge",
    "backupd_backup_duration_seconds": "histogram",
    "backupd_backup_last_source_bytes": "gauge",
    "backupd_backup_last_stored_bytes": "gauge",
    "backupd_backup_size_anomaly": "gauge",
    "backupd_wal_archived_segments_total": "counter",
    "backupd_wal_archive_failures_total": "counter",
    "backupd_wal_last_archived_timestamp_seconds": "gauge",
    "backupd_wal_pending_segments": "gauge",
    "backupd_wal_socket_pushes_total": "counter",
    "backupd_recovery_window_start_timestamp_seconds": "gauge",
    "backupd_retention_deleted_backups_total": "counter",
    "backupd_retention_deleted_bytes_total": "counter",
    "backupd_repository_stored_bytes": "gauge",
    "backupd_scheduler_next_run_timestamp_seconds": "gauge",
    "backupd_leader": "gauge",
    "backupd_scheduler_queue_wait_seconds": "histogram",
    "backupd_config_reloads_total": "counter",
    "backupd_dependency_up": "gauge",
    "backupd_verify_runs_total": "counter",
    "backupd_verify_last_success_timestamp_seconds": "gauge",
    "backupd_verify_corrupt_objects": "gauge",
    "backupd_restore_test_runs_total": "counter",
    "backupd_restore_test_last_success_timestamp_seconds": "gauge",
    "backupd_restore_test_duration_seconds": "gauge",
    "backupd_restore_test_restored_bytes": "gauge",
    "backupd_recovery_point_age_seconds": "gauge",
    "backupd_migration_runs_total": "counter",
    "backupd_migration_last_duration_seconds": "gauge",
    "backupd_job_progress_done": "gauge",
    "backupd_job_progress_total": "gauge",
}
KINDS = ("full", "incremental")
DAEMON_LEVEL = {"backupd_build_info", "backupd_scheduler_queue_wait_seconds", "backupd_config_reloads_total"}
"""The series without a ``cluster`` label (and prometheus_client's ``process_*``)."""


def new(version: str = "9.9.9", cluster: str = "main") -> ClusterMetrics:
    """A registry with one cluster, as the daemon of today has: the view its jobs write to."""
    return Metrics(version).add_cluster(cluster)


def samples(m: Metrics | ClusterMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = (m.parent if isinstance(m, ClusterMetrics) else m).render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def key(name: str, cluster: str = "main", **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted({"cluster": cluster, **labels}.items()))


def value(m: ClusterMetrics, name: str, **labels: str) -> float:
    return samples(m)[key(name, m.name, **labels)]


def type_lines(m: Metrics) -> dict[str, str]:
    body, _ = m.render()
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            out[name] = typ
    return out


def test_exactly_the_documented_series() -> None:
    declared = type_lines(Metrics())
    ours = {name: kind for name, kind in declared.items() if name.startswith("backupd_")}
    assert ours == SERIES
    # and prometheus_client's standard process series (the drill alert uses the start time)
    assert declared["process_start_time_seconds"] == "gauge"
    assert set(declared) - set(ours) <= {
        "process_cpu_seconds_total",
        "process_max_fds",
        "process_open_fds",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_virtual_memory_bytes",
    }


def test_content_type_is_prometheus_text() -> None:
    _, ctype = new().parent.render()
    assert ctype.startswith("text/plain; version=0.0.4")


def test_label_sets_are_precreated_at_zero() -> None:
    got = samples(new(version="9.9.9"))
    assert got[("backupd_build_info", (("version", "9.9.9"),))] == 1
    for kind in KINDS:
        for result in ("success", "failure"):
            assert got[key("backupd_backup_runs_total", kind=kind, result=result)] == 0
        for name in (
            "backupd_backup_last_success_timestamp_seconds",
            "backupd_backup_last_failure_timestamp_seconds",
            "backupd_backup_last_source_bytes",
            "backupd_backup_last_stored_bytes",
            "backupd_backup_size_anomaly",
            "backupd_retention_deleted_backups_total",
            "backupd_backup_duration_seconds_count",
        ):
            assert got[key(name, kind=kind)] == 0, name
        for le in [*DURATION_BUCKETS, float("inf")]:
            assert got[key("backupd_backup_duration_seconds_bucket", kind=kind, le=_le(le))] == 0
    for dep in ("database", "storage", "catalog"):
        assert got[key("backupd_dependency_up", dependency=dep)] == 0
    for result in ("stored", "duplicate", "error", "refused"):
        assert got[key("backupd_wal_socket_pushes_total", result=result)] == 0
    for name in (
        "backupd_wal_archived_segments_total",
        "backupd_wal_archive_failures_total",
        "backupd_wal_last_archived_timestamp_seconds",
        "backupd_wal_pending_segments",
        "backupd_recovery_window_start_timestamp_seconds",
        "backupd_retention_deleted_bytes_total",
        "backupd_repository_stored_bytes",
        "backupd_leader",
    ):
        assert got[key(name)] == 0, name
    assert not any(name.endswith("_created") for name, _ in got)
    assert not any(name == "backupd_scheduler_next_run_timestamp_seconds" for name, _ in got)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(float(bound))


def test_buckets_span_10s_to_8h() -> None:
    assert DURATION_BUCKETS[0] == 10 and DURATION_BUCKETS[-1] == 8 * 3600
    assert list(DURATION_BUCKETS) == sorted(set(DURATION_BUCKETS))


def test_backup_succeeded() -> None:
    m = new()
    finished = datetime(2026, 11, 24, 2, 0, 42, tzinfo=UTC)
    m.backup_succeeded("full", finished_at=finished, duration_s=42, source_bytes=1000, stored_bytes=300)
    assert value(m, "backupd_backup_runs_total", kind="full", result="success") == 1
    assert value(m, "backupd_backup_runs_total", kind="incremental", result="success") == 0
    assert value(m, "backupd_backup_last_success_timestamp_seconds", kind="full") == finished.timestamp()
    assert value(m, "backupd_backup_last_source_bytes", kind="full") == 1000
    assert value(m, "backupd_backup_last_stored_bytes", kind="full") == 300
    assert value(m, "backupd_backup_duration_seconds_bucket", kind="full", le="30.0") == 0
    assert value(m, "backupd_backup_duration_seconds_bucket", kind="full", le="60.0") == 1
    assert value(m, "backupd_backup_duration_seconds_sum", kind="full") == 42
    assert value(m, "backupd_backup_duration_seconds_count", kind="incremental") == 0


def test_backup_failed() -> None:
    m = new()
    m.backup_failed("incremental", 1_800_000_000.0)
    m.backup_failed("incremental", 1_800_000_100.0)
    assert value(m, "backupd_backup_runs_total", kind="incremental", result="failure") == 2
    assert value(m, "backupd_backup_last_failure_timestamp_seconds", kind="incremental") == 1_800_000_100
    assert value(m, "backupd_backup_last_success_timestamp_seconds", kind="incremental") == 0


def test_seeding_is_idempotent_and_counts_nothing() -> None:
    m = new()
    for _ in range(3):
        m.seed_backup("full", finished_at=1_700_000_000.0, source_bytes=10, stored_bytes=5)
        m.seed_backup("incremental", finished_at=None, source_bytes=7, stored_bytes=1)
        m.seed_failure("full", 1_700_000_500.0)
        m.seed_failure("full", 1_700_000_100.0)  # older: the newest failure stays
    assert value(m, "backupd_backup_last_success_timestamp_seconds", kind="full") == 1_700_000_000
    assert value(m, "backupd_backup_last_success_timestamp_seconds", kind="incremental") == 0
    assert value(m, "backupd_backup_last_source_bytes", kind="incremental") == 7
    assert value(m, "backupd_backup_last_failure_timestamp_seconds", kind="full") == 1_700_000_500
    for kind in KINDS:
        for result in ("success", "failure"):
            assert value(m, "backupd_backup_runs_total", kind=kind, result=result) == 0


def test_wal_retention_repository_leader_dependencies() -> None:
    m = new()
    m.wal_archived(3, datetime(2026, 1, 1, tzinfo=UTC))
    m.wal_archived(0, None)
    m.wal_archive_failures(2)
    m.wal_archive_failures(0)
    m.set_wal_pending(4)
    m.set_recovery_window_start(1_750_000_000.0)
    m.retention_deleted({"full": 1, "incremental": 5}, 12345)
    m.set_repository_stored_bytes(99)
    m.set_leader(True)
    m.set_dependency("storage", True)
    m.set_size_anomaly("incremental", True)
    assert value(m, "backupd_wal_archived_segments_total") == 3
    assert (
        value(m, "backupd_wal_last_archived_timestamp_seconds")
        == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    )
    assert value(m, "backupd_wal_archive_failures_total") == 2
    assert value(m, "backupd_wal_pending_segments") == 4
    assert value(m, "backupd_recovery_window_start_timestamp_seconds") == 1_750_000_000
    assert value(m, "backupd_retention_deleted_backups_total", kind="full") == 1
    assert value(m, "backupd_retention_deleted_backups_total", kind="incremental") == 5
    assert value(m, "backupd_retention_deleted_bytes_total") == 12345
    assert value(m, "backupd_repository_stored_bytes") == 99
    assert value(m, "backupd_leader") == 1
    assert value(m, "backupd_dependency_up", dependency="storage") == 1
    assert value(m, "backupd_dependency_up", dependency="database") == 0
    assert value(m, "backupd_backup_size_anomaly", kind="incremental") == 1
    m.set_recovery_window_start(None)
    m.set_leader(False)
    m.set_size_anomaly("incremental", False)
    assert value(m, "backupd_recovery_window_start_timestamp_seconds") == 0
    assert value(m, "backupd_leader") == 0
    assert value(m, "backupd_backup_size_anomaly", kind="incremental") == 0


def test_queue_wait_is_observed_per_class_without_a_cluster_label() -> None:
    m = Metrics()

    def value(m: Metrics, name: str, **labels: str) -> float:  # daemon-level: no cluster
        return samples(m)[(name, tuple(sorted(labels.items())))]

    for job_class in ("wal", "backup", "maintenance"):  # every class exists from the start
        assert value(m, "backupd_scheduler_queue_wait_seconds_count", **{"class": job_class}) == 0
    m.scheduler_queue_wait("backup", 42.0)
    m.scheduler_queue_wait("backup", 3.0)
    assert value(m, "backupd_scheduler_queue_wait_seconds_count", **{"class": "backup"}) == 2
    assert value(m, "backupd_scheduler_queue_wait_seconds_sum", **{"class": "backup"}) == 45.0
    assert value(m, "backupd_scheduler_queue_wait_seconds_bucket", **{"class": "backup", "le": "5.0"}) == 1
    assert value(m, "backupd_scheduler_queue_wait_seconds_count", **{"class": "wal"}) == 0
    with pytest.raises(ValueError, match="not one of"):
        m.scheduler_queue_wait("full", 1.0)


def test_config_reloads_are_counted_by_result_from_zero() -> None:
    m = Metrics("1.0")
    for result in ("applied", "refused", "failed"):
        assert samples(m)[("backupd_config_reloads_total", (("result", result),))] == 0
    m.config_reloaded("refused")
    m.config_reloaded("applied")
    m.config_reloaded("applied")
    got = {labels: v for (name, labels), v in samples(m).items() if name == "backupd_config_reloads_total"}
    assert got == {(("result", "applied"),): 2, (("result", "refused"),): 1, (("result", "failed"),): 0}
    with pytest.raises(ValueError, match="not one of"):
        m.config_reloaded("maybe")


def test_next_run_is_set_and_removed() -> None:
    m = new()
    m.set_next_run("full", datetime(2026, 11, 25, 2, 0, tzinfo=UTC))
    m.set_next_run("wal", 1_800_000_000.0)
    assert value(m, "backupd_scheduler_next_run_timestamp_seconds", job="wal") == 1_800_000_000
    m.set_next_run("wal", None)
    m.set_next_run("wal", None)  # idempotent
    got = samples(m)
    assert key("backupd_scheduler_next_run_timestamp_seconds", job="wal") not in got
    assert key("backupd_scheduler_next_run_timestamp_seconds", job="full") in got


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.backup_succeeded("20261124T054459Z-full-3a9c1b", 0, 1, 1, 1),
        lambda m: m.backup_failed("differential", 0),
        lambda m: m.set_size_anomaly("FULL", True),
        lambda m: m.retention_deleted({"0/3000000": 1}, 0),
        lambda m: m.set_next_run("000000010000000000000003", 1.0),
        lambda m: m.set_next_run("full job", 1.0),
        lambda m: m.set_dependency("redis", True),
    ],
)
def test_labels_come_from_fixed_sets(call: Callable[[ClusterMetrics], object]) -> None:
    m = new()

    def ours() -> list[bytes]:  # process_* series (CPU time) move on their own
        return [line for line in m.parent.render()[0].splitlines() if b"backupd_" in line]

    before = ours()
    with pytest.raises(ValueError):
        call(m)
    assert ours() == before


def test_each_instance_has_its_own_registry() -> None:
    a, b = new(), new()
    a.backup_failed("full", 1.0)
    assert value(a, "backupd_backup_runs_total", kind="full", result="failure") == 1
    assert value(b, "backupd_backup_runs_total", kind="full", result="failure") == 0


@given(
    events=st.lists(
        st.tuples(st.sampled_from(KINDS), st.booleans(), st.floats(min_value=0, max_value=40000)),
        max_size=30,
    )
)
def test_counters_count_every_event(events: list[tuple[str, bool, float]]) -> None:
    m = new()
    for kind, ok, duration in events:
        if ok:
            m.backup_succeeded(kind, 1.0, duration, 1, 1)
        else:
            m.backup_failed(kind, 1.0)
    for kind in KINDS:
        wins = sum(1 for k, ok, _ in events if k == kind and ok)
        losses = sum(1 for k, ok, _ in events if k == kind and not ok)
        assert value(m, "backupd_backup_runs_total", kind=kind, result="success") == wins
        assert value(m, "backupd_backup_runs_total", kind=kind, result="failure") == losses
        assert value(m, "backupd_backup_duration_seconds_count", kind=kind) == wins
        assert value(m, "backupd_backup_duration_seconds_bucket", kind=kind, le="+Inf") == wins


def test_verification_drill_and_recovery_point_series() -> None:
    m = new("9.9.9")

    def value(name: str, **labels: str) -> float:
        body = m.parent.render()[0].decode()
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                if s.name == name and s.labels == {"cluster": "main", **labels}:
                    return float(s.value)
        raise AssertionError(f"{name}{labels} missing")

    assert value("backupd_verify_runs_total", result="failure") == 0
    assert value("backupd_restore_test_runs_total", result="success") == 0
    m.verify_finished(False, 100.0)
    m.verify_finished(True, 200.0)
    m.set_corrupt_objects(3)
    assert value("backupd_verify_runs_total", result="failure") == 1
    assert value("backupd_verify_last_success_timestamp_seconds") == 200.0
    assert value("backupd_verify_corrupt_objects") == 3
    m.restore_test_finished(True, 300.0, rto_s=42.5, restored_bytes=1000)
    m.restore_test_finished(False, 400.0, rto_s=None, restored_bytes=None)
    assert value("backupd_restore_test_runs_total", result="success") == 1
    assert value("backupd_restore_test_runs_total", result="failure") == 1
    assert value("backupd_restore_test_last_success_timestamp_seconds") == 300.0
    assert value("backupd_restore_test_duration_seconds") == 42.5
    assert value("backupd_restore_test_restored_bytes") == 1000
    m.set_recovery_point_age(None)
    assert math.isnan(value("backupd_recovery_point_age_seconds"))
    m.set_recovery_point_age(61.0)
    assert value("backupd_recovery_point_age_seconds") == 61.0


def test_migration_runs_follow_the_catalog_counts_and_never_go_back() -> None:
    m = new()
    text = m.parent.render()[0].decode()
    for result in ("applied", "noop", "refused", "failed", "rolled_back"):
        assert f'backupd_migration_runs_total{{cluster="main",result="{result}"}} 0.0' in text
    assert 'backupd_migration_last_duration_seconds{cluster="main"} 0.0' in text
    m.set_migration_runs({"applied": 2, "failed": 1}, 12.5)
    m.set_migration_runs({"applied": 3, "failed": 1, "running": 1}, 4.0)
    m.set_migration_runs({"applied": 1}, None)  # rows deleted from the catalog: counters keep their value
    text = m.parent.render()[0].decode()
    assert 'backupd_migration_runs_total{cluster="main",result="applied"} 3.0' in text
    assert 'backupd_migration_runs_total{cluster="main",result="failed"} 1.0' in text
    assert 'result="running"' not in text
    assert 'backupd_migration_last_duration_seconds{cluster="main"} 4.0' in text


def test_the_wal_counter_is_set_from_the_sources_of_truth_and_never_goes_down() -> None:
    m = new()
    m.set_wal_archived_total(9)  # what the repository and the catalog hold at start
    assert value(m, "backupd_wal_archived_segments_total") == 9
    m.set_wal_archived_total(7)  # a segment deleted by hand: a counter never goes down
    assert value(m, "backupd_wal_archived_segments_total") == 9
    m.wal_archived(2)
    m.set_wal_archived_total(11)  # the two are already counted
    assert value(m, "backupd_wal_archived_segments_total") == 11


# -- the cluster label (issue 18, docs/design/fleet.md step 3) -----------------------------------
def test_every_per_cluster_series_carries_the_cluster_label() -> None:
    m = new(cluster="orders")
    m.set_next_run("full", 1.0)
    got = samples(m)
    ours = {(name, labels) for name, labels in got if name.startswith("backupd_")}
    without = {name for name, labels in ours if "cluster" not in dict(labels)}
    assert {_family(name) for name in without} == DAEMON_LEVEL
    assert {dict(labels)["cluster"] for name, labels in ours if _family(name) not in DAEMON_LEVEL} == {
        "orders"
    }
    assert not any("cluster" in dict(labels) for name, labels in got if name.startswith("process_"))
    # every family (the progress collector's too) is there for the cluster
    per_cluster = {name for name, _ in ours if _family(name) not in DAEMON_LEVEL}
    assert {n.removesuffix("_total") for n in SERIES if n not in DAEMON_LEVEL} <= {
        n.removesuffix("_total").removesuffix("_count") for n in per_cluster
    }


def _family(sample: str) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        if sample.startswith("backupd_scheduler_queue_wait_seconds") and sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample


def test_no_cluster_no_per_cluster_series() -> None:
    got = samples(Metrics("9.9.9"))
    assert {_family(name) for name, _ in got if name.startswith("backupd_")} == DAEMON_LEVEL


def test_two_clusters_are_separate_series() -> None:
    metrics = Metrics()
    orders, billing = metrics.add_cluster("orders"), metrics.add_cluster("billing")
    assert metrics.clusters == ("orders", "billing")
    assert metrics.for_cluster("orders") is orders
    orders.backup_failed("full", 5.0)
    orders.set_leader(True)
    orders.wal_archived(3)
    billing.set_wal_archived_total(2)
    billing.set_dependency("catalog", True)
    assert value(orders, "backupd_backup_runs_total", kind="full", result="failure") == 1
    assert value(billing, "backupd_backup_runs_total", kind="full", result="failure") == 0
    assert value(orders, "backupd_leader") == 1
    assert value(billing, "backupd_leader") == 0
    assert value(orders, "backupd_wal_archived_segments_total") == 3
    assert value(billing, "backupd_wal_archived_segments_total") == 2
    assert value(orders, "backupd_dependency_up", dependency="catalog") == 0
    assert value(billing, "backupd_dependency_up", dependency="catalog") == 1


def test_adding_again_keeps_the_values_and_unknown_names_are_refused() -> None:
    metrics = Metrics()
    view = metrics.add_cluster("main")
    view.backup_failed("full", 1.0)
    assert metrics.add_cluster("main") is view
    assert value(view, "backupd_backup_runs_total", kind="full", result="failure") == 1
    with pytest.raises(KeyError):
        metrics.for_cluster("other")  # never added: no series appear for a name met at run time
    for bad in ("", "a b", "x" * 65, 'a"b', "-lead"):
        with pytest.raises(ValueError):
            metrics.add_cluster(bad)
    assert metrics.clusters == ("main",)


def test_removing_a_cluster_drops_its_series_and_its_view_records_nothing() -> None:
    metrics = Metrics()
    gone, kept = metrics.add_cluster("gone"), metrics.add_cluster("kept")
    for view in (gone, kept):
        view.backup_succeeded("full", 1.0, 5.0, 1, 1)
        view.set_next_run("wal", 2.0)
        view.set_migration_runs({"applied": 1}, 1.0)
    before = {k: v for k, v in samples(metrics).items() if ("cluster", "kept") in k[1]}
    metrics.remove_cluster("gone")
    metrics.remove_cluster("gone")  # idempotent
    assert metrics.clusters == ("kept",)

    def of_gone() -> set[str]:
        return {name for name, labels in samples(metrics) if ("cluster", "gone") in labels}

    assert of_gone() == set()
    # a job of the removed cluster that finishes late brings nothing back
    gone.backup_failed("full", 3.0)
    gone.wal_archived(4, 3.0)
    gone.set_wal_archived_total(10)
    gone.set_leader(True)
    gone.set_next_run("full", 3.0)
    gone.set_next_run("wal", None)
    gone.retention_deleted({"full": 1}, 10)
    gone.set_migration_runs({"applied": 2}, 2.0)
    gone.verify_finished(True, 3.0)
    gone.restore_test_finished(True, 3.0, 1.0, 1)
    gone.wal_socket_push("stored")
    assert of_gone() == set()
    assert {k: v for k, v in samples(metrics).items() if ("cluster", "kept") in k[1]} == before
    with pytest.raises(KeyError):
        metrics.for_cluster("gone")
    # added again: a new view from zero
    back = metrics.add_cluster("gone")
    assert back is not gone
    assert value(back, "backupd_backup_runs_total", kind="full", result="success") == 0
    assert value(back, "backupd_leader") == 0
