"""``migrate batch`` end to end: the installed command against real PostgreSQL, interrupted by
SIGTERM and SIGKILL and resumed, with every row changed exactly once."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contentflow_backupd.catalog.sql import open_catalog
from contentflow_backupd.migrate.batch_rules import InFlight, JobState
from tests.conftest import PASSPHRASE
from tests.support.cli import Cli
from tests.support.pg import PgCluster, running_cluster

ROWS = 5000
UPDATE = "UPDATE post SET n = n + 1 WHERE id >= :lo AND id < :hi"


@pytest.fixture(autouse=True)
def _no_leftover_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test that fails while a batch job runs must not leave the job running."""
    started: list[subprocess.Popen[str]] = []
    popen = Cli.popen

    def tracked(self: Cli, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = popen(self, *args, env=env)
        started.append(proc)
        return proc

    monkeypatch.setattr(Cli, "popen", tracked)
    yield
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _setup(pg: PgCluster, db: str, tmp_path: Path, sql: str = UPDATE) -> Path:
    # Keys with gaps and not starting at 1: batches are cut by key order, not by arithmetic.
    pg.execute(
        "create table post (id bigint primary key, n int not null default 0);"
        f" insert into post (id) select 7 + 3 * i from generate_series(1, {ROWS}) i",
        db,
    )
    path = tmp_path / "change.sql"
    path.write_text(sql + "\n")
    return path


def _counts(pg: PgCluster, db: str, table: str = "post") -> dict[int, int]:
    """How many rows have each value of the counter."""
    return {int(n): int(c) for n, c in pg.execute(f"select n, count(*) from {table} group by n", db)}


def _batch(sql: Path, *extra: str, table: str = "post", size: int = 500) -> list[str]:
    return ["migrate", "batch", "--sql", str(sql), "--table", table, "--batch-size", str(size), *extra]


def test_every_row_once_then_finished_job_is_not_rerun(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    sql = _setup(pg, pg_db, tmp_path)
    out = cli.ok_json(*_batch(sql))
    assert out["status"] == "finished"
    assert (out["batches"], out["rows"], out["resumed_from"]) == (10, ROWS, None)
    assert _counts(pg, pg_db) == {1: ROWS}

    again = cli.run(*_batch(sql), "--json")
    assert again.returncode == 0, again
    assert again.json()["status"] == "already_finished"
    assert (again.json()["rows"], again.json()["total_rows"]) == (0, ROWS)
    assert _counts(pg, pg_db) == {1: ROWS}

    restarted = cli.ok_json(*_batch(sql, "--restart"))
    assert restarted["status"] == "finished"
    assert _counts(pg, pg_db) == {2: ROWS}


def _wait_rows(
    pg: PgCluster, db: str, at_least: int, proc: subprocess.Popen[str], timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while (_counts(pg, db).get(1, 0)) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the batch job made no progress"
        time.sleep(0.02)


def test_sigterm_stops_after_the_batch_and_resumes(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    sql = _setup(pg, pg_db, tmp_path)
    proc = cli.popen(*_batch(sql, "--sleep", "0.1", "--json"))
    _wait_rows(pg, pg_db, 1000, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Resume with: contentflow-backupd migrate batch" in stderr
    summary = json.loads(stdout)
    assert summary["status"] == "interrupted"
    counts = _counts(pg, pg_db)
    assert set(counts) == {0, 1} and counts[1] == summary["total_rows"] < ROWS
    assert summary["total_rows"] % 500 == 0  # the current batch finished: whole batches only

    resumed = cli.ok_json(*_batch(sql))
    assert resumed["status"] == "finished"
    assert resumed["resumed_from"] == summary["last_key"]
    assert resumed["total_rows"] == ROWS
    assert _counts(pg, pg_db) == {1: ROWS}


def test_sigkill_at_random_moments_then_resume(cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path) -> None:
    sql = _setup(pg, pg_db, tmp_path)
    rng = random.Random(20240606)
    kills = 0
    for _trial in range(4):
        before = _counts(pg, pg_db).get(1, 0)
        if before == ROWS:
            break
        proc = cli.popen(*_batch(sql, "--sleep", "0.05", size=250))
        try:
            _wait_rows(pg, pg_db, before + 1, proc)
        except AssertionError:
            if proc.poll() == 0:
                break  # it finished before we could kill it
            raise
        time.sleep(rng.uniform(0.0, 0.08))
        proc.kill()
        proc.communicate(timeout=30)
        kills += 1
        assert set(_counts(pg, pg_db)) <= {0, 1}, "a row changed twice"
    assert kills >= 2
    final = cli.ok_json(*_batch(sql, size=250))
    assert final["status"] == "finished"
    assert final["total_rows"] == ROWS
    assert _counts(pg, pg_db) == {1: ROWS}


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_batch_left_in_flight_is_settled_by_the_server(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path, outcome: str
) -> None:
    """The process died between COMMIT and recording the batch as done (commit), or before its
    COMMIT reached the server (rollback): the checkpoint holds the batch in flight."""
    sql = _setup(pg, pg_db, tmp_path)
    proc = cli.popen(*_batch(sql, "--sleep", "0.1", "--json"))
    _wait_rows(pg, pg_db, 500, proc)
    proc.send_signal(signal.SIGTERM)
    stopped = json.loads(proc.communicate(timeout=30)[0])
    lo = stopped["last_key"]
    hi = pg.execute("select id from post where id >= %s order by id offset 500 limit 1", pg_db, (lo,))[0][0]
    with pg.connect(pg_db) as conn, conn.transaction(force_rollback=outcome == "rollback"):
        xid = conn.execute("select pg_current_xact_id()::text").fetchone()[0]  # type: ignore[index]
        rows = conn.execute("update post set n = n + 1 where id >= %s and id < %s", (lo, hi)).rowcount
        catalog = open_catalog(f"sqlite:///{tmp_path / 'state' / 'catalog.sqlite'}")
        cp = catalog.get_batch(stopped["job"])
        assert cp is not None
        state = JobState.from_details(cp.details)
        state.in_flight = InFlight(lo, hi, xid, rows, False)
        cp.details = state.to_details()
        catalog.save_batch(cp)
        catalog.close()
    resumed = cli.run(*_batch(sql), "--json")
    assert resumed.returncode == 0, resumed
    assert '"batch_in_flight_settled"' in resumed.stderr
    assert f'"status": "{"committed" if outcome == "commit" else "aborted"}"' in resumed.stderr
    assert resumed.json()["total_rows"] == ROWS
    assert _counts(pg, pg_db) == {1: ROWS}


def test_lock_timeout_retries_then_stops_with_checkpoint_kept(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    sql = _setup(pg, pg_db, tmp_path)
    with pg.connect(pg_db) as blocker, blocker.transaction():
        blocker.execute("lock table post in exclusive mode")  # reads pass, the UPDATE waits
        result = cli.run(*_batch(sql), env={"BACKUPD_MIGRATE__LOCK_TIMEOUT": "0.2s"}, timeout=60)
    assert result.returncode == 1, result
    assert "failed 4 times (lock_timeout, lock_timeout 0.2s)" in result.stderr
    assert "pg_locks" in result.stderr  # the hint says where to look
    assert result.stderr.count('"batch_retrying"') == 3
    assert _counts(pg, pg_db) == {0: ROWS}
    resumed = cli.ok_json(*_batch(sql))
    assert (resumed["status"], resumed["total_rows"]) == ("finished", ROWS)
    assert _counts(pg, pg_db) == {1: ROWS}


@pytest.mark.parametrize(
    ("sql", "table", "key", "message"),
    [
        ("UPDATE post SET n = n + 1 WHERE id >= :lo", "post", "id", "no :hi placeholder"),
        (UPDATE, "nosuch", "id", "table 'nosuch' does not exist"),
        (UPDATE, "post", "nosuch", "has no column 'nosuch'"),
        ("UPDATE post SET nn = 1 WHERE id >= :lo AND id < :hi", "post", "id", "does not compile"),
        (UPDATE + "; DELETE FROM post", "post", "id", "more than one statement"),
        ("UPDATE post SET n = 1 WHERE tag >= :lo AND tag < :hi", "post", "tag", "':hi IS NULL'"),
    ],
    ids=["missing-hi", "unknown-table", "unknown-key", "bad-sql", "two-statements", "text-key-no-null"],
)
def test_bad_input_exits_2_naming_the_problem(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path, sql: str, table: str, key: str, message: str
) -> None:
    path = _setup(pg, pg_db, tmp_path, sql)
    pg.execute("alter table post add column tag text", pg_db)
    result = cli.run(*_batch(path, "--key", key, table=table))
    assert result.returncode == 2, result
    assert message in result.stderr
    assert _counts(pg, pg_db) == {0: ROWS}


def test_text_key_uses_the_null_last_bound(cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path) -> None:
    """A key that is not an integer (Prisma's cuid/uuid ids, a quoted mixed-case table)."""
    pg.execute(
        'create table "Post" (id text primary key, n int not null default 0);'
        ' insert into "Post" (id) select md5(i::text) from generate_series(1, 1234) i',
        pg_db,
    )
    path = tmp_path / "change.sql"
    path.write_text("UPDATE \"Post\" SET n = n + 1 -- :lo in a comment is no placeholder\n"
                    "WHERE id >= :lo AND (:hi IS NULL OR id < :hi) AND id <> ':hi';\n")  # fmt: skip
    out = cli.ok_json(*_batch(path, table="public.Post", size=100))
    assert (out["status"], out["batches"], out["rows"]) == ("finished", 13, 1234)
    assert _counts(pg, pg_db, '"Post"') == {1: 1234}


def test_empty_table_finishes_at_once(cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path) -> None:
    sql = _setup(pg, pg_db, tmp_path)
    pg.execute("delete from post", pg_db)
    out = cli.ok_json(*_batch(sql))
    assert (out["status"], out["batches"], out["rows"], out["last_key"]) == ("finished", 0, 0, None)


@pytest.fixture(scope="module")
def broken_archive() -> Iterator[PgCluster]:
    """A cluster whose archive_command always fails: its archive lag only grows."""
    with running_cluster(conf={"archive_mode": "on", "archive_command": "'false'"}) as cluster:
        yield cluster


def test_max_lag_waits_and_logs(broken_archive: PgCluster, tmp_path: Path) -> None:
    pg = broken_archive
    db = pg.create_database()
    sql = _setup(pg, db, tmp_path)
    pg.execute("select pg_switch_wal()")
    deadline = time.monotonic() + 30
    while pg.execute("select failed_count from pg_stat_archiver")[0][0] == 0:
        assert time.monotonic() < deadline, "the archiver never tried"
        time.sleep(0.1)
    cli = Cli(
        env={
            "BACKUPD_DATABASE_URL": pg.url(db),
            "BACKUPD_STATE_DIR": str(tmp_path / "state"),
            "BACKUPD_REPOSITORY": f"file://{tmp_path / 'repo'}",
            "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
        }
    )
    proc = cli.popen(*_batch(sql, "--max-lag", "1MB", "--json"))
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if '"batch_throttled"' in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert seen.wait(30), "".join(lines)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    reader.join(10)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    assert proc.returncode == 130
    throttled = json.loads(next(line for line in lines if '"batch_throttled"' in line))
    assert throttled["archive_lag_bytes"] > throttled["max_lag_bytes"] == 1024 * 1024
    assert json.loads(stdout)["batches"] == 0
    assert _counts(pg, db) == {0: ROWS}
