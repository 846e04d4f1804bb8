"""One cluster's trouble stays its own in a daemon of three (docs/design/fleet.md, step 6;
docs/daemon.md "Isolation"): one daemon, three real PostgreSQL clusters, a pool of three
workers (``max_concurrent_jobs = 3``: two for backups, one kept for WAL). ``alpha`` (logical)
is BLOCKED: a session holds ``ACCESS EXCLUSIVE`` on the table its dump needs, so each of its
backups waits ``jobs.lock_wait_timeout`` (60 s) on one of the two backup workers, then fails
naming the lock wait. Meanwhile ``beta`` (physical, streamed WAL) takes its backup and archives
the WAL of a ``pg_switch_wal()`` with no gap (``wal verify``), and ``gamma`` (logical) takes its
scheduled backups, some of them wholly inside the time alpha's dump hangs (the recorded runs'
start and end, an ordering, not a duration). ``/healthz?cluster=`` for beta and gamma is ok;
the metrics and ``status --all-clusters`` say which cluster failed.

Waits poll with generous limits (the machine is shared); nothing asserts on timing."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.demo.cluster import PgCluster, running_cluster
from tests.conftest import PASSPHRASE
from tests.support.cli import Cli
from tests.support.daemon import Daemon
from tests.support.moto_server import REGION, aws_test_env, create_bucket, running_moto_server, s3_client

pytestmark = pytest.mark.pg

WAIT = 420.0
LOCK_WAIT = "60s"


@pytest.fixture
def three() -> Iterator[tuple[PgCluster, PgCluster, PgCluster]]:
    with (
        running_cluster(prefix="backupd-iso-a-") as alpha,
        running_cluster(
            prefix="backupd-iso-b-", conf={"wal_level": "replica", "max_wal_senders": "10"}
        ) as beta,
        running_cluster(prefix="backupd-iso-c-") as gamma,
    ):
        for pg in (alpha, beta, gamma):
            pg.execute(
                "create table items (id bigint primary key, body text);"
                "insert into items select g, md5(g::text) from generate_series(1, 500) g"
            )
        yield alpha, beta, gamma


@pytest.fixture
def alpha_locked(three: tuple[PgCluster, PgCluster, PgCluster]) -> Iterator[None]:
    """A session of alpha holding ``items`` in ACCESS EXCLUSIVE mode in an open transaction,
    from before the daemon starts to the end of the test."""
    blocker = three[0].connect("postgres")
    blocker.execute("begin")
    blocker.execute("lock table items in access exclusive mode")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


def runs(d: Daemon, cluster: str, result: str) -> float:
    return d.metric("backupd_backup_runs_total", cluster=cluster, kind="full", result=result) or 0.0


def full_runs(env: dict[str, str], cluster: str) -> list[dict[str, Any]]:
    return [r for r in Cli(env=env).ok_json("runs", "list", "--cluster", cluster) if r["job"] == "full"]


def inside(run: dict[str, Any], hung: list[dict[str, Any]]) -> bool:
    """``run`` started and ended while one of the ``hung`` runs was waiting on its lock."""
    start, end = datetime.fromisoformat(run["started_at"]), datetime.fromisoformat(run["finished_at"])
    return any(
        datetime.fromisoformat(h["started_at"]) <= start and end <= datetime.fromisoformat(h["finished_at"])
        for h in hung
    )


def test_a_blocked_cluster_holds_one_worker_and_the_others_archive_and_back_up(
    three: tuple[PgCluster, PgCluster, PgCluster], alpha_locked: None
) -> None:
    alpha, beta, gamma = three
    base = Path(tempfile.mkdtemp(prefix="backupd-fleet-isolation-"))
    try:
        config = base / "backupd.toml"
        config.write_text(
            f'repository = "file://{base / "repo"}"\n'
            f'state_dir = "{base / "state"}"\n'
            'shutdown_grace = "5s"\n'
            "max_concurrent_jobs = 3\n"
            "[chunking]\navg_size = 65536\n"
            f'[encryption]\npassphrase = "{PASSPHRASE}"\n'
            '[schedule]\nfull = "every 20s"\nincremental = "off"\nretention = "off"\n'
            'verify = "off"\nrestore_test = "off"\nspread = "5s"\n'
            f'[jobs]\nlock_wait_timeout = "{LOCK_WAIT}"\n'
            f'[clusters.alpha]\ndatabase_url = "{alpha.url("postgres")}"\n'
            f'[clusters.beta]\ndatabase_url = "{beta.url("postgres")}"\nmode = "physical"\n'
            '[clusters.beta.schedule]\nfull = "every 1h"\nwal = "every 5s"\n'
            f'[clusters.gamma]\ndatabase_url = "{gamma.url("postgres")}"\n'
        )
        env = {"BACKUPD_CONFIG": str(config)}
        with Daemon(env) as d:
            d.wait_for("READY=1", lambda: "READY=1" in d.notifications, timeout=WAIT)

            # alpha's first full runs at start and hangs on the lock, then fails naming it
            d.wait_for("alpha's first run", lambda: full_runs(env, "alpha"), timeout=WAIT)
            d.wait_for("alpha failed on the lock", lambda: runs(d, "alpha", "failure") >= 1, timeout=WAIT)
            failed = [r for r in full_runs(env, "alpha") if r["status"] == "failed"]
            lock = "gave up waiting for a table lock after 60s"
            assert failed and all(lock in r["error"] for r in failed), failed
            assert "BACKUPD_JOBS__LOCK_WAIT_TIMEOUT" in failed[0]["error"], failed
            assert runs(d, "alpha", "success") == 0

            # beta: its backup, and the WAL of a switch archived through its stream, no gap
            d.wait_for("a physical backup of beta", lambda: runs(d, "beta", "success") >= 1, timeout=WAIT)
            archived = d.metric("backupd_wal_archived_segments_total", cluster="beta") or 0
            beta.execute("create table w (x int); insert into w select generate_series(1, 100)")
            beta.execute("select pg_switch_wal()")
            d.wait_for(
                "beta's WAL archived",
                lambda: (d.metric("backupd_wal_archived_segments_total", cluster="beta") or 0) > archived,
                timeout=WAIT,
            )
            wal = Cli(env=env).run("wal", "verify", "--cluster", "beta", "--json")
            assert wal.returncode == 0, wal

            # gamma: scheduled backups succeed, and some ran wholly while alpha's dump hung
            d.wait_for("two backups of gamma", lambda: runs(d, "gamma", "success") >= 2, timeout=WAIT)

            def gamma_inside_alpha() -> bool:
                hung = [r for r in full_runs(env, "alpha") if r["status"] == "failed"]
                done = [r for r in full_runs(env, "gamma") if r["status"] == "succeeded"]
                return any(inside(r, hung) for r in done)

            d.wait_for("a gamma backup during alpha's hang", gamma_inside_alpha, timeout=WAIT)
            assert not [r for r in full_runs(env, "gamma") if r["status"] == "failed"]

            # health: beta and gamma ok; the metrics name the failing cluster
            for name in ("beta", "gamma"):
                d.wait_for(
                    f"{name} healthy", lambda n=name: d.get(f"/healthz?cluster={n}")[0] == 200, timeout=WAIT
                )
                doc = json.loads(d.get(f"/healthz?cluster={name}")[1])
                assert doc["cluster"] == name and doc["ok"] is True, doc
                assert runs(d, name, "failure") == 0
                assert d.metric("backupd_dependency_up", cluster=name, dependency="database") == 1
            assert d.metric("backupd_dependency_up", cluster="alpha", dependency="database") == 1
            assert d.get("/readyz")[0] == 200
            res = Cli(env=env).run("status", "--all-clusters")
            assert res.stdout.splitlines()[0].split()[:3] == ["CLUSTER", "STATE", "FAILED-CHECKS"], res.stdout
            states = {line.split()[0]: line.split()[1] for line in res.stdout.splitlines()[1:4]}
            assert states["beta"] == "healthy" and states["gamma"] == "healthy", res.stdout
            # the log says which cluster's backups failed
            failures = d.events("backup_failed")
            assert failures and {e.get("cluster") for e in failures} == {"alpha"}, failures
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_cluster_whose_repository_stops_answering_harms_no_other() -> None:
    """Two clusters of one server (their own databases; as cheap as still meaningful): ``cut``
    keeps its backups in S3 (a moto server), ``steady`` in a local repository. Once ``cut`` has
    a backup, its S3 server stops: ``cut``'s next backups fail (each storage call bounded by its
    retries) and its health names the storage; ``steady``'s scheduled backups go on."""
    base = Path(tempfile.mkdtemp(prefix="backupd-fleet-s3-"))
    try:
        with running_cluster(prefix="backupd-iso-s3-") as pg, contextlib.ExitStack() as moto:
            for db in ("steady", "cut"):
                pg.execute(f"create database {db}")
                pg.execute(
                    "create table items (id bigint primary key, body text);"
                    "insert into items select g, md5(g::text) from generate_series(1, 500) g",
                    db,
                )
            endpoint = moto.enter_context(running_moto_server())
            bucket = create_bucket(
                s3_client(endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
            )
            config = base / "backupd.toml"
            config.write_text(
                f'repository = "file://{base / "repo"}"\n'
                f'state_dir = "{base / "state"}"\n'
                'shutdown_grace = "5s"\n'
                "max_concurrent_jobs = 3\n"
                "[chunking]\navg_size = 65536\n"
                f'[encryption]\npassphrase = "{PASSPHRASE}"\n'
                '[schedule]\nfull = "every 20s"\nincremental = "off"\nretention = "off"\n'
                'verify = "off"\nrestore_test = "off"\nspread = "5s"\n'
                f'[clusters.steady]\ndatabase_url = "{pg.url("steady")}"\n'
                f'[clusters.cut]\ndatabase_url = "{pg.url("cut")}"\n'
                f'repository = "s3://{bucket}/cut"\n'
                f'[clusters.cut.s3]\nendpoint_url = "{endpoint}"\nregion = "{REGION}"\n'
                "force_path_style = true\n"
            )
            env = {"BACKUPD_CONFIG": str(config), **aws_test_env()}
            with Daemon(env) as d:
                d.wait_for("READY=1", lambda: "READY=1" in d.notifications, timeout=WAIT)
                d.wait_for("a backup of cut", lambda: runs(d, "cut", "success") >= 1, timeout=WAIT)
                d.wait_for("a backup of steady", lambda: runs(d, "steady", "success") >= 1, timeout=WAIT)

                moto.close()  # cut's repository stops answering
                before = runs(d, "steady", "success")
                d.wait_for("cut's backup failed", lambda: runs(d, "cut", "failure") >= 1, timeout=WAIT)
                d.wait_for(
                    "two more of steady", lambda: runs(d, "steady", "success") >= before + 2, timeout=WAIT
                )

                d.wait_for(
                    "cut's storage down",
                    lambda: d.metric("backupd_dependency_up", cluster="cut", dependency="storage") == 0,
                    timeout=WAIT,
                )
                status, body = d.get("/healthz?cluster=cut")
                doc = json.loads(body)
                assert status == 503 and doc["ok"] is False, doc
                failed = {c["name"]: c["detail"] for c in doc["checks"] if not c["ok"]}
                assert "dependency_storage" in failed, doc
                cut_errors = [r["error"] for r in full_runs(env, "cut") if r["status"] == "failed"]
                assert cut_errors, full_runs(env, "cut")

                d.wait_for("steady healthy", lambda: d.get("/healthz?cluster=steady")[0] == 200, timeout=WAIT)
                assert runs(d, "steady", "failure") == 0
                assert d.metric("backupd_dependency_up", cluster="steady", dependency="storage") == 1
                assert d.get("/readyz")[0] == 200
                failures = d.events("backup_failed")
                assert failures and {e.get("cluster") for e in failures} == {"cut"}, failures
    finally:
        shutil.rmtree(base, ignore_errors=True)
