"""The Catalog contract, run against SqlCatalog on SQLite and on PostgreSQL (see conftest)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from contentflow_backupd.catalog.base import Catalog
from contentflow_backupd.catalog.models import VERSION_TABLE, Base
from contentflow_backupd.catalog.sql import INTERRUPTED_ERROR, SqlCatalog, head_revision, open_catalog
from contentflow_backupd.errors import CatalogError
from contentflow_backupd.model import BackupRecord, BackupStatus, Scope
from tests.support.pg import PgCluster

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_ID = "repo-test"
"""The repository id of the scope these tests read and write."""


def backup(
    backup_id: str,
    *,
    cluster: str = "main",
    status: BackupStatus = "succeeded",
    at: datetime = T0,
    **changes: Any,
) -> BackupRecord:
    record = BackupRecord(
        id=backup_id,
        cluster=cluster,
        kind="full",
        mode="logical",
        status=status,
        generation="gen-1",
        started_at=at,
        repository_id=REPO_ID,
    )
    return record.copy(**changes)


def chained_messages(error: BaseException) -> str:
    """The messages of ``error`` and of every exception a traceback would show with it."""
    messages = []
    current: BaseException | None = error
    while current is not None:
        messages.append(repr(current))
        if current.__cause__ is None and current.__suppress_context__:
            break
        current = current.__cause__ or current.__context__
    return "\n".join(messages)


def sqla_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


# -- backups -------------------------------------------------------------------------------


def test_sql_catalog_is_a_catalog(catalog: SqlCatalog) -> None:
    conforming: Catalog = catalog
    assert conforming.get_backup("nope") is None


def test_upsert_then_get_round_trips_every_field(catalog: Catalog) -> None:
    record = backup(
        "b1",
        parent_id="b0",
        database="app",
        finished_at=T0 + timedelta(minutes=3),
        source_bytes=2**40,
        stored_bytes=12345,
        chunks_total=10,
        chunks_new=3,
        manifest_key="manifests/b1.json",
        error=None,
        pid=4242,
        host="db-host",
        details={"start_lsn": "0/1000028", "timeline": 1, "nested": {"list": [1, 2.5, None]}},
    )
    catalog.upsert_backup(record)
    assert catalog.get_backup("b1") == record
    assert catalog.get_backup("missing") is None


def test_upsert_replaces_every_field(catalog: Catalog) -> None:
    catalog.upsert_backup(backup("b1", status="running", pid=1, details={"a": 1}))
    final = backup("b1", status="failed", error="boom", finished_at=T0 + timedelta(seconds=5), details={})
    catalog.upsert_backup(final)
    assert catalog.get_backup("b1") == final
    assert catalog.list_backups(Scope(REPO_ID, "main")) == [final]


def test_timezones_go_in_any_zone_and_come_out_utc(catalog: Catalog) -> None:
    plus_two = timezone(timedelta(hours=2))
    started = datetime(2026, 7, 1, 23, 30, 0, 1, tzinfo=plus_two)
    finished = datetime(2026, 7, 1, 14, 0, 0, 999999, tzinfo=timezone(timedelta(hours=-7)))
    catalog.upsert_backup(backup("tz", at=started, finished_at=finished))
    got = catalog.get_backup("tz")
    assert got is not None
    assert got.started_at == started
    assert got.finished_at == finished
    assert got.started_at.tzinfo is UTC
    assert got.finished_at is not None
    assert got.finished_at.tzinfo is UTC
    assert got.started_at.hour == 21
    assert got.started_at.microsecond == 1


def test_details_json_round_trip(catalog: Catalog) -> None:
    details = {
        "start_lsn": "16/B374D848",
        "timeline": 3,
        "ratio": 0.125,
        "ok": True,
        "none": None,
        "unicode": "zażółć ✓",
        "tables": [{"name": "a", "rows": 10}, {"name": "b", "rows": 0}],
    }
    catalog.upsert_backup(backup("j", details=details))
    got = catalog.get_backup("j")
    assert got is not None
    assert got.details == details


def test_list_backups_oldest_first_then_by_id_and_per_cluster(catalog: Catalog) -> None:
    catalog.upsert_backup(backup("c", at=T0 + timedelta(hours=1)))
    catalog.upsert_backup(backup("b", at=T0))
    catalog.upsert_backup(backup("a", at=T0))
    catalog.upsert_backup(backup("z", at=T0 - timedelta(microseconds=1)))
    catalog.upsert_backup(backup("other", cluster="other", at=T0 - timedelta(days=1)))
    assert [r.id for r in catalog.list_backups(Scope(REPO_ID, "main"))] == ["z", "a", "b", "c"]
    assert [r.id for r in catalog.list_backups(Scope(REPO_ID, "other"))] == ["other"]
    assert catalog.list_backups(Scope(REPO_ID, "nobody")) == []


def test_list_backups_filters_by_status(catalog: Catalog) -> None:
    catalog.upsert_backup(backup("ok", status="succeeded", at=T0))
    catalog.upsert_backup(backup("bad", status="failed", at=T0 + timedelta(1)))
    catalog.upsert_backup(backup("run", status="running", at=T0 + timedelta(2)))
    catalog.upsert_backup(backup("int", status="interrupted", at=T0 + timedelta(3)))

    def ids(statuses: list[BackupStatus] | None) -> list[str]:
        return [r.id for r in catalog.list_backups(Scope(REPO_ID, "main"), statuses)]

    assert ids(None) == ["ok", "bad", "run", "int"]
    assert ids(["succeeded"]) == ["ok"]
    assert ids(["failed", "interrupted"]) == ["bad", "int"]
    assert ids([]) == []
    running: list[BackupStatus] = ["running"]
    assert [r.id for r in catalog.list_backups(Scope(REPO_ID, "main"), iter(running))] == [
        "run"
    ]  # any iterable


def test_delete_backup_and_missing_id_is_not_an_error(catalog: Catalog) -> None:
    catalog.upsert_backup(backup("a"))
    catalog.upsert_backup(backup("b", at=T0 + timedelta(1)))
    catalog.delete_backup("a")
    catalog.delete_backup("a")
    catalog.delete_backup("never-existed")
    assert catalog.get_backup("a") is None
    assert [r.id for r in catalog.list_backups(Scope(REPO_ID, "main"))] == ["b"]


def test_replace_backups(catalog: Catalog) -> None:
    catalog.upsert_backup(backup("gone", status="succeeded", at=T0))
    catalog.upsert_backup(backup("failed-kept", status="failed", at=T0 + timedelta(1)))
    catalog.upsert_backup(backup("running-replaced", status="running", at=T0 + timedelta(2)))
    catalog.upsert_backup(backup("other-cluster", cluster="other", status="succeeded"))

    replaced = backup("running-replaced", status="succeeded", at=T0 + timedelta(2), chunks_new=7)
    new = backup("new", status="succeeded", at=T0 + timedelta(3), details={"k": "v"})
    catalog.replace_backups(Scope(REPO_ID, "main"), [replaced, new])

    assert catalog.list_backups(Scope(REPO_ID, "main")) == [
        backup("failed-kept", status="failed", at=T0 + timedelta(1)),
        replaced,
        new,
    ]
    assert [r.id for r in catalog.list_backups(Scope(REPO_ID, "other"))] == ["other-cluster"]

    catalog.replace_backups(Scope(REPO_ID, "main"), [])
    assert [r.id for r in catalog.list_backups(Scope(REPO_ID, "main"))] == ["failed-kept"]


# -- runs ----------------------------------------------------------------------------------


def test_start_finish_and_list_runs(catalog: Catalog) -> None:
    before = datetime.now(UTC)
    first = catalog.start_run(Scope(REPO_ID, "main"), "backup-main", "scheduled", pid=10, host="h1")
    second = catalog.start_run(Scope(REPO_ID, "main"), "verify", "manual")
    assert first.id != second.id
    assert (first.job, first.trigger, first.status, first.pid, first.host) == (
        "backup-main",
        "scheduled",
        "running",
        10,
        "h1",
    )
    assert first.started_at.tzinfo is UTC
    assert before <= first.started_at <= datetime.now(UTC)
    assert first.finished_at is None

    catalog.finish_run(first.id, "succeeded", backup_id="b1")
    catalog.finish_run(second.id, "failed", error="bucket gone")
    runs = catalog.list_runs(Scope(REPO_ID, "main"))
    assert [r.id for r in runs] == [first.id, second.id]
    done, failed = runs
    assert (done.status, done.backup_id, done.error) == ("succeeded", "b1", None)
    assert (failed.status, failed.backup_id, failed.error) == ("failed", None, "bucket gone")
    assert done.finished_at is not None
    assert done.finished_at.tzinfo is UTC
    assert done.started_at == first.started_at
    assert done.finished_at >= done.started_at


def test_list_runs_limit_keeps_the_newest_oldest_first(catalog: Catalog) -> None:
    ids = [catalog.start_run(Scope(REPO_ID, "main"), f"job{i}", "catch-up").id for i in range(5)]
    assert [r.id for r in catalog.list_runs(Scope(REPO_ID, "main"))] == ids
    assert [r.id for r in catalog.list_runs(Scope(REPO_ID, "main"), limit=2)] == ids[-2:]
    assert [r.id for r in catalog.list_runs(Scope(REPO_ID, "main"), limit=10)] == ids
    assert catalog.list_runs(Scope(REPO_ID, "main"), limit=0) == []


def test_list_runs_of_one_job_filters_before_the_limit(catalog: Catalog) -> None:
    """``runs list --job J --limit N``: the newest N runs of J, not J's runs among the newest N."""
    scope = Scope(REPO_ID, "main")
    fulls = [catalog.start_run(scope, "full", "scheduled").id for _ in range(2)]
    others = [catalog.start_run(scope, "incremental", "scheduled").id for _ in range(3)]
    assert [r.id for r in catalog.list_runs(scope, limit=2, job="full")] == fulls
    assert [r.id for r in catalog.list_runs(scope, limit=1, job="full")] == fulls[-1:]
    assert [r.id for r in catalog.list_runs(scope, job="incremental")] == others
    assert catalog.list_runs(scope, limit=2, job="verify") == []


# -- read-only opening -----------------------------------------------------------------------


def test_a_read_only_open_of_a_missing_sqlite_catalog_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "catalog.sqlite"
    catalog = open_catalog(f"sqlite:///{path}", read_only=True)
    try:
        assert catalog.list_runs(Scope(REPO_ID, "main")) == []
        assert catalog.list_backups(Scope(REPO_ID, "main")) == []
    finally:
        catalog.close()
    assert not path.parent.exists()


def test_a_read_only_open_refuses_an_older_schema_and_changes_nothing(catalog_url: str, backend: str) -> None:
    from tests.catalog.test_scope import catalog_at_0007

    catalog_at_0007(catalog_url)
    database = catalog_url.removeprefix("sqlite:///") if backend == "sqlite" else None
    before = Path(database).read_bytes() if database else None
    with pytest.raises(CatalogError, match="revision 0007") as raised:
        open_catalog(catalog_url, read_only=True)
    assert "catalog upgrade" in (raised.value.hint or "")
    if database:
        assert Path(database).read_bytes() == before
    opened = open_catalog(catalog_url)  # a writing command upgrades it
    opened.close()
    open_catalog(catalog_url, read_only=True).close()


def test_a_read_only_open_of_a_catalog_without_schema_reads_empty_and_creates_nothing(
    catalog_url: str, backend: str
) -> None:
    """A new catalog database (reachable, no tables yet: `status` before any backup) reads as
    empty, not as an error, and stays without tables."""
    if backend == "sqlite":
        path = Path(catalog_url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True)
        sqlite3.connect(path).close()  # an empty file: a database without any schema
    catalog = open_catalog(catalog_url, read_only=True)
    try:
        assert catalog.list_runs(Scope(REPO_ID, "main")) == []
        assert catalog.list_backups(Scope(REPO_ID, "main")) == []
    finally:
        catalog.close()
    probe = SqlCatalog(catalog_url, read_only=True)
    try:
        assert probe.is_new()
    finally:
        probe.close()


def test_a_read_only_open_of_an_unreachable_catalog_says_it_cannot_connect() -> None:
    with pytest.raises(CatalogError, match="cannot connect") as raised:
        open_catalog("postgresql://nobody@127.0.0.1:1/none?connect_timeout=5", read_only=True)
    assert "catalog upgrade" not in str(raised.value) + (raised.value.hint or "")


def test_finish_unknown_run_is_a_catalog_error(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="no run with id 999"):
        catalog.finish_run(999, "succeeded")


def test_mark_interrupted(catalog: Catalog) -> None:
    catalog.upsert_backup(backup("alive", status="running", pid=1, host="h"))
    catalog.upsert_backup(backup("dead", status="running", pid=2, host="h", at=T0 + timedelta(1)))
    catalog.upsert_backup(backup("done", status="succeeded", pid=2, host="h", at=T0))
    alive_run = catalog.start_run(Scope(REPO_ID, "main"), "j", "scheduled", pid=1, host="h")
    dead_run = catalog.start_run(Scope(REPO_ID, "main"), "j", "scheduled", pid=2, host="h")
    finished_run = catalog.start_run(Scope(REPO_ID, "main"), "j", "scheduled", pid=2, host="h")
    catalog.finish_run(finished_run.id, "succeeded")
    calls: list[tuple[int | None, str | None]] = []

    def is_alive(pid: int | None, host: str | None) -> bool:
        calls.append((pid, host))
        return pid == 1

    before = datetime.now(UTC)
    assert catalog.mark_interrupted(is_alive) == ["dead"]
    assert sorted(calls) == [(1, "h"), (1, "h"), (2, "h"), (2, "h")]

    dead = catalog.get_backup("dead")
    assert dead is not None
    assert (dead.status, dead.error) == ("interrupted", INTERRUPTED_ERROR)
    assert dead.finished_at is not None
    assert dead.finished_at >= before
    assert dead.finished_at.tzinfo is UTC
    assert catalog.get_backup("alive") == backup("alive", status="running", pid=1, host="h")
    assert catalog.get_backup("done") == backup("done", status="succeeded", pid=2, host="h")
    runs = {r.id: r for r in catalog.list_runs(Scope(REPO_ID, "main"))}
    assert runs[alive_run.id].status == "running"
    assert (runs[dead_run.id].status, runs[dead_run.id].error) == ("interrupted", INTERRUPTED_ERROR)
    assert runs[dead_run.id].finished_at is not None
    assert (runs[finished_run.id].status, runs[finished_run.id].error) == ("succeeded", None)

    assert catalog.mark_interrupted(lambda pid, host: False) == ["alive"]
    assert catalog.mark_interrupted(lambda pid, host: False) == []


def test_close_is_idempotent(catalog_url: str) -> None:
    opened = open_catalog(catalog_url)
    opened.close()
    opened.close()


# -- schema and migrations -----------------------------------------------------------------


def test_migrations_are_idempotent_and_match_the_models(catalog_url: str) -> None:
    with open_catalog(catalog_url) as first:
        first.upsert_backup(backup("kept"))
    with open_catalog(catalog_url) as second:
        assert second.get_backup("kept") == backup("kept")
    engine = create_engine(sqla_url(catalog_url))
    try:
        with engine.connect() as conn:
            assert {"backups", "runs", "catalog_meta", VERSION_TABLE} <= set(inspect(conn).get_table_names())
            versions = conn.execute(text(f"select version_num from {VERSION_TABLE}")).all()
            assert versions == [(head_revision(),)]
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_sqlite_catalog_uses_wal(tmp_path: Path) -> None:
    with open_catalog(f"sqlite:///{tmp_path}/c.db"):
        pass
    engine = create_engine(f"sqlite:///{tmp_path}/c.db")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_unusable_sqlite_path_is_a_catalog_error(tmp_path: Path) -> None:
    (tmp_path / "a-directory.db").mkdir()
    with pytest.raises(CatalogError, match=r"a-directory\.db"):
        open_catalog(f"sqlite:///{tmp_path}/a-directory.db")


def test_unsupported_url_is_a_catalog_error() -> None:
    with pytest.raises(CatalogError, match="unsupported database 'oracle'") as unsupported:
        SqlCatalog("oracle://user:secret@host/db")
    assert "oracle://user:***@host/db" in str(unsupported.value)
    with pytest.raises(CatalogError, match="invalid catalog URL") as invalid:
        SqlCatalog("not a url :secret")
    for caught in (unsupported, invalid):
        assert "secret" not in chained_messages(caught.value)


@pytest.mark.pg
def test_wrong_postgresql_password_is_a_catalog_error_without_the_password(pg: PgCluster) -> None:
    secret = "Wr0ng-S3cret-pw"
    with pytest.raises(CatalogError) as caught:
        open_catalog(pg.url("postgres", password=secret))
    error = caught.value
    shown = "".join(traceback.format_exception(error)) + chained_messages(error)
    assert secret not in shown
    assert f"postgresql://postgres:***@127.0.0.1:{pg.port}/postgres" in str(error)
    assert "password authentication failed" in str(error)


@pytest.mark.pg
def test_postgresql_session_timezone_does_not_matter(pg_db: str, pg: PgCluster) -> None:
    url = pg.url(pg_db) + "?options=-c%20TimeZone%3DAsia/Tokyo"
    with open_catalog(url) as catalog:
        catalog.upsert_backup(backup("tz"))
        got = catalog.get_backup("tz")
    assert got is not None
    assert got.started_at == T0
    assert got.started_at.tzinfo is UTC


# -- several processes ---------------------------------------------------------------------

WORKER = """
import sys, time
from pathlib import Path
from datetime import UTC, datetime
from contentflow_backupd.catalog.sql import open_catalog
from contentflow_backupd.model import BackupRecord, Scope

REPO_ID = "repo-test"

url, tag, count, go = sys.argv[1:]
Path(go + "." + tag).touch()
while not Path(go).exists():
    time.sleep(0.002)
catalog = open_catalog(url)
for i in range(int(count)):
    started = datetime.now(UTC)
    run = catalog.start_run(Scope(REPO_ID, "main"), f"job-{tag}", "scheduled")
    catalog.upsert_backup(BackupRecord(
        id=f"{tag}-{i:04d}", cluster="main", kind="full", mode="logical", status="succeeded",
        generation=tag, started_at=started, details={"i": i}, repository_id=REPO_ID,
    ))
    catalog.finish_run(run.id, "succeeded", backup_id=f"{tag}-{i:04d}")
catalog.close()
"""


def run_together(url: str, tmp_path: Path, tags: list[str], count: int) -> None:
    """Start one worker process per tag, release them at the same moment, wait for all."""
    go = str(tmp_path / "go")
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", WORKER, url, tag, str(count), go],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in tags
    ]
    try:
        # No deadline of our own: a loaded machine may take long to start Python; pytest-timeout
        # (the test's mark) is the guard against a hang.
        while not all(Path(f"{go}.{tag}").exists() for tag in tags):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        Path(go).touch()
        for proc in procs:
            out, err = proc.communicate()
            assert proc.returncode == 0, f"worker failed:\n{out}\n{err}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def assert_all_written(url: str, tags: list[str], count: int) -> None:
    with open_catalog(url) as catalog:
        ids = {r.id for r in catalog.list_backups(Scope(REPO_ID, "main"))}
        assert ids == {f"{tag}-{i:04d}" for tag in tags for i in range(count)}
        runs = catalog.list_runs(Scope(REPO_ID, "main"))
        assert len(runs) == len(tags) * count
        assert all(r.status == "succeeded" and r.backup_id for r in runs)
        assert len({r.id for r in runs}) == len(runs)


@pytest.mark.timeout(1800)  # 2 x 200 transactions: minutes on a machine loaded many times over
def test_two_processes_writing_at_once(catalog_url: str, tmp_path: Path) -> None:
    open_catalog(catalog_url).close()  # migrated: the workers only write
    tags = ["p1", "p2"]
    run_together(catalog_url, tmp_path, tags, count=200)
    assert_all_written(catalog_url, tags, 200)


def test_processes_opening_a_fresh_catalog_at_once(
    new_catalog_url: Callable[[], str], tmp_path: Path
) -> None:
    url = new_catalog_url()
    tags = ["m1", "m2", "m3"]
    run_together(url, tmp_path, tags, count=3)
    assert_all_written(url, tags, 3)


def test_head_revision_matches_alembics_scripts() -> None:
    """open_catalog skips Alembic when the catalog is at head_revision(): it must be Alembic's head."""
    from alembic.script import ScriptDirectory

    from contentflow_backupd.catalog.sql import alembic_config, head_revision

    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [head_revision()]
