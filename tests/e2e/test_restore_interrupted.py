"""Ctrl-C (SIGINT) or SIGTERM during ``restore --to-database URL``: a database the restore
created is dropped again; an existing database is left as it was (the restore is one
transaction, rolled back).

The restore is held mid-way by a lock, not by its size or a sleep: the backed-up table belongs to
a role, and a transaction that has begun to drop that role holds a lock on it, so pg_restore's
``ALTER TABLE ... OWNER TO`` waits. The test signals once pg_stat_activity shows that wait.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from contentflow_backupd.demo.cluster import chown_for_postgres
from tests.support.cli import Cli
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

ENDS = 120  # seconds: the command must have ended by then; not a speed claim


def _backup_owned_by_a_role(cli: Cli, pg: PgCluster, db: str) -> str:
    """A backup whose table belongs to a new role; afterwards the role owns nothing, so that
    ``DROP ROLE`` in an open transaction succeeds and holds its lock. Returns the role."""
    role = f"restore_owner_{secrets.token_hex(4)}"
    pg.execute(f"create role {role} nologin")
    pg.execute(
        "create table items (id bigint primary key, body text);"
        "insert into items select g, md5(g::text) from generate_series(1, 1000) g;"
        f"alter table items owner to {role}",
        db,
    )
    cli.run("init", check=True)
    cli.run("backup", "--kind", "full", check=True)
    pg.execute("alter table items owner to postgres", db)
    return role


@contextmanager
def _role_locked(pg: PgCluster, role: str, target: str) -> Iterator[None]:
    blocker = pg.connect()
    blocker.execute("begin")
    blocker.execute(f"drop role {role}")  # AccessExclusiveLock on the role until rollback
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()
        # pg_restore's session (its client killed) runs on to its next read, then rolls back
        _wait_until(lambda: not _pg_restore_sessions(pg, target, waiting=False))
        # a restore that went on and committed (the bug this guards against) keeps the role in
        # use: leave it to the test's assertions to say so
        with contextlib.suppress(psycopg.errors.DependentObjectsStillExist):
            pg.execute(f"drop role if exists {role}")


def _pg_restore_sessions(pg: PgCluster, target: str, *, waiting: bool) -> int:
    query = "select count(*) from pg_stat_activity where datname = %s and application_name = 'pg_restore'"
    if waiting:
        query += " and wait_event_type = 'Lock'"
    return int(pg.execute(query, params=(target,))[0][0])


def _wait_until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + ENDS
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _wait_for_pg_restore_waiting(pg: PgCluster, target: str, proc: subprocess.Popen[str]) -> None:
    """Poll until pg_restore's session in ``target`` waits on a lock (the restore is mid-way)."""

    def waiting() -> bool:
        assert proc.poll() is None, proc.communicate()
        return _pg_restore_sessions(pg, target, waiting=True) > 0

    _wait_until(waiting)


def _database_exists(pg: PgCluster, name: str) -> bool:
    return bool(pg.execute("select 1 from pg_database where datname = %s", params=(name,)))


@pytest.fixture
def postgres_cli(cli: Cli) -> Iterator[Cli]:
    """The ``cli`` settings, run as the postgres user in a directory of its own."""
    base = Path(tempfile.mkdtemp(prefix="backupd-restore-int-"))
    chown_for_postgres(base)
    try:
        env = {
            **cli.env,
            "BACKUPD_REPOSITORY": f"file://{base / 'repo'}",
            "BACKUPD_STATE_DIR": str(base / "state"),
        }
        yield Cli(env=env, user="postgres")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    ("signum", "runner"),
    [(signal.SIGINT, "cli"), (signal.SIGTERM, "cli"), (signal.SIGINT, "postgres_cli")],
    ids=["sigint", "sigterm", "sigint-as-postgres"],
)
def test_an_interrupted_restore_create_drops_the_database_it_created(
    pg: PgCluster, pg_db: str, signum: int, runner: str, request: pytest.FixtureRequest
) -> None:
    cli: Cli = request.getfixturevalue(runner)
    role = _backup_owned_by_a_role(cli, pg, pg_db)
    target = f"restored_{pg_db}"
    with _role_locked(pg, role, target):
        proc = cli.popen("restore", "latest", "--to-database", pg.url(target), "--create")
        try:
            _wait_for_pg_restore_waiting(pg, target, proc)
            assert _database_exists(pg, target)
            proc.send_signal(signum)
            _out, err = proc.communicate(timeout=ENDS)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "created was dropped again" in err, err
    assert not _database_exists(pg, target)
    audit = cli.run("audit", "--json", check=True).json()
    restores = [a for a in audit if a["action"] == "restore"]
    assert restores and restores[-1]["outcome"] != "succeeded", restores


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_an_interrupted_restore_clean_into_an_existing_database_leaves_it_as_it_was(
    cli: Cli, pg: PgCluster, pg_db: str, signum: int
) -> None:
    """``--clean`` drops and recreates the backup's objects, in the restore's one transaction:
    interrupted, it is rolled back and the database holds what it held before."""
    role = _backup_owned_by_a_role(cli, pg, pg_db)
    target = pg.create_database()
    pg.execute(
        "create table items (id bigint primary key, body text); insert into items values (7, 'old')", target
    )
    try:
        with _role_locked(pg, role, target):
            proc = cli.popen("restore", "latest", "--to-database", pg.url(target), "--clean")
            try:
                _wait_for_pg_restore_waiting(pg, target, proc)
                proc.send_signal(signum)
                _out, err = proc.communicate(timeout=ENDS)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert proc.returncode == 130, err
        assert "dropped" not in err, err
        assert _database_exists(pg, target)
        assert pg.execute("select id, body from items", target) == [(7, "old")]
    finally:
        pg.drop_database(target)
