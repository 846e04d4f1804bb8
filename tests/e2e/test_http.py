"""The HTTP endpoints on a real loopback server, and `status` through the installed command."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.http.server import HealthDoc, HttpServer, parse_listen
from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.ops.health.evaluate import (
    DependencyState,
    HealthInputs,
    HealthObjectives,
    HealthReport,
    KindState,
    evaluate_health,
)
from contentflow_backupd.ops.health.fleet import ClusterHealth, fleet_health
from tests.e2e.physical import physical_setup
from tests.support.cli import Cli, Result
from tests.support.pg import PgCluster, free_port

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def report(*, last_full_failed: bool = False) -> HealthReport:
    full = KindState(NOW - timedelta(hours=2), "failed" if last_full_failed else "succeeded", NOW)
    inputs = HealthInputs(
        kinds={"full": full, "incremental": KindState(NOW - timedelta(hours=1))},
        dependencies={"database": DependencyState(True), "storage": DependencyState(True)},
        leader=True,
    )
    return evaluate_health(inputs, HealthObjectives(full=26 * 3600, incremental=12 * 3600), NOW)


class StubProbes:
    """Probes whose answers the test sets (the daemon's own probes are the lead's)."""

    def __init__(self) -> None:
        self.is_live = True
        self.is_ready = True
        self.report = report()
        self.others: dict[str, HealthReport] = {}
        """Named clusters besides the report's (empty: the implicit cluster ``main`` alone)."""
        self.error: Exception | None = None
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error

    def live(self) -> bool:
        self._maybe_fail()
        return self.is_live

    def ready(self) -> bool:
        self._maybe_fail()
        return self.is_ready

    def cluster_names(self) -> list[str]:
        return sorted(["main", *self.others])

    def health(self, cluster: str | None = None) -> HealthDoc:
        self._maybe_fail()
        reports = {"main": self.report, **self.others}
        if cluster is not None:
            return ClusterHealth(cluster, reports[cluster])
        catalog = DependencyState(True)
        return fleet_health(reports, implicit=not self.others, catalog=catalog, now=NOW)


def fetch(
    port: int, path: str, method: str = "GET", host: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://{host}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers.items()), exc.read()


@pytest.fixture
def served() -> Iterator[tuple[HttpServer, Metrics, StubProbes]]:
    metrics, probes = Metrics(), StubProbes()
    server = HttpServer("127.0.0.1:0", metrics, probes)
    server.start()
    try:
        yield server, metrics, probes
    finally:
        server.stop()


def test_metrics_endpoint(served: tuple[HttpServer, Metrics, StubProbes]) -> None:
    server, metrics, _ = served
    main = metrics.add_cluster("main")
    main.backup_succeeded("full", NOW, 42.0, 1000, 400)
    main.set_dependency("database", True)
    status, headers, body = fetch(server.port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert "backupd_backup_runs" in families and "backupd_dependency_up" in families
    assert {s.labels["cluster"] for s in families["backupd_backup_runs"].samples} == {"main"}
    runs = {(s.labels["kind"], s.labels["result"]): s.value for s in families["backupd_backup_runs"].samples}
    assert runs == {
        ("full", "success"): 1,
        ("full", "failure"): 0,
        ("incremental", "success"): 0,
        ("incremental", "failure"): 0,
    }
    up = {s.labels["dependency"]: s.value for s in families["backupd_dependency_up"].samples}
    assert up == {"database": 1, "storage": 0, "catalog": 0}
    # the query string is ignored
    assert fetch(server.port, "/metrics?name[]=x")[0] == 200


def test_livez_and_readyz(served: tuple[HttpServer, Metrics, StubProbes]) -> None:
    server, _, probes = served
    assert fetch(server.port, "/livez")[::2] == (200, b"ok\n")
    assert fetch(server.port, "/readyz")[::2] == (200, b"ready\n")
    probes.is_ready = False
    assert fetch(server.port, "/readyz")[::2] == (503, b"not ready\n")
    assert fetch(server.port, "/livez")[0] == 200  # liveness does not follow readiness
    probes.is_live = False
    assert fetch(server.port, "/livez")[::2] == (503, b"not live\n")


def test_healthz(served: tuple[HttpServer, Metrics, StubProbes]) -> None:
    server, _, probes = served
    status, headers, body = fetch(server.port, "/healthz")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["ok"] is True and doc["status"] == "healthy"
    assert {c["name"] for c in doc["checks"]} >= {"full_backup_age", "full_last_run", "leader"}
    probes.report = report(last_full_failed=True)
    status, _, body = fetch(server.port, "/healthz")
    doc = json.loads(body)
    assert status == 503 and doc["ok"] is False
    assert [c["name"] for c in doc["checks"] if not c["ok"]] == ["full_last_run"]
    # The implicit cluster: `checks` is its own list, and `clusters` names it.
    assert [(c["cluster"], c["ok"]) for c in doc["clusters"]] == [("main", False)]
    assert doc["clusters"][0]["checks"] == doc["checks"]


def test_healthz_per_cluster(served: tuple[HttpServer, Metrics, StubProbes]) -> None:
    server, _, probes = served
    probes.others = {"orders": report(last_full_failed=True)}
    status, _, body = fetch(server.port, "/healthz")
    doc = json.loads(body)
    assert status == 503 and doc["ok"] is False and doc["status"] == "unhealthy"
    assert set(doc) == {"ok", "status", "checked_at", "checks", "clusters"}
    # named clusters: the whole's own checks are the daemon's (its catalog)
    assert [c["name"] for c in doc["checks"]] == ["dependency_catalog"]
    assert [(c["cluster"], c["ok"], c["status"]) for c in doc["clusters"]] == [
        ("main", True, "healthy"),
        ("orders", False, "unhealthy"),
    ]
    status, _, body = fetch(server.port, "/healthz?cluster=main")
    doc = json.loads(body)
    assert status == 200 and doc["cluster"] == "main" and doc["ok"] is True
    status, _, body = fetch(server.port, "/healthz?cluster=orders")
    doc = json.loads(body)
    assert status == 503 and doc["cluster"] == "orders"
    assert [c["name"] for c in doc["checks"] if not c["ok"]] == ["full_last_run"]
    status, headers, body = fetch(server.port, "/healthz?cluster=billing")
    doc = json.loads(body)
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert doc["ok"] is False and doc["clusters"] == ["main", "orders"]
    assert "billing" in doc["error"] and "main, orders" in doc["error"]
    # other query strings are still ignored
    assert fetch(server.port, "/readyz?cluster=billing")[0] == 200


def test_a_failing_probe_is_a_503_and_the_server_keeps_serving(
    served: tuple[HttpServer, Metrics, StubProbes],
) -> None:
    server, _, probes = served
    probes.error = RuntimeError("catalog exploded")
    for path in ("/livez", "/readyz"):
        status, _, body = fetch(server.port, path)
        assert status == 503 and b"RuntimeError: catalog exploded" in body
    status, _, body = fetch(server.port, "/healthz")
    assert status == 503
    assert json.loads(body) == {"ok": False, "status": "unknown", "error": "RuntimeError: catalog exploded"}
    assert fetch(server.port, "/metrics")[0] == 200  # metrics never ask the probes
    probes.error = None
    assert fetch(server.port, "/healthz")[0] == 200
    assert probes.calls == 4


def test_head_unknown_paths_and_methods(served: tuple[HttpServer, Metrics, StubProbes]) -> None:
    server, _, _ = served
    for path in ("/metrics", "/livez", "/readyz", "/healthz"):
        status, headers, body = fetch(server.port, path, method="HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert fetch(server.port, "/")[0] == 404
    assert fetch(server.port, "/metrics/extra")[0] == 404
    assert fetch(server.port, "/nope", method="HEAD")[0] == 404
    assert fetch(server.port, "/metrics", method="POST")[0] == 501


def test_keep_alive_serves_several_requests_on_one_connection(
    served: tuple[HttpServer, Metrics, StubProbes],
) -> None:
    server, _, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for path in ("/livez", "/metrics", "/healthz", "/missing"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status in (200, 404)
    finally:
        conn.close()


def test_port_in_use_and_stop() -> None:
    first = HttpServer("127.0.0.1:0", Metrics(), StubProbes())
    first.start()
    try:
        second = HttpServer(f"127.0.0.1:{first.port}", Metrics(), StubProbes())
        with pytest.raises(ConfigError, match=r"BACKUPD_HTTP__LISTEN: cannot listen on 127\.0\.0\.1"):
            second.start()
        port = first.port
    finally:
        first.stop()
    first.stop()  # idempotent
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = HttpServer("[::1]:0", Metrics(), StubProbes())
    server.start()
    try:
        assert fetch(server.port, "/livez", host="[::1]")[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize("listen", ["9847", "localhost:", ":9847", "host:99999", "host:http"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ConfigError, match="BACKUPD_HTTP__LISTEN"):
        parse_listen(listen)


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0:9847") == ("0.0.0.0", 9847)
    assert parse_listen("[::]:0") == ("::", 0)


# -- `status` through the installed command ------------------------------------------------------
def status(cli: Cli, env: dict[str, str] | None = None) -> tuple[Result, dict[str, Any]]:
    result = cli.run("status", "--json", env=env)
    assert result.returncode in (0, 1), str(result)
    return result, result.json()


def checks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["checks"]}


@pytest.mark.pg
def test_status_logical(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    # Nothing yet: no repository, no backup.
    result, doc = status(cli)
    got = checks(doc)
    assert result.returncode == 1 and doc["ok"] is False
    assert got["dependency_storage"]["ok"] is False
    assert "no repository at file://" in got["dependency_storage"]["detail"]
    assert "run `contentflow-backupd init`" in got["dependency_storage"]["detail"]
    assert got["full_backup_age"]["ok"] is False and got["full_backup_age"]["value_seconds"] is None
    assert got["dependency_database"]["ok"] is True and got["dependency_catalog"]["ok"] is True
    assert "wal_archive_age" not in got  # logical mode: the RPO is the incremental interval

    # Healthy after a backup.
    pg.execute("create table t(x int); insert into t select generate_series(1, 1000)", dbname=pg_db)
    cli.run("init", check=True)
    cli.ok_json("backup", "--kind", "full")
    result, doc = status(cli)
    got = checks(doc)
    assert result.returncode == 0, str(result)
    assert doc["ok"] is True and doc["status"] == "healthy"
    assert got["full_backup_age"]["objective_seconds"] == 26 * 3600
    assert 0 <= got["full_backup_age"]["value_seconds"] < 26 * 3600
    assert got["incremental_backup_age"]["ok"] is True  # a full backup is a fresh restore point too
    assert "succeeded" in got["full_last_run"]["detail"]

    # A failed backup (the database URL points at a closed port) makes it unhealthy...
    bad = {"BACKUPD_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/{pg_db}"}
    assert cli.run("backup", "--kind", "full", env=bad).returncode == 1
    result, doc = status(cli)
    got = checks(doc)
    assert result.returncode == 1
    assert [name for name, c in got.items() if not c["ok"]] == ["full_last_run"]
    assert "cannot connect" in got["full_last_run"]["detail"]
    assert got["full_backup_age"]["ok"] is True  # the previous backup is still fresh

    # ...and the table says so too.
    table = cli.run("status")
    assert table.returncode == 1
    assert "overall: UNHEALTHY" in table.stdout and "full_last_run" in table.stdout

    # Status against the unreachable database reports the dependency as well.
    result, doc = status(cli, env=bad)
    assert not checks(doc)["dependency_database"]["ok"]

    # The next successful full backup makes it healthy again.
    cli.ok_json("backup", "--kind", "full")
    result, doc = status(cli)
    assert result.returncode == 0 and doc["ok"] is True, str(result)

    # Objectives follow the schedules and the explicit maximum ages.
    tight = {"BACKUPD_HEALTH__FULL_MAX_AGE": "1s", "BACKUPD_SCHEDULE__INCREMENTAL": "off"}
    time.sleep(1.1)  # the newest backup is now older than 1s
    result, doc = status(cli, env=tight)
    got = checks(doc)
    assert result.returncode == 1
    assert got["full_backup_age"]["ok"] is False and got["full_backup_age"]["objective_seconds"] == 1
    assert not [name for name in got if name.startswith("incremental")]


@pytest.mark.pg
def test_status_refuses_an_invalid_schedule(cli: Cli) -> None:
    result = cli.run("status", "--json", env={"BACKUPD_SCHEDULE__FULL": "61 * * * *"})
    assert result.returncode == 2
    assert "BACKUPD_SCHEDULE__FULL" in result.stderr


@pytest.mark.pg
def test_status_physical_wal_archive() -> None:
    with physical_setup() as setup:
        setup.cli.ok_json("backup", "--kind", "full")
        result, doc = status(setup.cli)
        got = checks(doc)
        assert result.returncode == 0, str(result)
        wal = got["wal_archive_age"]
        assert wal["ok"] is True and wal["objective_seconds"] == 960
        assert wal["value_seconds"] is not None and wal["at"] is not None

        # Written WAL that is not archived, older than a 1 s objective: a breach.
        setup.cluster.execute("create table busy(x int); insert into busy select generate_series(1, 100)")
        time.sleep(1.1)
        result, doc = status(setup.cli, env={"BACKUPD_HEALTH__WAL_MAX_AGE": "1s"})
        wal = checks(doc)["wal_archive_age"]
        assert result.returncode == 1 and wal["ok"] is False, str(result)
        assert "WAL is waiting to be archived" in wal["detail"]


@pytest.mark.pg
def test_status_physical_failing_archiver() -> None:
    with physical_setup(extra_conf={"archive_command": "'false'"}) as setup:
        setup.cluster.execute("create table w(x int); insert into w values (1)")
        setup.cluster.execute("select pg_switch_wal()")
        deadline = time.monotonic() + 60
        while not setup.cluster.execute("select failed_count from pg_stat_archiver")[0][0]:
            assert time.monotonic() < deadline, "the archiver never tried"
            time.sleep(0.2)
        env = {"BACKUPD_SCHEDULE__FULL": "off", "BACKUPD_SCHEDULE__INCREMENTAL": "off"}
        result, doc = status(setup.cli, env=env)
        got = checks(doc)
        assert result.returncode == 1
        assert [name for name, c in got.items() if not c["ok"]] == ["wal_archive_age"]
        assert (
            got["wal_archive_age"]["detail"]
            == "no WAL archived yet and the archiver is failing (objective 16m)"
        )
