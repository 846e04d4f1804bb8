"""Daemon commands: run, runs list, status, expire."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING, Any

import structlog

from contentflow_backupd.cli.output import (
    as_reaped,
    human_age,
    human_bytes,
    human_duration,
    human_time,
    print_json,
    read_clusters,
    render_table,
)
from contentflow_backupd.errors import EXIT_FAILED, EXIT_OK, BackupdError

if TYPE_CHECKING:
    from contentflow_backupd.daemon.reload import ReloadSource
    from contentflow_backupd.ops.health.evaluate import HealthReport
    from contentflow_backupd.wiring import App
    from contentflow_backupd.wiring.fleet import Fleet

log = structlog.get_logger("contentflow_backupd.cli")


def cmd_run(args: argparse.Namespace, app: App) -> int:
    """One daemon for every configured cluster, or only for the chosen one (``--cluster NAME``,
    else ``BACKUPD_CLUSTER`` with named clusters)."""
    from contentflow_backupd.daemon import run_daemon
    from contentflow_backupd.observability import progress

    # Jobs report progress as `progress` log events; the daemon publishes it for status/metrics.
    progress.configure("log", app.progress_interval_s)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the daemon installs its own two-signal handling
    fleet: Fleet = args.fleet
    chosen = fleet.choose(getattr(args, "cluster", None))
    only = None if chosen is None or fleet.implicit else [chosen]
    return run_daemon(fleet, only, reload=_reload_source(args, fleet, only))


def _reload_source(args: argparse.Namespace, fleet: Fleet, only: list[str] | None) -> ReloadSource | None:
    """SIGHUP reads the configuration (``--config`` / ``BACKUPD_CONFIG``) and the credential
    files again (``wiring/reload.py``), comparing the clusters the daemon serves (``only``; None:
    every configured one). The audit view is the one the daemon records at start-up
    (``Fleet.config_view``): the implicit cluster's, else the whole configuration's."""
    from contentflow_backupd.wiring.reload import json_logs, reload_source

    adjust = json_logs if getattr(args, "json", False) else None
    cluster = fleet.names[0] if fleet.implicit else None
    return reload_source(fleet, getattr(args, "config", None), cluster=cluster, only=only, adjust=adjust)


def cmd_runs(args: argparse.Namespace, app: App) -> int:
    every = bool(getattr(args, "all_clusters", False))
    # --job filters in the query, before --limit (per cluster).
    read, failed = read_clusters(
        args, app, lambda catalog, scope: as_reaped(catalog.list_runs(scope, limit=args.limit, job=args.job))
    )
    listed = [(one.cluster, r) for one, runs in read for r in runs]
    if every:
        listed.sort(key=lambda item: (item[1].started_at, item[0], item[1].id))
    if args.json:
        print_json([{"cluster": c, **r.to_json()} if every else r.to_json() for c, r in listed])
        return EXIT_FAILED if failed else EXIT_OK
    if not listed:
        print("no runs recorded")
        return EXIT_FAILED if failed else EXIT_OK
    rows = []
    for cluster, r in listed:
        took = human_duration((r.finished_at - r.started_at).total_seconds() if r.finished_at else None)
        detail = r.backup_id or ""
        if r.error:
            detail = f"{detail} {r.error}".strip()
        rows.append(
            (
                *((cluster,) if every else ()),
                str(r.id),
                r.job,
                r.trigger,
                r.status,
                human_time(r.started_at),
                human_age(r.started_at),
                took,
                " ".join(detail.split())[:100],
            )
        )
    headers: tuple[str, ...] = (
        "ID",
        "JOB",
        "TRIGGER",
        "STATUS",
        "STARTED (UTC)",
        "AGE",
        "TOOK",
        "BACKUP / ERROR",
    )
    right = {0, 6}
    if every:
        headers, right = ("CLUSTER", *headers), {i + 1 for i in right}
    sys.stdout.write(render_table(headers, rows, right=right))
    return EXIT_FAILED if failed else EXIT_OK


def cmd_status(args: argparse.Namespace, app: App) -> int:
    if not getattr(args, "all_clusters", False):
        report = _health_report(app)
        running = _running_jobs(app)
        if args.json:
            print_json({**report.to_json(), "running": running})
        else:
            sys.stdout.write(report.to_text())
            _print_running(running)
        return EXIT_OK if report.ok else EXIT_FAILED
    apps = args.fleet.apps()
    reports = [(one.cluster, _health_report(one)) for one in apps]
    running = _running_jobs(app)  # the daemon of this state directory (one for every cluster)
    found = _owners(app)  # by lease: <cluster>@<repository hash>
    owners = {one.cluster: found.get(one.lease_name) for one in apps}
    if args.json:
        clusters = [{"cluster": c, **r.to_json(), "owner": owners.get(c)} for c, r in reports]
        print_json({"clusters": clusters, "running": running})
    else:
        rows = [
            (
                cluster,
                "healthy" if r.ok else "UNHEALTHY",
                ",".join(c.name for c in r.failed) or "-",
                _owner_text(owners.get(cluster)),
            )
            for cluster, r in reports
        ]
        sys.stdout.write(render_table(("CLUSTER", "STATE", "FAILED-CHECKS", "OWNER"), rows))
        _print_running(running)
    return EXIT_OK if all(r.ok for _, r in reports) else EXIT_FAILED


def _owners(app: App) -> dict[str, dict[str, Any] | None]:
    """Each lease's owner in the fleet (``daemon/owners.py``), from the catalog's leases, by
    lease name (``<cluster>@<repository hash>``, ``App.lease_name``):
    ``{member, daemon_id, host, pid, since, live, config_differs}``, or None when nobody holds
    its lease now. Empty when the catalog cannot be read or has no lease (SQLite: one daemon)."""
    from contentflow_backupd.daemon.owners import fleet_owners

    with app.catalog_or_none("catalog_unavailable", read_only=True) as catalog:
        if catalog is None:
            return {}
        try:
            found = fleet_owners(catalog)
        except BackupdError as exc:
            log.warning("fleet_owners_unreadable", error=exc.message)
            return {}
    return {
        cluster: {
            "member": o.member,
            "daemon_id": o.daemon_id,
            "host": o.host,
            "pid": o.pid,
            "since": o.since.isoformat() if o.since else None,
            "live": o.live,
            "config_differs": o.config_differs,
        }
        if o.held and o.daemon_id
        else None
        for cluster, o in found.items()
    }


def _owner_text(owner: dict[str, Any] | None) -> str:
    """``member(host:pid,since)``, one word for the table; ``-`` without an owner."""
    if owner is None:
        return "-"
    since = (owner["since"] or "")[:19]
    flag = ",CONFIG-DIFFERS" if owner["config_differs"] else ""
    return f"{owner['member']}({owner['host']}:{owner['pid']},since={since}{flag})"


def _print_running(running: list[dict[str, Any]]) -> None:
    from contentflow_backupd.observability.progress import describe

    for snap in running:
        print(f"running: {describe(snap)}")


def _health_report(app: App) -> HealthReport:
    """The health report of ``app``'s cluster (never raises for an unreachable dependency)."""
    from contentflow_backupd.model import utcnow
    from contentflow_backupd.ops.health.evaluate import WalState, evaluate_health
    from contentflow_backupd.ops.health.inputs import (
        collect_health_inputs,
        probe_dependencies,
        recovery_state,
        wal_health_state,
    )
    from contentflow_backupd.ops.health.objectives import recovery_objectives
    from contentflow_backupd.ops.repo.scope import resolve_scope

    objectives = app.objectives
    storage = app.storage()
    # status reports an unreachable catalog instead of failing on it; it reads, never writes
    with app.catalog_or_none("catalog_unavailable", read_only=True) as catalog:
        deps = probe_dependencies(
            app.database_probe(), storage, catalog, lambda: app.open_catalog(read_only=True)
        )
        wal = None
        if objectives.wal is not None:
            try:
                wal = wal_health_state(app.wal_archive(), app.archiver_status())
            except BackupdError as exc:
                wal = WalState(None, None, False, f"cannot read the WAL archive: {exc.message}")
        try:
            readable = catalog if deps["catalog"].up else None
            # Only rows of this repository and cluster count; a repository never read at this URL
            # has none (the report then says the catalog state is unknown).
            scope = (
                resolve_scope(storage, readable, app.cluster, required=False, read_only=True)
                if readable is not None
                else None
            )
            recovery = None
            if readable is not None and deps["storage"].up:
                try:
                    measured = recovery_objectives(
                        app.repository(),
                        readable,
                        app.cluster,
                        app.mode,
                        rto_objective_s=app.rto_objective_s,
                        rpo_objective_s=app.rpo_objective_s,
                    )
                    recovery = recovery_state(measured)
                except BackupdError as exc:
                    log.warning("recovery_objectives_unknown", error=exc.message)
            inputs = collect_health_inputs(
                readable,
                scope,
                dependencies=deps,
                wal=wal,
                drills=app.drills_scheduled,
                recovery=recovery,
            )
        except BackupdError as exc:
            log.warning("catalog_unavailable", error=exc.message)
            inputs = collect_health_inputs(None, None, dependencies=deps, wal=wal)
    return evaluate_health(inputs, objectives, utcnow())


def _running_jobs(app: App) -> list[dict[str, Any]]:
    """The progress the daemon on this state directory publishes for its running jobs."""
    from contentflow_backupd.daemon.lifecycle import PROGRESS_FILE
    from contentflow_backupd.observability.progress import read_published

    return read_published(app.state_path / PROGRESS_FILE)


def cmd_expire(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.model import utcnow
    from contentflow_backupd.ops.retention.apply import expire, expiry_report

    repo = app.repository()
    with app.catalog() as catalog:
        plan, result = expire(
            repo,
            catalog,
            app.cluster,
            app.retention_policy,
            utcnow(),
            apply=args.confirm,
            lock_dir=app.lock_dir(),
            trigger="manual",
            concurrency=app.concurrency,
        )
    report = expiry_report(plan, result)
    if args.json:
        print_json(report)
    else:
        print(f"{'BACKUP':<30} {'KIND':<11} {'MODE':<8} {'FINISHED':<20} {'ACTION':<7} REASON")
        for b in report["backups"]:
            finished = (b["finished_at"] or "-").replace("T", " ")[:19]
            mode = b["mode"] or "?"
            print(f"{b['id']:<30} {b['kind']:<11} {mode:<8} {finished:<20} {b['action']:<7} {b['reason']}")
        if report["generations"]:
            print(f"\n{'GENERATION':<30} {'OBJECTS':>8} {'BYTES':>10} {'ACTION':<7} REASON")
        for g in report["generations"]:
            size = human_bytes(g["bytes"])
            print(f"{g['generation']:<30} {g['objects']:>8} {size:>10} {g['action']:<7} {g['reason']}")
        wal = report["wal"]
        span = f", {wal['first']} .. {wal['last']}" if wal["first"] else ""
        if wal["delete_segments"] or wal["kept_segments"]:
            print(
                f"\nWAL: {wal['delete_segments']} files to delete "
                f"({human_bytes(wal['delete_bytes'])}{span}); "
                f"{wal['kept_segments']} kept"
            )
        if result is not None:
            stored = human_bytes(result.stored_bytes_after)
            print(f"deleted {human_bytes(result.deleted_bytes)}; the cluster now stores {stored}")
        for warning in plan.warnings:
            print(f"warning: {warning}")
    if result is None:
        print(
            f"plan only: nothing was deleted ({human_bytes(plan.delete_bytes)} would be); "
            "run `contentflow-backupd expire --confirm` to apply it",
            file=sys.stderr,
        )
    return EXIT_OK
