"""One daemon, three real PostgreSQL clusters (docs/design/fleet.md, step 5): ``run`` with three
``[clusters.<name>]`` serves them all. Cluster ``gamma``'s server is stopped before the daemon
starts: ``alpha`` (logical) takes its scheduled backups and ``beta`` (physical) its backup and
its streamed WAL all the same, and both are healthy in ``/healthz?cluster=``; ``gamma``'s health
fails naming its server; ``/healthz`` as a whole is not ok; every cluster's series carries its
``cluster`` label; ``status --all-clusters`` says which.

Waits poll with generous limits (the machine is shared); nothing asserts on timing."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from contentflow_backupd.demo.cluster import PgCluster, running_cluster
from tests.conftest import PASSPHRASE
from tests.support.cli import Cli
from tests.support.daemon import Daemon

pytestmark = pytest.mark.pg

WAIT = 300.0


@pytest.fixture
def three() -> Iterator[tuple[PgCluster, PgCluster, PgCluster]]:
    with (
        running_cluster(prefix="backupd-fleet-a-") as alpha,
        running_cluster(
            prefix="backupd-fleet-b-", conf={"wal_level": "replica", "max_wal_senders": "10"}
        ) as beta,
        running_cluster(prefix="backupd-fleet-c-") as gamma,
    ):
        for pg in (alpha, beta):
            pg.execute(
                "create table items (id bigint primary key, body text);"
                "insert into items select g, md5(g::text) from generate_series(1, 500) g"
            )
        gamma.stop()  # down before the daemon starts
        yield alpha, beta, gamma


def runs(d: Daemon, cluster: str, result: str) -> float:
    return d.metric("backupd_backup_runs_total", cluster=cluster, kind="full", result=result) or 0.0


def test_one_daemon_serves_three_clusters_and_one_down_harms_no_other(
    three: tuple[PgCluster, PgCluster, PgCluster],
) -> None:
    alpha, beta, gamma = three
    base = Path(tempfile.mkdtemp(prefix="backupd-fleet-clusters-"))
    try:
        config = base / "backupd.toml"
        config.write_text(
            f'repository = "file://{base / "repo"}"\n'
            f'state_dir = "{base / "state"}"\n'
            'shutdown_grace = "5s"\n'
            "[chunking]\navg_size = 65536\n"
            f'[encryption]\npassphrase = "{PASSPHRASE}"\n'
            '[schedule]\nfull = "every 20s"\nincremental = "off"\nretention = "off"\n'
            'verify = "off"\nrestore_test = "off"\nspread = "10s"\n'
            f'[clusters.alpha]\ndatabase_url = "{alpha.url("postgres")}"\n'
            f'[clusters.beta]\ndatabase_url = "{beta.url("postgres")}"\nmode = "physical"\n'
            '[clusters.beta.schedule]\nfull = "every 1h"\nwal = "every 5s"\n'
            f'[clusters.gamma]\ndatabase_url = "{gamma.url("postgres")}?connect_timeout=5"\n'
        )
        env = {"BACKUPD_CONFIG": str(config)}
        with Daemon(env) as d:
            d.wait_for("READY=1", lambda: "READY=1" in d.notifications, timeout=WAIT)
            # the two healthy clusters: a first full at once, then (alpha) scheduled ones, and
            # (beta) its WAL streamed and archived
            d.wait_for("two backups of alpha", lambda: runs(d, "alpha", "success") >= 2, timeout=WAIT)
            d.wait_for("a physical backup of beta", lambda: runs(d, "beta", "success") >= 1, timeout=WAIT)
            archived = d.metric("backupd_wal_archived_segments_total", cluster="beta") or 0
            beta.execute("create table w (x int); insert into w select generate_series(1, 100)")
            beta.execute("select pg_switch_wal()")
            d.wait_for(
                "beta's WAL archived",
                lambda: (d.metric("backupd_wal_archived_segments_total", cluster="beta") or 0) > archived,
                timeout=WAIT,
            )
            assert d.events("wal_stream_supervised")
            for name in ("alpha", "beta"):
                d.wait_for(
                    f"{name} healthy",
                    lambda n=name: d.get(f"/healthz?cluster={n}")[0] == 200,
                    timeout=WAIT,
                )
                doc = json.loads(d.get(f"/healthz?cluster={name}")[1])
                assert doc["cluster"] == name and doc["ok"] is True, doc

            # the stopped one: unhealthy, its database named; the whole not ok
            status, body = d.get("/healthz?cluster=gamma")
            doc = json.loads(body)
            assert status == 503 and doc["ok"] is False, doc
            failed = {c["name"]: c["detail"] for c in doc["checks"] if not c["ok"]}
            assert "dependency_database" in failed, doc
            assert str(gamma.port) in failed["dependency_database"], failed
            status, body = d.get("/healthz")
            whole = json.loads(body)
            assert status == 503 and whole["ok"] is False
            assert [(c["cluster"], c["ok"]) for c in whole["clusters"]] == [
                ("alpha", True),
                ("beta", True),
                ("gamma", False),
            ]
            assert d.get("/healthz?cluster=delta")[0] == 404
            assert d.get("/readyz")[0] == 200  # the daemon is ready, whatever its clusters

            # every cluster's series carries its label
            for name, up in (("alpha", 1), ("beta", 1), ("gamma", 0)):
                assert d.metric("backupd_dependency_up", cluster=name, dependency="database") == up
                assert d.metric("backupd_leader", cluster=name) == 1
            assert runs(d, "gamma", "success") == 0

            # status over every cluster: one line each, exit 1 as gamma is unhealthy
            res = Cli(env=env).run("status", "--all-clusters")
            assert res.returncode == 1, res
            lines = [line.split() for line in res.stdout.splitlines()]
            assert lines[0][:3] == ["CLUSTER", "STATE", "FAILED-CHECKS"], res.stdout
            states = {line[0]: line[1] for line in lines[1:4]}
            assert states == {"alpha": "healthy", "beta": "healthy", "gamma": "UNHEALTHY"}, res.stdout
            assert any("serving 3 clusters" in n for n in d.notifications if n.startswith("STATUS=")), (
                d.notifications
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
