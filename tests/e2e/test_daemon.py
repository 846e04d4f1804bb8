"""The daemon end to end: ``contentflow-backupd run`` as a subprocess, with second-level
schedules, against real PostgreSQL clusters, observed through NOTIFY_SOCKET, HTTP and the CLI."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.daemon import Daemon, daemon_env, far_schedule, sqlite_job_table
from tests.support.pg import PgCluster, running_cluster

pytestmark = pytest.mark.pg


@pytest.fixture
def own_pg() -> Iterator[PgCluster]:
    """A cluster of this test's own: the test stops and starts it."""
    with running_cluster(prefix="backupd-daemon-pg-") as cluster:
        yield cluster


def _fill(pg: PgCluster, db: str, rows: int = 2000) -> None:
    pg.execute(
        "create table items (id bigint primary key, body text);"
        f"insert into items select g, md5(g::text) from generate_series(1, {rows}) g",
        db,
    )


def _runs_total(d: Daemon, kind: str, result: str) -> float:
    return d.metric("backupd_backup_runs_total", kind=kind, result=result) or 0.0


def test_daemon_schedules_records_fails_recovers_expires_and_stops(tmp_path: Path, own_pg: PgCluster) -> None:
    db = own_pg.create_database()
    _fill(own_pg, db)
    env = daemon_env(
        tmp_path,
        own_pg,
        db,
        BACKUPD_SCHEDULE__FULL="every 6s",
        BACKUPD_SCHEDULE__INCREMENTAL="every 2s",
        BACKUPD_SCHEDULE__RETENTION="every 3s",
        BACKUPD_RETENTION__FULL="8s",
        BACKUPD_RETENTION__INCREMENTAL="4s",
        BACKUPD_RETENTION__GC_GRACE="1s",
        WATCHDOG_USEC="30000000",  # the watchdog is on: WATCHDOG=1 pings
    )
    cli = Cli(env=env)
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications, timeout=60)
        assert d.get("/livez")[0] == 200
        d.wait_for("ready", lambda: d.get("/readyz")[0] == 200)
        # scheduled full and incremental runs show in /metrics
        d.wait_for("a full backup", lambda: _runs_total(d, "full", "success") >= 1)
        d.wait_for("an incremental backup", lambda: _runs_total(d, "incremental", "success") >= 1)
        assert (d.metric("backupd_backup_last_success_timestamp_seconds", kind="full") or 0) > 0
        assert d.metric("backupd_build_info", version=_version()) == 1
        assert d.metric("backupd_leader") == 1
        # both started through the job pool's queue: their waits are observed, as backups
        assert (d.metric("backupd_scheduler_queue_wait_seconds_count", **{"class": "backup"}) or 0) >= 2

        # the database goes away: failed runs are counted, liveness holds, health does not
        failures_before = _runs_total(d, "full", "failure") + _runs_total(d, "incremental", "failure")
        own_pg.stop()
        d.wait_for(
            "a failed run",
            lambda: (
                _runs_total(d, "full", "failure") + _runs_total(d, "incremental", "failure") > failures_before
            ),
        )
        assert d.get("/livez")[0] == 200
        d.wait_for("healthz 503", lambda: d.get("/healthz")[0] == 503)

        # it comes back: the next runs succeed and health recovers
        successes = _runs_total(d, "incremental", "success")
        own_pg.start()
        d.wait_for("a success after the outage", lambda: _runs_total(d, "incremental", "success") > successes)
        d.wait_for("healthz 200", lambda: d.get("/healthz")[0] == 200, timeout=60)

        # retention deleted old backups and kept a full
        d.wait_for(
            "retention deletions",
            lambda: (
                (d.metric("backupd_retention_deleted_backups_total", kind="full") or 0)
                + (d.metric("backupd_retention_deleted_backups_total", kind="incremental") or 0)
                >= 1
            ),
            timeout=60,
        )
        listed = cli.run("list", "--json", check=True).json()
        assert any(b["kind"] == "full" for b in listed), listed

        d.signal(signal.SIGTERM)
        assert d.wait(90) == 0, d.stderr()[-3000:]
        assert "STOPPING=1" in d.notifications
        assert "WATCHDOG=1" in d.notifications
        assert any(n.startswith("STATUS=next: ") for n in d.notifications), d.notifications

    runs = cli.run("runs", "--json", check=True).json()
    jobs = {r["job"] for r in runs}
    assert {"full", "incremental", "retention"} <= jobs, jobs
    assert {r["trigger"] for r in runs} <= {"scheduled", "catch-up", "manual"}
    failed = [r for r in runs if r["status"] == "failed"]
    assert failed and all(r["error"] for r in failed)
    assert set(runs[0]) >= {
        "id",
        "job",
        "trigger",
        "status",
        "started_at",
        "finished_at",
        "backup_id",
        "error",
    }

    # the jobs stay in the catalog's job table of this repository's cluster, and a restart finds
    # them there
    catalog = tmp_path / "state" / "catalog.sqlite"
    with sqlite3.connect(catalog) as conn:
        stored = {row[0] for row in conn.execute(f"select id from {sqlite_job_table(conn)}")}
    assert stored == {"full", "incremental", "retention"}, stored
    with Daemon(env) as d:
        d.wait_for("READY=1 again", lambda: "READY=1" in d.notifications, timeout=60)
        registered = {e["job"] for e in d.events("scheduler_job_registered")}
        assert registered == {"full", "incremental", "retention"}
        d.wait_for("a run after the restart", lambda: _runs_total(d, "incremental", "success") >= 1)


def test_sigterm_during_a_backup_records_it_interrupted_and_exits_0(
    tmp_path: Path, pg: PgCluster, pg_db: str
) -> None:
    _fill(pg, pg_db, rows=100)
    env = daemon_env(tmp_path, pg, pg_db, BACKUPD_SCHEDULE__FULL=far_schedule(), BACKUPD_SHUTDOWN_GRACE="2s")
    # a transaction holding an exclusive lock makes pg_dump wait: the backup is "running"
    blocker = pg.connect(pg_db)
    blocker.execute("begin")
    blocker.execute("lock table items in access exclusive mode")
    try:
        with Daemon(env) as d:
            d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
            d.wait_for("the first full backup to start", lambda: d.events("backup_started"))
            # a manual backup meanwhile is refused (never two at once) and recorded as skipped
            manual = Cli(env=env).run("backup", "--kind", "full")
            assert manual.returncode == 1 and "already running" in manual.stderr, manual
            d.signal(signal.SIGTERM)
            d.wait_for("readyz 503", lambda: d.get("/readyz")[0] == 503, timeout=60)
            assert d.wait(60) == 0, d.stderr()[-3000:]
    finally:
        blocker.rollback()
        blocker.close()
    runs = Cli(env=env).run("runs", "--json", check=True).json()
    full = [r for r in runs if r["job"] == "full"]
    assert [(r["trigger"], r["status"]) for r in full] == [
        ("scheduled", "interrupted"),
        ("manual", "skipped"),
    ]
    backups = Cli(env=env).run("list", "--all", "--json", check=True).json()
    assert backups and backups[-1]["status"] == "interrupted"


def test_a_second_signal_stops_at_once(tmp_path: Path, pg: PgCluster, pg_db: str) -> None:
    _fill(pg, pg_db, rows=100)
    env = daemon_env(tmp_path, pg, pg_db, BACKUPD_SCHEDULE__FULL="every 1h", BACKUPD_SHUTDOWN_GRACE="10m")
    blocker = pg.connect(pg_db)
    blocker.execute("begin")
    blocker.execute("lock table items in access exclusive mode")
    try:
        with Daemon(env) as d:
            d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
            d.wait_for("the first full backup to start", lambda: d.events("backup_started"))
            d.signal(signal.SIGTERM)
            d.wait_for("readyz 503", lambda: d.get("/readyz")[0] == 503, timeout=60)
            assert d.proc is not None and d.proc.poll() is None  # waiting out its grace period
            d.signal(signal.SIGTERM)
            assert d.wait(40) == 128 + signal.SIGTERM, d.stderr()[-3000:]
            assert d.events("daemon_stopping_now")
    finally:
        blocker.rollback()
        blocker.close()
    runs = Cli(env=env).run("runs", "--json", check=True).json()
    assert runs[-1]["job"] == "full" and runs[-1]["status"] == "interrupted", runs


def _make_due(conn: sqlite3.Connection, table: str, job_id: str, when: datetime) -> None:
    """Set the stored next fire time of ``job_id`` in APScheduler's ``table`` to ``when``."""
    import pickle

    (state,) = conn.execute(f"select job_state from {table} where id = ?", (job_id,)).fetchone()
    job = pickle.loads(state)
    job["next_run_time"] = when
    conn.execute(
        f"update {table} set job_state = ?, next_run_time = ? where id = ?",
        (pickle.dumps(job), when.timestamp(), job_id),
    )


def test_a_run_missed_while_down_catches_up(tmp_path: Path, pg: PgCluster, pg_db: str) -> None:
    """A job whose fire time passed while the daemon was down runs at start, as ``catch-up``."""

    _fill(pg, pg_db, rows=10)
    env = daemon_env(tmp_path, pg, pg_db, BACKUPD_SCHEDULE__INCREMENTAL=far_schedule())
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
    catalog = tmp_path / "state" / "catalog.sqlite"
    missed = datetime.now(UTC) - timedelta(minutes=10)  # within the grace of a daily job (6 h)
    with sqlite3.connect(catalog) as conn:
        _make_due(conn, sqlite_job_table(conn), "incremental", missed)
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        d.wait_for(
            "the missed run",
            lambda: _runs_total(d, "incremental", "success") + _runs_total(d, "full", "success"),
        )
    runs = Cli(env=env).run("runs", "--json", check=True).json()
    assert [(r["job"], r["trigger"], r["status"]) for r in runs] == [("incremental", "catch-up", "succeeded")]


def test_unloadable_job_row_is_logged_and_recreated(tmp_path: Path, pg: PgCluster, pg_db: str) -> None:
    env = daemon_env(
        tmp_path, pg, pg_db, BACKUPD_SCHEDULE__FULL="0 3 * * *", BACKUPD_SCHEDULE__RETENTION="30 * * * *"
    )
    _fill(pg, pg_db, rows=10)
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        d.wait_for("the first full backup", lambda: _runs_total(d, "full", "success") >= 1)
    catalog = tmp_path / "state" / "catalog.sqlite"
    with sqlite3.connect(catalog) as conn:
        conn.execute(f"update {sqlite_job_table(conn)} set job_state = x'00ff' where id = 'full'")
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        bad = d.events("scheduler_job_unloadable")
        assert bad and bad[0]["job"] == "full", d.stderr()[-2000:]
        assert d.metric("backupd_scheduler_next_run_timestamp_seconds", job="full")
    with sqlite3.connect(catalog) as conn:
        stored = {row[0] for row in conn.execute(f"select id from {sqlite_job_table(conn)}")}
    assert stored == {"full", "retention"}


@pytest.mark.parametrize(
    ("name", "value"),
    [("BACKUPD_SCHEDULE__FULL", "61 * * * *"), ("BACKUPD_SCHEDULE__INCREMENTAL", "every 5x")],
)
def test_invalid_schedule_stops_the_daemon_with_exit_2(
    tmp_path: Path, pg: PgCluster, name: str, value: str
) -> None:
    env = daemon_env(tmp_path, pg, "postgres", **{name: value})
    result = Cli(env=env).run("run", timeout=60)
    assert result.returncode == 2, result
    assert name in result.stderr


def test_wrong_key_is_refused_at_start(tmp_path: Path, pg: PgCluster) -> None:
    env = daemon_env(tmp_path, pg, "postgres")
    Cli(env=env).run("init", check=True)
    result = Cli(env={**env, "BACKUPD_ENCRYPTION__PASSPHRASE": "another passphrase"}).run("run", timeout=60)
    assert result.returncode == 1, result
    assert "key is wrong" in result.stderr


def test_first_start_initialises_an_empty_repository(tmp_path: Path, pg: PgCluster) -> None:
    env = daemon_env(tmp_path, pg, "postgres")
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        assert d.events("repository_initialised")
    assert (tmp_path / "repo" / "repo.json").exists()


def test_second_daemon_on_one_sqlite_catalog_is_refused(tmp_path: Path, pg: PgCluster) -> None:
    env = daemon_env(tmp_path, pg, "postgres")
    with Daemon(env) as first:
        first.wait_for("READY=1", lambda: "READY=1" in first.notifications)
        result = Cli(env={**env, "BACKUPD_HTTP__LISTEN": "127.0.0.1:0"}).run("run", timeout=60)
        assert result.returncode == 1, result
        assert "already runs on this catalog" in result.stderr


def test_standby_takes_over_when_the_leader_dies(tmp_path: Path, pg: PgCluster) -> None:
    catalog_db = pg.create_database()
    env = daemon_env(tmp_path, pg, "postgres", BACKUPD_CATALOG_URL=pg.url(catalog_db))
    first = Daemon({**env, "BACKUPD_STATE_DIR": str(tmp_path / "state1")}).start()
    second: Daemon | None = None
    try:
        first.wait_for("leader", lambda: first.metric("backupd_leader") == 1)
        second = Daemon({**env, "BACKUPD_STATE_DIR": str(tmp_path / "state2")}).start()
        second.wait_for("READY=1", lambda: "READY=1" in second.notifications)
        assert second.metric("backupd_leader") == 0
        assert second.get("/readyz")[0] == 200
        first.signal(signal.SIGKILL)
        first.wait(10)
        second.wait_for("takeover", lambda: second.metric("backupd_leader") == 1, timeout=120)
    finally:
        first.close()
        if second is not None:
            second.close()
        pg.drop_database(catalog_db)


def test_sigterm_releases_the_lease_and_the_standby_takes_over(
    tmp_path: Path, pg: PgCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """A planned stop hands the cluster over without waiting for the lease to expire: the
    stopped daemon releases its lease once its jobs stopped (``fleet_released``), and the other
    claims it at its next renewal. The time is printed, not asserted (the machine is shared)."""
    catalog_db = pg.create_database()
    env = daemon_env(tmp_path, pg, "postgres", BACKUPD_CATALOG_URL=pg.url(catalog_db))
    first = Daemon({**env, "BACKUPD_STATE_DIR": str(tmp_path / "state1")}).start()
    second: Daemon | None = None
    try:
        first.wait_for("leader", lambda: first.metric("backupd_leader") == 1)
        second = Daemon({**env, "BACKUPD_STATE_DIR": str(tmp_path / "state2")}).start()
        second.wait_for("standby", lambda: second.metric("backupd_leader") == 0)
        stopped_at = time.monotonic()
        assert first.stop() == 0
        released = second.wait_for("the release logged", lambda: first.events("fleet_released"))
        assert [c.split("@")[0] for c in released[0]["clusters"]] == ["main"], released
        second.wait_for("takeover", lambda: second.metric("backupd_leader") == 1, timeout=120)
        with capsys.disabled():
            print(f"\nfleet_handover_after_sigterm_seconds={time.monotonic() - stopped_at:.1f}")
        epochs = pg.execute("select cluster, epoch from fleet_leases", catalog_db)
        assert [(c.split("@")[0], e) for c, e in epochs] == [("main", 2)], epochs
    finally:
        first.close()
        if second is not None:
            second.close()
        pg.drop_database(catalog_db)


def test_daemons_of_other_clusters_and_repositories_share_a_catalog(
    tmp_path: Path, pg: PgCluster, pg_db: str
) -> None:
    """Three daemons on one PostgreSQL catalog: clusters a and b of one repository, and a cluster
    a of another repository. Each leads its own scope and keeps its jobs in its own table, so no
    daemon fires, reschedules or removes another's jobs (in one shared table they did; and the
    second repository's daemon stood by for ever behind the first's lock, and again behind the
    first's lease while leases were keyed by cluster name). A lease is per repository and
    cluster, ``<cluster>@<repository hash>`` (docs/daemon.md "Several daemons")."""
    _fill(pg, pg_db, rows=50)
    catalog_db = pg.create_database()
    base = daemon_env(
        tmp_path, pg, pg_db, BACKUPD_CATALOG_URL=pg.url(catalog_db), BACKUPD_SCHEDULE__FULL="0 3 * * *"
    )
    scopes = {
        "a": {"BACKUPD_CLUSTER": "a"},
        "b": {"BACKUPD_CLUSTER": "b", "BACKUPD_SCHEDULE__FULL": "0 4 * * *"},
        "other-repo": {"BACKUPD_CLUSTER": "a", "BACKUPD_REPOSITORY": f"file://{tmp_path / 'repo2'}"},
    }
    daemons: dict[str, Daemon] = {}
    try:
        for name, extra in scopes.items():
            env = {**base, **extra, "BACKUPD_STATE_DIR": str(tmp_path / f"state-{name}")}
            daemons[name] = Daemon(env).start()
            daemons[name].wait_for("READY=1", lambda d=daemons[name]: "READY=1" in d.notifications)
        for name, d in daemons.items():
            d.wait_for(f"{name} leads", lambda d=d: d.metric("backupd_leader") == 1, timeout=120)
            # no backup yet: each runs its own first full at once
            d.wait_for(
                f"{name}'s first full", lambda d=d: _runs_total(d, "full", "success") >= 1, timeout=180
            )
        tables = {
            row[0]
            for row in pg.execute(
                "select tablename from pg_tables where tablename like 'apscheduler\\_jobs\\_%'", catalog_db
            )
        }
        assert len(tables) == 3, tables
        fire_hours = set()
        for table in tables:
            rows = pg.execute(f"select id, next_run_time from {table}", catalog_db)
            assert [r[0] for r in rows] == ["full"], rows
            fire_hours.add(datetime.fromtimestamp(float(rows[0][1]), UTC).hour)
        assert fire_hours == {3, 4}  # b's schedule is its own; a's two daemons keep theirs
        leases = pg.execute(
            "select cluster, owner is not null from fleet_leases order by cluster", catalog_db
        )
        assert sorted((lease.split("@")[0], held) for lease, held in leases) == [
            ("a", True),
            ("a", True),
            ("b", True),
        ], leases  # two leases of cluster a, one per repository
        seen = set()
        for name, d in daemons.items():
            cli = Cli(env=d.env)
            runs = cli.run("runs", "--json", check=True).json()
            assert [(r["job"], r["status"]) for r in runs] == [("full", "succeeded")], (name, runs)
            backups = cli.run("backup", "list", "--json", check=True).json()
            assert [b["id"] for b in backups] == [runs[0]["backup_id"]], (name, backups)
            seen.add(runs[0]["backup_id"])
        assert len(seen) == 3  # each daemon's own backup, listed only in its own scope
    finally:
        for d in daemons.values():
            d.close()
        pg.drop_database(catalog_db)


def test_an_upgrade_adopts_the_jobs_of_the_shared_table(tmp_path: Path, pg: PgCluster, pg_db: str) -> None:
    """A catalog of an earlier version holds the jobs in ``apscheduler_jobs``: the first start
    copies them into this scope's table, keeping a run missed while the daemon was down."""

    _fill(pg, pg_db, rows=10)
    env = daemon_env(tmp_path, pg, pg_db, BACKUPD_SCHEDULE__INCREMENTAL=far_schedule())
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
    catalog = tmp_path / "state" / "catalog.sqlite"
    missed = datetime.now(UTC) - timedelta(minutes=10)  # within the grace of a daily job (6 h)
    with sqlite3.connect(catalog) as conn:  # make it the catalog of an earlier version
        table = sqlite_job_table(conn)
        conn.execute(  # the table APScheduler made in earlier versions
            "create table apscheduler_jobs"
            " (id varchar(191) not null primary key, next_run_time float, job_state blob not null)"
        )
        conn.execute("create index ix_apscheduler_jobs_next_run_time on apscheduler_jobs (next_run_time)")
        conn.execute(f"insert into apscheduler_jobs select id, next_run_time, job_state from {table}")
        conn.execute(f"drop table {table}")
        _make_due(conn, "apscheduler_jobs", "incremental", missed)
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        adopted = d.events("scheduler_jobs_adopted")
        assert adopted and adopted[0]["jobs"] == ["incremental"], d.stderr()[-2000:]
        d.wait_for(
            "the missed run",
            lambda: _runs_total(d, "incremental", "success") + _runs_total(d, "full", "success"),
        )
    runs = Cli(env=env).run("runs", "--json", check=True).json()
    assert [(r["job"], r["trigger"]) for r in runs] == [("incremental", "catch-up")]
    with sqlite3.connect(catalog) as conn:
        assert {r[0] for r in conn.execute(f"select id from {sqlite_job_table(conn)}")} == {"incremental"}
        # the old table is left for daemons of earlier versions
        assert {r[0] for r in conn.execute("select id from apscheduler_jobs")} == {"incremental"}
    with Daemon(env) as d:  # adopted once: a restart does not copy again
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
        assert not d.events("scheduler_jobs_adopted")


def _version() -> str:
    from contentflow_backupd import __version__

    return __version__


def test_scheduled_restore_drill_is_recorded_measured_and_reported(pg: PgCluster, pg_db: str) -> None:
    import json
    import os
    import shutil
    import tempfile

    _fill(pg, pg_db, rows=500)
    base = Path(tempfile.mkdtemp(prefix="backupd-daemon-drill-"))
    os.chmod(base, 0o755)  # the drill's scratch PostgreSQL runs as postgres under the state dir
    try:
        env = daemon_env(base, pg, pg_db, BACKUPD_SCHEDULE__RESTORE_TEST="every 4s")
        cli = Cli(env=env)
        cli.run("init", check=True)
        cli.run("backup", "--kind", "full", check=True)
        os.chmod(base / "state", 0o755)
        with Daemon(env) as d:
            d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
            d.wait_for(
                "a successful drill",
                lambda: (d.metric("backupd_restore_test_runs_total", result="success") or 0) >= 1,
                timeout=120,
            )
            assert (d.metric("backupd_restore_test_duration_seconds") or 0) > 0
            assert (d.metric("backupd_restore_test_restored_bytes") or 0) > 0
            assert (d.metric("backupd_restore_test_last_success_timestamp_seconds") or 0) > 0
            age = d.metric("backupd_recovery_point_age_seconds")
            assert age is not None and age >= 0
            body = d.get("/healthz")[1]
            checks = {c["name"]: c for c in json.loads(body)["checks"]}
            assert checks["restore_test_last_run"]["ok"], body
            assert "restorable from" in checks["recovery_objectives"]["detail"], body
        runs = cli.run("runs", "--job", "restore_test", "--json", check=True).json()
        # every 4 s: a later drill may have been skipped (one at a time) or stopped by the exit
        assert ("scheduled", "succeeded") in [(r["trigger"], r["status"]) for r in runs], runs
        assert {r["status"] for r in runs} <= {"succeeded", "skipped", "interrupted"}, runs
        drills = base / "state" / "drills"
        assert not drills.exists() or not any(drills.iterdir())
    finally:
        shutil.rmtree(base, ignore_errors=True)
