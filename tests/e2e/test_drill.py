"""Restore drills (``restore-test``) against real PostgreSQL, through the installed command.

Physical: a source cluster archiving with ``wal-push`` (``physical_setup``), a full backup taken
under a committing workload, drills into scratch instances started as the ``postgres`` user; the
repository must hold exactly the same objects after every drill. Logical: drills into a private
instance made by ``initdb`` and into a scratch database on ``BACKUPD_DRILL__DATABASE_URL``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.catalog.sql import open_catalog
from contentflow_backupd.model import Scope
from contentflow_backupd.ops.drill.workspace import cleanup_stale_drills
from contentflow_backupd.source.drivers import PgDrivers
from tests.conftest import PASSPHRASE
from tests.e2e import helpers
from tests.e2e.helpers import repository_scope
from tests.e2e.physical import PhysicalSetup, physical_setup
from tests.e2e.pitr_helpers import TABLE, Workload, create_table, switch_and_wait_archived
from tests.support.cli import Cli, Result
from tests.support.pg import PgCluster, running_cluster

PG = PgDrivers()

pytestmark = pytest.mark.pg

CHECKS_TRUE = (
    "-- drill checks: each query must return true\nselect true;\nselect count(*) > 0 from pitr_rows;\n"
)


@dataclass
class Source:
    setup: PhysicalSetup
    backup: dict[str, Any]

    @property
    def cli(self) -> Cli:
        return self.setup.cli

    @property
    def drills_dir(self) -> Path:
        return self.setup.base / "state" / "drills"

    def checks_file(self, name: str, text: str) -> Path:
        path = self.setup.base / name
        path.write_text(text)
        path.chmod(0o644)
        return path

    def drill(self, *args: str, env: dict[str, str] | None = None) -> tuple[Result, dict[str, Any]]:
        result = self.cli.run("restore-test", *args, "--json", env=env)
        assert result.returncode in (0, 1), str(result)
        out: dict[str, Any] = result.json()
        return result, out


def repository_state(repo: Path) -> dict[str, int]:
    """Every object of the repository with its size."""
    return {str(p.relative_to(repo)): p.stat().st_size for p in repo.rglob("*") if p.is_file()}


def checks_by_name(out: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in out["checks"]}


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    with physical_setup() as setup:
        pg = setup.cluster
        create_table(pg)
        pg.execute(f"create index on {TABLE} (body)")
        with Workload(pg):
            time.sleep(0.3)
            backup = setup.cli.ok_json("backup", "--kind", "full")
            time.sleep(0.5)
            switch_and_wait_archived(pg)
            time.sleep(0.3)
        switch_and_wait_archived(pg)
        try:
            yield Source(setup, backup)
        finally:  # a failed test may leave a scratch server behind: never leak one
            cleanup_stale_drills(setup.base / "state", scratch=PG.scratch, admin=PG.admin)


def test_backup_records_what_drills_compare(source: Source) -> None:
    details = source.cli.ok_json("show", source.backup["id"])["manifest"]["details"]
    assert len(details["schema_fingerprint"]) == 64
    assert set(details["schema_objects"]) == {"", f"public.{TABLE}"}
    assert set(details["row_estimates"]) == {f"public.{TABLE}"}
    assert "row_counts" not in details  # physical backups record estimates only
    assert details["bootstrap_superuser"] == "postgres"


def test_physical_drill_succeeds_and_writes_nothing_into_the_repository(source: Source) -> None:
    before = repository_state(source.setup.repo)
    checks = source.checks_file("checks-true.sql", CHECKS_TRUE)
    result, out = source.drill(env={"BACKUPD_DRILL__CHECKS": str(checks)})
    assert result.returncode == 0, str(result)
    assert set(out) == {"status", "backup_id", "target", "rto_seconds", "restored_bytes", "checks"}
    assert out["status"] == "succeeded"
    assert out["backup_id"] == source.backup["id"]
    assert out["target"].startswith("lsn ") and out["target"].endswith("(random)")
    assert out["rto_seconds"] > 0 and out["restored_bytes"] > 0
    by_name = checks_by_name(out)
    expected = {
        "restore", "pg_verifybackup", "recovery", "connect", "schema", "read_tables", "row_counts",
        "amcheck", "user_check:1", "user_check:2",
    }  # fmt: skip
    assert set(by_name) == expected
    assert all(c["status"] == "passed" for c in out["checks"]), out["checks"]
    assert "1 B-tree" not in by_name["amcheck"]["detail"]  # the primary key and the body index
    # Nothing was written into the repository: no object, no WAL, no timeline history.
    assert repository_state(source.setup.repo) == before
    assert not [k for k in before if k.endswith(".history")]
    # The scratch instance and its files are gone.
    assert not source.drills_dir.exists() or not list(source.drills_dir.iterdir())
    # The drill and its run are recorded in the catalog.
    catalog = open_catalog(f"sqlite:///{source.setup.base / 'state' / 'catalog.sqlite'}")
    try:
        drills = catalog.list_drills(drill_scope(source), limit=1)
        runs = [r for r in catalog.list_runs(drill_scope(source)) if r.job == "restore_test"]
    finally:
        catalog.close()
    assert drills[-1].status == "succeeded" and drills[-1].backup_id == source.backup["id"]
    assert drills[-1].rto_seconds is not None and drills[-1].rto_seconds > 0
    assert drills[-1].throughput_bytes_per_s is not None and drills[-1].throughput_bytes_per_s > 0
    assert runs[-1].status == "succeeded" and runs[-1].trigger == "manual"


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the command as root")
def test_physical_drill_as_root_with_a_private_state_directory(source: Source) -> None:
    """Run as root (a CI job, a container) with a state directory the command makes itself, mode
    0700 in a 0700 parent, as the default one is: the scratch server runs as postgres, who cannot
    enter it, so the drill's files go in a private scratch directory outside it. The state
    directory is not opened to anyone."""
    parent = Path(tempfile.mkdtemp(prefix="backupd-root-state-"))  # 0700, root's
    state = parent / "state"
    cli = Cli(env={"BACKUPD_CONFIG": str(source.setup.config), "BACKUPD_STATE_DIR": str(state)})
    try:
        before = repository_state(source.setup.repo)
        result = cli.run("restore-test", "--target-time", "none", "--json")
        assert result.returncode == 0, str(result)
        out = result.json()
        assert out["status"] == "succeeded", out
        statuses = {c["name"]: c["status"] for c in out["checks"]}
        assert statuses.pop("user_checks") == "skipped"  # no checks file given
        assert set(statuses.values()) == {"passed"}, out["checks"]
        assert stat.S_IMODE(state.stat().st_mode) == 0o700 and state.stat().st_uid == 0
        assert stat.S_IMODE((state / "drills").stat().st_mode) == 0o700
        assert not list((state / "drills").iterdir())
        assert repository_state(source.setup.repo) == before
    finally:
        cleanup_stale_drills(state, scratch=PG.scratch, admin=PG.admin)
        shutil.rmtree(parent, ignore_errors=True)


def test_a_drill_check_that_cannot_run_is_reported_as_not_run(source: Source) -> None:
    """pg_verifybackup missing (server and client binaries without it): the check could not run,
    and the drill says so instead of reporting it as passed or skipped."""
    bins = Path(tempfile.mkdtemp(prefix="backupd-no-verifybackup-"))
    os.chmod(bins, 0o755)
    for name in ("postgres", "pg_ctl", "initdb"):
        (bins / name).symlink_to(source.setup.cluster.bin / name)
    env = {"BACKUPD_DRILL__PG_BIN": str(bins), "BACKUPD_PG_BIN": str(bins)}
    try:
        result, out = source.drill("--target-time", "none", env=env)
        text = source.cli.run("restore-test", "--target-time", "none", env=env)
    finally:
        shutil.rmtree(bins, ignore_errors=True)
    verify = checks_by_name(out)["pg_verifybackup"]
    assert verify["status"] == "not_run", verify
    assert f"pg_verifybackup not found in BACKUPD_PG_BIN={bins}" in verify["detail"]
    assert out["status"] == "succeeded" and result.returncode == 0  # no check failed
    assert "warning: 1 check(s) could not run and prove nothing: pg_verifybackup" in text.stdout, str(text)


def test_drill_to_the_end_of_the_archive_and_to_a_time(source: Source) -> None:
    _, out = source.drill("--target-time", "none")
    assert out["status"] == "succeeded", out
    assert out["target"] == "the end of the WAL archive"
    # The workload committed for half a second after the backup ended, and that WAL is archived.
    finished = datetime.fromisoformat(source.backup["finished_at"].replace("Z", "+00:00"))
    target = (finished + timedelta(seconds=0.2)).isoformat()
    _, out = source.drill("--target-time", target)
    assert out["status"] == "succeeded", out
    assert out["target"].startswith("time "), out
    assert "last replayed commit" in checks_by_name(out)["recovery"]["detail"]


def test_bad_target_time_is_a_usage_error(source: Source) -> None:
    result = source.cli.run("restore-test", "--target-time", "yesterday-ish")
    assert result.returncode == 2, str(result)
    assert "--target-time" in result.stderr


def test_user_check_returning_false_fails_the_drill(source: Source) -> None:
    checks = source.checks_file("checks-false.sql", CHECKS_TRUE + "select count(*) = -1 from pitr_rows;\n")
    result, out = source.drill("--target-time", "none", env={"BACKUPD_DRILL__CHECKS": str(checks)})
    assert result.returncode == 1, str(result)
    assert out["status"] == "failed"
    by_name = checks_by_name(out)
    assert by_name["user_check:1"]["status"] == "passed"
    assert by_name["user_check:3"]["status"] == "failed"
    assert "count(*) = -1" in by_name["user_check:3"]["detail"]
    assert "line 4" in by_name["user_check:3"]["detail"]
    assert "returned False" in by_name["user_check:3"]["detail"]
    assert all(c["status"] == "passed" for n, c in by_name.items() if n != "user_check:3")


def test_killed_drill_leaves_nothing_after_the_next_drill(source: Source) -> None:
    before = repository_state(source.setup.repo)
    slow = source.checks_file("checks-slow.sql", "select true from pg_sleep(60);\n")
    proc = source.cli.popen("restore-test", env={"BACKUPD_DRILL__CHECKS": str(slow)})
    try:
        postmaster = _wait_for_scratch_postmaster(source.drills_dir, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert _alive(postmaster), "the scratch postmaster should outlive the killed drill"
    assert list(source.drills_dir.iterdir())
    _, out = source.drill("--target-time", "none")
    assert out["status"] == "succeeded", out
    assert not _alive(postmaster)
    assert not list(source.drills_dir.iterdir())
    catalog = open_catalog(f"sqlite:///{source.setup.base / 'state' / 'catalog.sqlite'}")
    try:
        runs = [r for r in catalog.list_runs(drill_scope(source)) if r.job == "restore_test"]
    finally:
        catalog.close()
    assert runs[-2].status == "interrupted" and runs[-1].status == "succeeded"
    assert repository_state(source.setup.repo) == before


def test_sigterm_stops_the_drill_and_removes_the_scratch_instance(source: Source) -> None:
    slow = source.checks_file("checks-slow2.sql", "select true from pg_sleep(60);\n")
    proc = source.cli.popen("restore-test", env={"BACKUPD_DRILL__CHECKS": str(slow)})
    postmaster = _wait_for_scratch_postmaster(source.drills_dir, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert not _alive(postmaster)
    assert not list(source.drills_dir.iterdir()), stderr[-5000:]
    catalog = open_catalog(f"sqlite:///{source.setup.base / 'state' / 'catalog.sqlite'}")
    try:
        runs = [r for r in catalog.list_runs(drill_scope(source)) if r.job == "restore_test"]
    finally:
        catalog.close()
    assert runs[-1].status == "interrupted"


def test_flipped_byte_in_a_chunk_fails_the_drill_naming_the_object(source: Source) -> None:
    generation = source.backup["generation"]
    chunks = sorted(
        (p for p in (source.setup.repo / "main" / "chunks" / generation).rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    victim = chunks[-1]
    original = victim.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    victim.write_bytes(bytes(damaged))
    try:
        result, out = source.drill("--target-time", "none")
    finally:
        victim.write_bytes(original)
    assert result.returncode == 1, str(result)
    assert out["status"] == "failed" and out["rto_seconds"] is None
    restore = checks_by_name(out)["restore"]
    assert restore["status"] == "failed"
    assert str(victim.relative_to(source.setup.repo)) in restore["detail"], restore
    assert not list(source.drills_dir.iterdir())


def _wait_for_scratch_postmaster(drills: Path, proc: Any, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for pidfile in drills.glob("*/pgdata/postmaster.pid") if drills.exists() else []:
            # Connected and checking: the user check sleeps, the server is up.
            if (pidfile.parent.parent / "run").exists() and _server_answers(pidfile):
                return int(pidfile.read_text().split("\n", 1)[0])
        time.sleep(0.1)
    raise AssertionError("the drill never started its scratch server")


def _server_answers(pidfile: Path) -> bool:
    lines = pidfile.read_text().splitlines()
    return len(lines) >= 8 and lines[7].strip() == "ready"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    proc_stat = Path(f"/proc/{pid}/stat")
    return not proc_stat.exists() or proc_stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


# -- logical -------------------------------------------------------------------------------
@pytest.fixture(params=["root", "postgres"])
def logical_cli(request: pytest.FixtureRequest, pg: PgCluster, pg_db: str) -> Iterator[Cli]:
    """A logical setup run as root or as the unprivileged ``postgres`` user. The state directory
    is made by the command, as the default one is (0700, in a 0700 parent): as root the scratch
    instance runs as postgres, who cannot enter it."""
    user = None if request.param == "root" else "postgres"
    base = Path(tempfile.mkdtemp(prefix="backupd-drill-"))
    if user is not None:
        os.chown(base, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    cli = Cli(
        env={
            "BACKUPD_DATABASE_URL": pg.url(pg_db),
            "BACKUPD_REPOSITORY": f"file://{base / 'repo'}",
            "BACKUPD_STATE_DIR": str(base / "state"),
            "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
            "BACKUPD_CHUNKING__AVG_SIZE": str(64 * 1024),
        },
        user=user,
    )
    cli.run("init", check=True)
    try:
        yield cli
    finally:
        cleanup_stale_drills(base / "state", scratch=PG.scratch, admin=PG.admin)
        shutil.rmtree(base, ignore_errors=True)


def _logical_backup_under_writes(pg: PgCluster, db: str, cli: Cli) -> dict[str, Any]:
    helpers.seed(pg, db, size_mb=2)
    pg.execute("create table busy (id bigint generated always as identity primary key, at timestamptz)", db)
    with _Inserter(pg, db):
        time.sleep(0.2)
        backup: dict[str, Any] = cli.ok_json("backup", "--kind", "full")
    return backup


class _Inserter:
    """Commits rows into ``busy`` while a backup runs: counts taken outside the dump's snapshot
    would differ from the rows the dump holds."""

    def __init__(self, pg: PgCluster, db: str) -> None:
        import threading

        self.pg, self.db = pg, db
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Inserter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        with self.pg.connect(self.db) as conn:
            while not self.stop.is_set():
                conn.execute("insert into busy (at) values (clock_timestamp())")
                time.sleep(0.002)


def test_logical_drill_into_a_private_instance(pg: PgCluster, pg_db: str, logical_cli: Cli) -> None:
    backup = _logical_backup_under_writes(pg, pg_db, logical_cli)
    result = logical_cli.run("restore-test", "--json")
    assert result.returncode == 0, str(result)
    out = result.json()
    assert out["status"] == "succeeded" and out["backup_id"] == backup["id"]
    assert out["target"] == "the backup"
    by_name = checks_by_name(out)
    assert by_name["row_counts"]["status"] == "passed"
    assert "hold exactly the rows counted at backup time" in by_name["row_counts"]["detail"]
    assert by_name["schema"]["status"] == "passed"
    assert by_name["amcheck"]["status"] == "passed"
    assert "pg_verifybackup" not in by_name
    state = Path(logical_cli.env["BACKUPD_STATE_DIR"])
    assert not list((state / "drills").iterdir())
    assert stat.S_IMODE(state.stat().st_mode) == 0o700  # made by the command, never opened


def test_logical_drill_on_the_drill_database_url(pg: PgCluster, pg_db: str, logical_cli: Cli) -> None:
    _logical_backup_under_writes(pg, pg_db, logical_cli)
    env = {"BACKUPD_DRILL__DATABASE_URL": pg.url("postgres")}
    result = logical_cli.run("restore-test", "--json", env=env)
    assert result.returncode == 0, str(result)
    out = result.json()
    assert out["status"] == "succeeded", out
    assert "backupd_drill_" in checks_by_name(out)["restore"]["detail"]
    assert pg.password not in result.stdout + result.stderr
    left = pg.execute("select datname from pg_database where datname like 'backupd\\_drill\\_%'")
    assert left == []


def test_logical_drill_fails_when_the_schema_differs(pg: PgCluster, pg_db: str, logical_cli: Cli) -> None:
    """The restored schema is compared with the recorded fingerprint: a drill server whose
    template database holds an extra table restores a database that is not the backup's."""
    _logical_backup_under_writes(pg, pg_db, logical_cli)
    with running_cluster(prefix="backupd-drillsrv-") as other:
        other.execute("create table template_extra (x int)", "template1")
        result = logical_cli.run("restore-test", "--json", env={"BACKUPD_DRILL__DATABASE_URL": other.url()})
    assert result.returncode == 1, str(result)
    out = result.json()
    schema = checks_by_name(out)["schema"]
    assert schema["status"] == "failed"
    assert "not in the backup public.template_extra" in schema["detail"], schema
    assert checks_by_name(out)["row_counts"]["status"] == "passed"


def drill_scope(source: Any) -> Scope:
    """The catalog scope of the drill source's repository and cluster ``main``."""
    return repository_scope({"BACKUPD_REPOSITORY": f"file://{source.setup.repo}"})
