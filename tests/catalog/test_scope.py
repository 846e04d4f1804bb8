"""Revision 0008 (scope): a catalog at 0007 holding rows upgrades, its old rows are attributed to
a repository by their manifests (and what names them), the rest stays unscoped and unreported;
a catalog shared by two repositories and two clusters keeps each one's rows apart."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from contentflow_backupd.catalog.base import DeletionRecord
from contentflow_backupd.catalog.sql import SqlCatalog, alembic_config, open_catalog
from contentflow_backupd.model import BackupRecord, Scope
from contentflow_backupd.storage.memory import MemoryStorage

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
KNOWN = "20261120T020000Z-full-aaaaaa"
KNOWN_INCR = "20261120T080000Z-incr-bbbbbb"
FOREIGN = "20261120T030000Z-full-cccccc"
"""A backup of another repository (its manifest is not in ours)."""


def _engine_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def catalog_at_0007(url: str, full_ids: list[str] | None = None) -> None:
    """A catalog at revision 0007 (before scope) holding backups, their runs, a run without a
    backup, a drill, a verification state and a corrupt-object record, all of cluster ``main``;
    ``full_ids``: the full backups (default ``KNOWN`` and ``FOREIGN`` with the incremental
    ``KNOWN_INCR``)."""
    rows = (
        [(KNOWN, "full"), (KNOWN_INCR, "incremental"), (FOREIGN, "full")]
        if full_ids is None
        else [(bid, "full") for bid in full_ids]
    )
    from alembic import command

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(_engine_url(url))
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection=connection), "0007")
        with engine.begin() as connection:
            for i, (bid, kind) in enumerate(rows):
                connection.execute(
                    text(
                        "insert into backups (id, cluster, kind, mode, status, generation, started_at, "
                        "finished_at, source_bytes, stored_bytes, chunks_total, chunks_new, details) values "
                        "(:id, 'main', :kind, 'logical', :status, :gen, :at, :at, 10, 5, 1, 1, '{}')"
                    ),
                    {
                        "id": bid,
                        "kind": kind,
                        "status": "succeeded",
                        "gen": bid,
                        "at": T0 + timedelta(hours=i),
                    },
                )
            for job, bid in [*((kind, bid) for bid, kind in rows), ("verify", None)]:
                connection.execute(
                    text(
                        "insert into runs (job, trigger, status, started_at, finished_at, backup_id) "
                        "values (:job, 'scheduled', 'succeeded', :at, :at, :bid)"
                    ),
                    {"job": job, "bid": bid, "at": T0},
                )
            connection.execute(
                text(
                    "insert into drills (id, cluster, mode, backup_id, target, status, started_at, checks) "
                    "values ('d1', 'main', 'logical', :bid, 'the backup', 'succeeded', :at, '[]')"
                ),
                {"bid": rows[0][0], "at": T0},
            )
            connection.execute(
                text(
                    "insert into verify_state (cluster, sweep_objects_total, verified_backups) "
                    "values ('main', 7, '[]')"
                )
            )
            connection.execute(
                text(
                    "insert into corrupt_objects (cluster, key, backup_ids, problem, detected_at) "
                    "values ('main', 'main/chunks/x/00/y', '[]', 'missing', :at)"
                ),
                {"at": T0},
            )
    finally:
        engine.dispose()


def _repository_with(*ids: str) -> MemoryStorage:
    storage = MemoryStorage()
    for bid in ids:
        storage.put(f"main/backups/{bid}.json", io.BytesIO(b"stand-in for a manifest"))
    return storage


def test_a_catalog_at_0007_with_rows_upgrades_and_old_rows_are_attributed_by_their_manifests(
    catalog_url: str,
) -> None:
    from contentflow_backupd.ops.repo.scope import adopt_old_rows

    catalog_at_0007(catalog_url)
    with open_catalog(catalog_url) as catalog:  # upgrades to 0008
        engine = catalog.engine
        for table in ("backups", "runs", "drills", "deletions", "verify_state", "corrupt_objects"):
            columns = {c["name"] for c in inspect(engine).get_columns(table)}
            assert "repository_id" in columns, table
        assert "cluster" in {c["name"] for c in inspect(engine).get_columns("runs")}
        ours = Scope("repo-ours", "main")
        # Before attribution nothing old is anybody's.
        assert catalog.list_backups(ours) == [] and catalog.list_runs(ours) == []
        assert catalog.has_unscoped("main")

        assert adopt_old_rows(_repository_with(KNOWN, KNOWN_INCR), catalog, ours) == 2
        assert [b.id for b in catalog.list_backups(ours)] == [KNOWN, KNOWN_INCR]
        assert all(b.repository_id == "repo-ours" for b in catalog.list_backups(ours))
        assert [r.backup_id for r in catalog.list_runs(ours)] == [KNOWN, KNOWN_INCR]
        assert [d.id for d in catalog.list_drills(ours)] == ["d1"]
        # Unknown rows stay unscoped: never reported as ours.
        assert catalog.get_verify_state(ours).sweep_objects_total == 0
        assert catalog.list_corrupt(ours) == []
        assert adopt_old_rows(_repository_with(KNOWN, KNOWN_INCR), catalog, ours) == 0  # once

        # The other repository sharing the catalog adopts its own, and sees nothing of ours.
        theirs = Scope("repo-theirs", "main")
        assert adopt_old_rows(_repository_with(FOREIGN), catalog, theirs) == 1
        assert [b.id for b in catalog.list_backups(theirs)] == [FOREIGN]
        assert [r.backup_id for r in catalog.list_runs(theirs)] == [FOREIGN]
        assert [b.id for b in catalog.list_backups(ours)] == [KNOWN, KNOWN_INCR]
        assert not catalog.has_unscoped("main")
        # The verify run without a backup stays nobody's.
        assert all(r.job != "verify" for r in catalog.list_runs(ours) + catalog.list_runs(theirs))


def test_two_repositories_and_two_clusters_in_one_catalog_are_kept_apart(catalog: SqlCatalog) -> None:
    scopes = [Scope(r, c) for r in ("repo-a", "repo-b") for c in ("main", "other")]
    for i, scope in enumerate(scopes):
        bid = f"2026112{i}T020000Z-full-00000{i}"
        catalog.upsert_backup(
            BackupRecord(
                id=bid,
                cluster=scope.cluster,
                kind="full",
                mode="logical",
                status="succeeded",
                generation=bid,
                started_at=T0,
                repository_id=scope.repository_id,
            )
        )
        run = catalog.start_run(scope, "full", "manual")
        catalog.finish_run(run.id, "succeeded", backup_id=bid)
        if scope == Scope("repo-a", "main"):
            catalog.add_restore_point(scope, f"point-{i}", "0/3000100", 1, T0)
        catalog.add_deletions(
            [
                DeletionRecord(
                    T0,
                    scope.cluster,
                    "wal",
                    f"00000001000000000000000{i}",
                    1,
                    "old",
                    run.id,
                    None,
                    scope.repository_id,
                )
            ]
        )
        catalog.record_corrupt(scope, f"{scope.cluster}/chunks/g/00/{i}", [bid], "missing")
    for i, scope in enumerate(scopes):
        assert [b.id for b in catalog.list_backups(scope)] == [f"2026112{i}T020000Z-full-00000{i}"]
        (run,) = catalog.list_runs(scope)
        assert run.backup_id == f"2026112{i}T020000Z-full-00000{i}" and run.cluster == scope.cluster
        assert run.repository_id == scope.repository_id
        assert [d.name for d in catalog.list_deletions(scope)] == [f"00000001000000000000000{i}"]
        assert catalog.count_deleted_wal_segments(scope) == 1
        assert [c.key for c in catalog.list_corrupt(scope)] == [f"{scope.cluster}/chunks/g/00/{i}"]
    # A restore point of repository a is not repository b's.
    assert catalog.get_restore_point(Scope("repo-a", "main"), "point-0") is not None
    assert catalog.get_restore_point(Scope("repo-b", "main"), "point-0") is None
    assert catalog.list_restore_points(Scope("repo-b", "main")) == []
