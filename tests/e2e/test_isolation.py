"""One cluster's trouble stays its own (docs/daemon.md "Isolation"): a logical backup behind a
table lock fails after ``jobs.lock_wait_timeout`` instead of waiting forever.

Real PostgreSQL, real ``pg_dump``, the installed command; a session holding
``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` in an open transaction is the hang. No timing is
asserted: the waits' timeouts are the failure condition of something that does not end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.cli import Cli
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg


def _table(pg: PgCluster, db: str) -> None:
    pg.execute("create table items (id int primary key, v text)", db)
    pg.execute("insert into items select g, md5(g::text) from generate_series(1, 1000) g", db)


@contextmanager
def _locked(pg: PgCluster, db: str) -> Iterator[None]:
    """A session holding ``items`` in ACCESS EXCLUSIVE mode in an open transaction."""
    blocker = pg.connect(db)
    blocker.execute("begin")
    blocker.execute("lock table items in access exclusive mode")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


def test_a_logical_backup_behind_a_lock_fails_after_the_lock_wait_timeout(
    cli: Cli, pg: PgCluster, pg_db: str
) -> None:
    _table(pg, pg_db)
    cli.run("init", check=True)
    first = cli.ok_json("backup", "--kind", "full")
    with _locked(pg, pg_db):
        res = cli.run("backup", "--kind", "full", env={"BACKUPD_JOBS__LOCK_WAIT_TIMEOUT": "2s"}, timeout=120)
    assert res.returncode != 0, res
    assert "gave up waiting for a table lock after 2s" in res.stderr, res
    assert "BACKUPD_JOBS__LOCK_WAIT_TIMEOUT" in res.stderr, res
    runs = cli.ok_json("runs", "list")  # oldest first
    assert [(r["job"], r["status"]) for r in runs] == [("full", "succeeded"), ("full", "failed")], runs
    assert "table lock" in runs[-1]["error"]
    assert [b["id"] for b in cli.ok_json("backup", "list")] == [first["id"]]  # no half backup counts
    attempts = cli.ok_json("backup", "list", "--attempts")
    assert [b["status"] for b in attempts] == ["succeeded", "failed"], attempts
