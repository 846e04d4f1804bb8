"""``RunCatalog`` on SQLAlchemy: the ``runs`` table, and reaping the runs and backups of
processes that died (contract in ``catalog/base.py``)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select, update

from contentflow_backupd.catalog.mapping import RUNS
from contentflow_backupd.catalog.models import BackupRow, RunRow
from contentflow_backupd.catalog.session import SqlSessions
from contentflow_backupd.errors import CatalogError
from contentflow_backupd.model import RunRecord, RunStatus, RunTrigger, Scope, utcnow

INTERRUPTED_ERROR = "process ended without finishing (killed or crashed)"


class SqlRuns(SqlSessions):
    def start_run(
        self,
        scope: Scope,
        job: str,
        trigger: RunTrigger,
        *,
        pid: int | None = None,
        host: str | None = None,
    ) -> RunRecord:
        row = new_run_row(scope, job, trigger, pid=pid, host=host)
        with self._session("start run", write=True) as session:
            session.add(row)
            session.flush()
            return RUNS.to_record(row)

    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        *,
        backup_id: str | None = None,
        error: str | None = None,
    ) -> None:
        changes = {
            "status": status,
            "finished_at": utcnow(),
            "backup_id": backup_id,
            "error": error,
        }
        with self._session("finish run", write=True) as session:
            result = session.connection().execute(update(RunRow).where(RunRow.id == run_id).values(changes))
            if result.rowcount == 0:
                raise CatalogError(f"catalog {self.url}: no run with id {run_id}")

    def list_runs(self, scope: Scope, limit: int | None = None, job: str | None = None) -> list[RunRecord]:
        query = (
            select(RunRow)
            .where(RunRow.repository_id == scope.repository_id, RunRow.cluster == scope.cluster)
            .order_by(RunRow.id.desc())
        )
        if job is not None:
            query = query.where(RunRow.job == job)
        if limit is not None:
            query = query.limit(max(limit, 0))
        with self._session("list runs", write=False) as session:
            return [RUNS.to_record(row) for row in reversed(session.scalars(query).all())]

    def mark_interrupted(self, is_alive: Callable[[int | None, str | None], bool]) -> list[str]:
        with self._session("find running backups and runs", write=False) as session:
            backups = session.execute(
                select(BackupRow.id, BackupRow.pid, BackupRow.host).where(BackupRow.status == "running")
            ).all()
            runs = session.execute(
                # A fleet daemon's run (``daemon_id`` set) is the fleet's to reap
                # (``reap_runs_of``, with its catch-up), never by pid.
                select(RunRow.id, RunRow.pid, RunRow.host).where(
                    RunRow.status == "running", RunRow.daemon_id.is_(None)
                )
            ).all()
        # ``is_alive`` runs outside any transaction: it may be slow, and it is not ours.
        dead_backups = [row.id for row in backups if not is_alive(row.pid, row.host)]
        dead_runs = [row.id for row in runs if not is_alive(row.pid, row.host)]
        if not dead_backups and not dead_runs:
            return []
        changes = {"status": "interrupted", "finished_at": utcnow(), "error": INTERRUPTED_ERROR}
        changed: list[str] = []
        with self._session("mark interrupted", write=True) as session:
            # ``status == running`` again: a row finished meanwhile is left alone.
            for backup_id in dead_backups:
                result = session.connection().execute(
                    update(BackupRow)
                    .where(BackupRow.id == backup_id, BackupRow.status == "running")
                    .values(changes)
                )
                if result.rowcount:
                    changed.append(backup_id)
            for run_id in dead_runs:
                session.execute(
                    update(RunRow).where(RunRow.id == run_id, RunRow.status == "running").values(changes)
                )
        return changed


def new_run_row(
    scope: Scope,
    job: str,
    trigger: RunTrigger,
    *,
    pid: int | None,
    host: str | None,
    daemon_id: str | None = None,
    lease_epoch: int | None = None,
) -> RunRow:
    """The row of a run starting now (``running``); ``daemon_id``/``lease_epoch`` for a run a
    fleet daemon starts under its lease (``SqlFleet.start_run_fenced``)."""
    return RunRow(
        job=job,
        trigger=trigger,
        status="running",
        started_at=utcnow(),
        pid=pid,
        host=host,
        repository_id=scope.repository_id,
        cluster=scope.cluster,
        daemon_id=daemon_id,
        lease_epoch=lease_epoch,
    )
