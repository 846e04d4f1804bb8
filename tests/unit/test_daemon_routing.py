"""The daemon's split into a process and per-cluster runtimes (daemon/cluster.py): a fired job
and a skipped fire reach the runtime of their cluster, through the real ``scheduling.jobs``
module and a real SQLite catalog; a job of a cluster no runtime serves is logged, never run,
never raised into the scheduler. No server: the runtimes are built but not started, and their
job runner is a recorder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from contentflow_backupd import __version__
from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog
from contentflow_backupd.daemon.cluster import ClusterRuntime, runtime_for
from contentflow_backupd.daemon.lifecycle import Daemon
from contentflow_backupd.model import RunTrigger, Scope
from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.scheduling import jobs


class RecordingRunner:
    """Stands for ``JobRunner``: remembers the jobs it was asked to run."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, RunTrigger]] = []

    def __call__(self, job: str, trigger: RunTrigger) -> None:
        self.ran.append((job, trigger))

    def running(self) -> list[Any]:
        return []


class SkippedFires:
    """Stands for the scheduler: the fires it skipped (``Scheduler.take_skipped``)."""

    def __init__(self, skipped: list[tuple[str, str]]) -> None:
        self.skipped = skipped

    def take_skipped(self) -> list[tuple[str, str]]:
        taken, self.skipped = self.skipped, []
        return taken


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SqlCatalog]:
    opened = open_catalog(f"sqlite:///{tmp_path}/catalog/catalog.sqlite")
    yield opened
    opened.close()


@pytest.fixture(autouse=True)
def no_handlers() -> Iterator[None]:
    jobs.install(None)
    yield
    jobs.install(None)


def runtime(name: str, catalog: SqlCatalog) -> tuple[ClusterRuntime, RecordingRunner]:
    rt = ClusterRuntime(SimpleNamespace(cluster=name), catalog, Metrics(__version__))  # type: ignore[arg-type]
    rt.scope = Scope("repo-1", name)
    rt.runner = RecordingRunner()
    return rt, rt.runner


def daemon_of(catalog: SqlCatalog, *runtimes: ClusterRuntime, implicit: bool = False) -> Daemon:
    fleet = SimpleNamespace(cluster_names=[rt.name for rt in runtimes], implicit=implicit)
    daemon = Daemon(fleet)  # type: ignore[arg-type]
    daemon._catalog = catalog
    daemon.runtimes = {rt.name: rt for rt in runtimes}
    return daemon


def install_handlers(daemon: Daemon) -> None:
    for name in daemon.runtimes:
        daemon._install_handler(name)


def test_runtime_for_routes_a_bare_id_to_the_only_runtime_and_a_named_one_to_its_own(
    catalog: SqlCatalog,
) -> None:
    orders, _ = runtime("orders", catalog)
    billing, _ = runtime("billing", catalog)
    one = {"orders": orders}
    two = {"orders": orders, "billing": billing}
    assert runtime_for(one, None) is orders
    assert runtime_for(one, "orders") is orders
    assert runtime_for(one, "billing") is None
    assert runtime_for(two, "billing") is billing
    assert runtime_for(two, None) is None  # a bare id is ambiguous with several runtimes
    assert runtime_for({}, None) is None


def test_a_fired_job_runs_on_its_clusters_runtime(catalog: SqlCatalog) -> None:
    orders, runner = runtime("orders", catalog)
    billing, billing_runner = runtime("billing", catalog)
    install_handlers(daemon_of(catalog, orders, billing))
    jobs.run_scheduled("orders:wal")
    jobs.run_scheduled("billing:full")
    with capture_logs() as logs:
        jobs.run_scheduled("full")  # bare: no implicit cluster here
    assert runner.ran == [("wal", "scheduled")]
    assert billing_runner.ran == [("full", "scheduled")]
    assert [e["event"] for e in logs] == ["job_without_handler"]


def test_the_implicit_clusters_bare_ids_run_on_its_runtime(catalog: SqlCatalog) -> None:
    main, runner = runtime("main", catalog)
    install_handlers(daemon_of(catalog, main, implicit=True))
    jobs.run_scheduled("full")  # bare: the job table of the implicit cluster, as stored before
    assert runner.ran == [("full", "scheduled")]


def test_a_job_of_a_cluster_no_runtime_serves_is_logged_and_not_run(catalog: SqlCatalog) -> None:
    orders, runner = runtime("orders", catalog)
    daemon = daemon_of(catalog, orders)
    install_handlers(daemon)
    with capture_logs() as logs:
        jobs.run_scheduled("billing:full")  # no handler for billing: jobs.py says so
        daemon._run_job("billing", "full", "scheduled")  # the daemon's own routing
    assert runner.ran == []
    events = {(e["event"], e["job"]) for e in logs}
    assert ("job_without_handler", "billing:full") in events
    assert ("job_cluster_unknown", "billing:full") in events


def test_a_job_before_its_runtime_started_is_logged_and_not_run(catalog: SqlCatalog) -> None:
    orders = ClusterRuntime(SimpleNamespace(cluster="orders"), catalog, Metrics(__version__))  # type: ignore[arg-type]
    with capture_logs() as logs:
        orders.run_job("full", "scheduled")
    assert [e["event"] for e in logs] == ["job_before_start"]
    assert orders.running() == []


def test_skipped_fires_are_recorded_in_their_clusters_scope(catalog: SqlCatalog) -> None:
    orders, _ = runtime("orders", catalog)
    daemon = daemon_of(catalog, orders)
    daemon._scheduler = SkippedFires(
        [
            ("full", "the previous run of this job was still running or queued"),
            ("orders:verify", "queued too long"),
            ("billing:full", "queued too long"),
            (":full", "not a job id"),
        ]
    )
    with capture_logs() as logs:
        daemon._record_skipped()
    runs = catalog.list_runs(Scope("repo-1", "orders"))
    assert [(r.job, r.status, r.error) for r in runs] == [
        ("full", "skipped", "the previous run of this job was still running or queued"),
        ("verify", "skipped", "queued too long"),
    ]
    assert catalog.list_runs(Scope("repo-1", "billing")) == []
    assert [e["event"] for e in logs] == ["skipped_job_cluster_unknown", "job_id_invalid"]


def test_a_cluster_whose_last_probe_still_runs_is_skipped(catalog: SqlCatalog) -> None:
    from concurrent.futures import Future, ThreadPoolExecutor

    hung, _ = runtime("hung", catalog)
    other, _ = runtime("other", catalog)
    starting, _ = runtime("starting", catalog)
    daemon = daemon_of(catalog, hung, other, starting)
    hung.state = other.state = "running"  # ``starting`` is not probed: it has not started
    still: Future[None] = Future()  # the last probe of ``hung`` never returned
    hung.probing = still
    probed: list[str] = []
    daemon._probe_cluster = lambda rt: probed.append(rt.name)  # type: ignore[method-assign]
    daemon._probes = ThreadPoolExecutor(max_workers=2)
    try:
        with capture_logs() as logs:
            daemon._probe_clusters()
        daemon._probes.shutdown(wait=True)
    finally:
        daemon._probes.shutdown(wait=True)
    assert probed == ["other"]
    assert hung.probing is still and starting.probing is None
    assert [(e["event"], e["cluster"]) for e in logs] == [("probe_skipped", "hung")]
