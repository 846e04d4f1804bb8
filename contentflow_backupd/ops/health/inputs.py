"""What the health report is made of: the catalog's runs and backups, the WAL archive, the
server's WAL position, and probes of the dependencies (``ops.health.evaluate`` evaluates them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, Protocol

from contentflow_backupd.catalog.base import Catalog, HealthCatalog
from contentflow_backupd.errors import BackupdError, ObjectNotFound, RepositoryNotFound
from contentflow_backupd.model import BACKUP_KINDS, Scope, parse_iso
from contentflow_backupd.ops.health.evaluate import (
    RUN_HISTORY,
    DependencyState,
    DrillState,
    HealthInputs,
    KindState,
    RecoveryState,
    ServerWal,
    WalState,
)
from contentflow_backupd.repository.layout import REPO_FILE
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.storage.base import Storage
from contentflow_backupd.wal import classify, parse_segment, timeline_of, written_after


# -- collection ------------------------------------------------------------------------------
def collect_health_inputs(
    catalog: HealthCatalog | None,
    scope: Scope | None,
    *,
    dependencies: Mapping[str, DependencyState | bool] | None = None,
    wal: WalState | None = None,
    leader: bool | None = None,
    run_history: int = RUN_HISTORY,
    drills: bool = False,
    recovery: RecoveryState | None = None,
) -> HealthInputs:
    """Read the per-kind state from the catalog (``kinds`` None when ``catalog`` or ``scope`` is
    None: no catalog, or a repository whose id is not known); the other arguments pass through (a
    bare ``bool`` dependency becomes ``DependencyState(bool)``).

    Everything comes from rows of ``scope`` only (this repository and cluster): last successes
    from its ``succeeded`` backups (by ``finished_at``); last run statuses from its newest
    ``run_history`` runs, whose ``job`` is the backup kind asked for. Open corrupt objects of the
    scope. With ``drills`` (the
    restore_test schedule is on), the newest finished ``restore_test`` run. ``recovery`` passes
    through. Catalog errors propagate (``CatalogError``)."""
    deps = {
        k: v if isinstance(v, DependencyState) else DependencyState(v)
        for k, v in (dependencies or {}).items()
    }
    if catalog is None or scope is None:
        return HealthInputs(kinds=None, wal=wal, dependencies=deps, leader=leader, recovery=recovery)
    newest: dict[str, datetime] = {}
    for b in catalog.list_backups(scope, ["succeeded"]):
        end = b.finished_at or b.started_at
        for key in {b.kind, "any"}:
            if key not in newest or end > newest[key]:
                newest[key] = end
    runs = catalog.list_runs(scope, run_history)
    kinds: dict[str, KindState] = {}
    for kind in BACKUP_KINDS:
        last = next(
            (r for r in reversed(runs) if r.job == kind and r.status in ("succeeded", "failed")), None
        )
        success = newest.get("full" if kind == "full" else "any")
        if last is None:
            kinds[kind] = KindState(last_success_at=success)
            continue
        status: Literal["succeeded", "failed"] = "failed" if last.status == "failed" else "succeeded"
        kinds[kind] = KindState(
            last_success_at=success,
            last_run_status=status,
            last_run_at=last.finished_at or last.started_at,
            last_run_error=last.error if status == "failed" else None,
        )
    drill = None
    if drills:
        last_drill = next(
            (r for r in reversed(runs) if r.job == "restore_test" and r.status in ("succeeded", "failed")),
            None,
        )
        if last_drill is None:
            drill = DrillState()
        else:
            drill = DrillState(
                "failed" if last_drill.status == "failed" else "succeeded",
                last_drill.finished_at or last_drill.started_at,
                last_drill.error,
                recovery.last_drill_rto if recovery is not None else None,
            )
    return HealthInputs(
        kinds=kinds,
        wal=wal,
        dependencies=deps,
        leader=leader,
        corrupt_objects=len(catalog.list_corrupt(scope)),
        drill=drill,
        recovery=recovery,
    )


def read_wal_state(archive: WalArchive, server: ServerWal | None, *, detail: str | None = None) -> WalState:
    """The WAL archive's newest file time (one LIST of the cluster's WAL prefix) and, with
    ``server``, whether WAL is pending. Storage errors propagate."""
    newest_at: datetime | None = None
    names: list[str] = []
    for info in archive.repo.storage.list(archive.prefix()):
        name = info.key.rsplit("/", 1)[-1]
        if classify(name) is None:
            continue
        names.append(name)
        if info.modified is not None and (newest_at is None or info.modified > newest_at):
            newest_at = info.modified
    segments = sum(1 for name in names if classify(name) == "segment")
    if server is None:
        return WalState(newest_at, None, False, detail or "the server was not asked", segments=segments)
    pending = wal_pending(server, names)
    if pending is None and detail is None:
        detail = "the server is a standby: pending WAL unknown"
    return WalState(newest_at, pending, server.archiver_failing, detail, segments=segments)


def wal_pending(server: ServerWal, archived: Iterable[str]) -> bool | None:
    """True when the server has written WAL beyond the end of the newest archived segment of its
    timeline; None when the server cannot say (a standby). Pure."""
    if server.current_lsn is None or server.timeline is None:
        return None
    newest = None
    for name in archived:
        if classify(name) != "segment" or timeline_of(name) != server.timeline:
            continue
        try:
            seg = parse_segment(name, server.segment_size)
        except ValueError:
            continue
        newest = seg if newest is None or seg > newest else newest
    if newest is None:
        return server.current_lsn > 0
    return written_after(server.current_lsn, newest, server.segment_size)


def check_dependencies(probes: Mapping[str, Callable[[], object]]) -> dict[str, DependencyState]:
    """Call each probe: up when it returns, down (with the error's message and hint) when it raises.
    Never raises; a probe's unexpected exception is reported with its type."""
    states: dict[str, DependencyState] = {}
    for name, probe in probes.items():
        try:
            probe()
        except BackupdError as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            states[name] = DependencyState(False, exc.message + hint)
        except Exception as exc:  # noqa: BLE001 - a health probe reports every failure, never raises
            states[name] = DependencyState(False, f"{type(exc).__name__}: {exc}")
        else:
            states[name] = DependencyState(True, "reachable")
    return states


def recovery_state(report: Mapping[str, Any]) -> RecoveryState:
    """The ``recovery_objectives`` check's input from an ``ops.health.objectives`` report."""
    window = report.get("window") or {}
    drill = report.get("last_drill") or {}
    return RecoveryState(
        window_start=parse_iso(window.get("oldest")),
        window_end=parse_iso(window.get("newest")),
        rto_objective=report.get("rto_objective_seconds"),
        rto_estimate=report.get("rto_estimate_seconds"),
        last_drill_rto=drill.get("rto_seconds"),
    )


# -- probes (run by the daemon's probe thread and by ``status``) -------------------------------
def probe_dependencies(
    database: Callable[[], object],
    storage: Storage,
    catalog: Catalog | None,
    open_catalog: Callable[[], Catalog],
    *,
    catalog_state: DependencyState | None = None,
) -> dict[str, DependencyState]:
    """Is each dependency reachable now? ``database``: the probe of the configured server (one
    connection); ``storage``: reading the repository's ``repo.json``; ``catalog``: one query (with
    ``catalog`` None, on the catalog ``open_catalog`` opens, closed again), or ``catalog_state``
    when given (a daemon probes its catalog once for all its clusters). Never raises."""

    def repository() -> None:
        try:
            storage.get(REPO_FILE)
        except ObjectNotFound:
            raise RepositoryNotFound(
                f"no repository at {storage.url} (no {REPO_FILE})",
                hint="run `contentflow-backupd init`, or check BACKUPD_REPOSITORY",
            ) from None

    def catalog_query() -> None:
        if catalog is not None:
            catalog.get_meta("catalog_probe")
            return
        opened = open_catalog()
        try:
            opened.get_meta("catalog_probe")
        finally:
            opened.close()

    if catalog_state is not None:
        return {**check_dependencies({"database": database, "storage": repository}), "catalog": catalog_state}
    return check_dependencies({"database": database, "storage": repository, "catalog": catalog_query})


class ArchiverStatus(Protocol):
    """What the server says of its WAL and its archiver (``pg_stat_archiver``)."""

    @property
    def current_lsn(self) -> int: ...
    @property
    def timeline(self) -> int: ...
    @property
    def wal_segment_size(self) -> int: ...
    @property
    def last_archived_time(self) -> datetime | None: ...
    @property
    def last_failed_time(self) -> datetime | None: ...


def wal_health_state(archive: WalArchive, server_status: Callable[[], ArchiverStatus]) -> WalState:
    """The WAL archive's state for the health report (physical mode): the newest archived file's
    time from the repository, and whether WAL is waiting from the server (``server_status``: its
    ``pg_stat_archiver`` and current WAL position). Storage errors propagate; an unreachable
    server or a standby leaves ``pending`` unknown."""
    try:
        status = server_status()
    except BackupdError as exc:
        return read_wal_state(archive, None, detail=f"server not asked: {exc.message}")
    failing = status.last_failed_time is not None and (
        status.last_archived_time is None or status.last_failed_time > status.last_archived_time
    )
    server = ServerWal(
        current_lsn=status.current_lsn,
        timeline=status.timeline,
        segment_size=status.wal_segment_size,
        archiver_failing=failing,
    )
    return read_wal_state(archive, server)
