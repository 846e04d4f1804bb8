"""Restore commands: into a database or file (logical), into a data directory (physical, PITR),
and restore points."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from contentflow_backupd.cli.output import human_age, human_bytes, human_time, print_json, render_table
from contentflow_backupd.errors import EXIT_OK
from contentflow_backupd.model import Scope

if TYPE_CHECKING:
    from concurrent.futures import Future

    from contentflow_backupd.catalog.base import Catalog, RestorePointCatalog
    from contentflow_backupd.ops.audit import AuditTo
    from contentflow_backupd.ops.restore.physical import PhysicalRestoreOptions, PhysicalRestoreResult
    from contentflow_backupd.ops.restore.recover_report import CheckOutcome, RecoverResult, RunChecks
    from contentflow_backupd.ops.restore.target import RecoveryTarget
    from contentflow_backupd.repository.repository import Repository
    from contentflow_backupd.source.conninfo import ConnInfo
    from contentflow_backupd.wiring import App

log = structlog.get_logger("contentflow_backupd.cli")


def cmd_restore(args: argparse.Namespace, app: App) -> int:
    if args.pgdata:
        return cmd_restore_physical(args, app)
    from contentflow_backupd.ops.restore.logical import (
        resolve_backup_id,
        restore_to_database,
        restore_to_file,
    )

    if bool(args.to_database) == bool(args.to_file) or _physical_restore_options(args):
        from contentflow_backupd.errors import UsageError

        if bool(args.to_database) != bool(args.to_file):
            raise UsageError(f"{', '.join(_physical_restore_options(args))}: only with --pgdata DIR")
        raise UsageError("restore needs exactly one of --to-database URL, --to-file PATH or --pgdata DIR")
    repo = app.repository()
    backup_id = resolve_backup_id(repo, None, app.cluster, args.backup)
    with app.audit_catalog() as audit:
        if args.to_file:
            result = restore_to_file(
                repo,
                app.cluster,
                backup_id,
                Path(args.to_file),
                concurrency=app.concurrency,
                audit=audit,
            )
        else:
            result = restore_to_database(
                repo,
                app.cluster,
                backup_id,
                app.restore_target(args.to_database),
                create=args.create,
                clean=args.clean,
                jobs=args.jobs,
                no_owner=args.no_owner,
                concurrency=app.concurrency,
                audit=audit,
            )
    if args.json:
        print_json(result.to_json())
    else:
        print(
            f"restored backup {result.backup_id} to {result.target} "
            f"({human_bytes(result.restored_bytes)} in {result.duration_seconds:.1f}s)"
        )
    return EXIT_OK


def _physical_restore_options(args: argparse.Namespace) -> list[str]:
    names = ("target_time", "target_lsn", "target_xid", "target_name", "target_action", "target_timeline")
    given = [
        f"--{n.replace('_', '-')}" for n in (*names, "owner", "process_max") if getattr(args, n) is not None
    ]
    return [*given, "--keep-archiving"] if args.keep_archiving else given


def cmd_restore_physical(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.errors import UsageError
    from contentflow_backupd.ops.restore.physical import restore_physical
    from contentflow_backupd.ops.restore.target import RecoveryTarget
    from contentflow_backupd.repository.walarchive import WalArchive

    logical = [o for o, v in (("--to-database", args.to_database), ("--to-file", args.to_file)) if v]
    logical += [o for o, v in (("--create", args.create), ("--clean", args.clean)) if v]
    logical += [o for o, v in (("--no-owner", args.no_owner), ("--jobs", args.jobs != 1)) if v]
    if logical:
        raise UsageError(f"--pgdata restores a physical backup; not with {', '.join(logical)}")
    from contentflow_backupd.memtune import keep_freed_memory

    keep_freed_memory()  # this process streams the whole backup through memory, then ends
    target = RecoveryTarget.parse(
        time=args.target_time,
        lsn=args.target_lsn,
        xid=args.target_xid,
        name=args.target_name,
        action=args.target_action,
        timeline=args.target_timeline,
    )

    # A recovery target by name needs the catalog first (restore points). Otherwise it only
    # records the outcome: it opens while the restore runs (before the repository's key is
    # derived), so that the restore does not wait for it.
    def restore(catalog: RestorePointCatalog | None, audit: AuditTo) -> PhysicalRestoreResult:
        repo = app.repository()
        return restore_physical(
            repo,
            WalArchive(repo, app.cluster),
            _physical_options(args, app, target),
            pg=app.pg_drivers(restore_writers=args.process_max),
            catalog=catalog,
            audit=audit,
        )

    if target.kind == "name":
        with app.catalog() as catalog:
            result = restore(catalog, catalog)
    else:
        with contextlib.closing(_CatalogLater(app)) as audit:
            result = restore(None, audit)
    if args.json:
        print_json(result.to_json())
        return EXIT_OK
    print(
        f"restored backup {result.backup_id} into {result.pgdata} ({human_bytes(result.restored_bytes)} "
        f"in {result.duration_seconds:.1f}s); recovery to {target.describe()} on timeline {result.timeline}"
    )
    if result.chain:
        print(f"combined with pg_combinebackup from its native chain: {' -> '.join(result.chain)}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print("next steps:")
    for step in result.next_steps:
        print(f"  - {step}")
    return EXIT_OK


class _CatalogLater:
    """``app.audit_catalog()`` as an ``AuditLater`` (ops/audit.py): opened on a thread of its
    own once the restore starts writing (``start``), so that SQLAlchemy's import and the schema
    check (about 0.3 s) overlap the restore instead of coming before its first byte, and do not
    compete with the checks before it. Called, it waits for the catalog: None, logged once as
    ``audit_unavailable``, when it cannot be opened; any other error of the opening is raised
    there. ``close()`` waits for the opening and closes the catalog."""

    def __init__(self, app: App) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._app = app
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="audit-catalog")
        self._opening: Future[Catalog] | None = None
        self._unavailable = False

    def start(self) -> None:
        if self._opening is None:
            self._opening = self._pool.submit(self._app.open_catalog)

    def __call__(self) -> Catalog | None:
        from contentflow_backupd.errors import BackupdError

        self.start()
        assert self._opening is not None
        if self._unavailable:
            return None
        try:
            return self._opening.result()
        except BackupdError as exc:
            self._unavailable = True
            log.warning("audit_unavailable", error=exc.message, hint="this operation is not audited")
            return None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._opening is not None and self._opening.exception() is None:
            self._opening.result().close()  # else: reported when called, or never needed


def cmd_restore_point(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.wal.restore_points import create_restore_point
    from contentflow_backupd.repository.walarchive import WalArchive

    repo = app.repository()
    with app.catalog() as catalog:
        result = create_restore_point(
            catalog,
            WalArchive(repo, app.cluster),
            app.cluster,
            args.name,
            describe=app.physical_source().describe,
            make=app.restore_point_maker(),
            archive_timeout=app.wal_archive_timeout,
        )
    if args.json:
        print_json(result.to_json())
        return EXIT_OK
    point = result.point
    state = "archived" if result.archived else "NOT archived yet: check archive_command or wal stream"
    print(f"restore point {point.name!r} at {point.lsn}, timeline {point.timeline}; {result.segment} {state}")
    return EXIT_OK


def cmd_list_restore_points(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.wal.restore_points import list_restore_points

    with app.catalog(read_only=True) as catalog:
        points = list_restore_points(catalog, app.scope(catalog, read_only=True))
    if args.json:
        print_json([p.to_json() for p in points])
        return EXIT_OK
    if not points:
        print(f"no restore points of cluster {app.cluster!r}")
        return EXIT_OK
    rows = [
        (p.name, p.lsn, str(p.timeline), human_time(p.created_at), human_age(p.created_at)) for p in points
    ]
    sys.stdout.write(render_table(("NAME", "LSN", "TIMELINE", "CREATED (UTC)", "AGE"), rows, right={2}))
    return EXIT_OK


# -- recover ---------------------------------------------------------------------------------------
_RECOVER_PHYSICAL = (
    "target_time", "target_lsn", "target_xid", "target_name", "target_action", "target_timeline",
    "owner", "keep_archiving", "start", "check_url", "process_max",
)  # fmt: skip


def cmd_recover(args: argparse.Namespace, app: App) -> int:
    """The disaster-recovery procedure (docs/disaster-recovery.md): exit 0 recovered and checked,
    1 recovered but a check failed."""
    from contentflow_backupd.errors import EXIT_FAILED, UsageError
    from contentflow_backupd.ops.health.objectives import open_corrupt_backups
    from contentflow_backupd.ops.restore.recover import recover_logical

    if bool(args.pgdata) == bool(args.to_database):
        raise UsageError(
            "recover needs exactly one of --pgdata DIR (physical) or --to-database URL (logical)"
        )
    given = [f"--{n.replace('_', '-')}" for n in _RECOVER_PHYSICAL if getattr(args, n)]
    if args.to_database and given:
        raise UsageError(f"{', '.join(given)}: only with --pgdata DIR")
    if args.check_url and not args.start:
        raise UsageError("--check-url: only with --start")
    repo = app.repository()
    with app.catalog() as catalog:
        excluded = open_corrupt_backups(catalog, Scope(repo.id, app.cluster))
        if args.pgdata:
            result = _recover_physical(args, app, repo, catalog, excluded)
        else:
            target = app.restore_target(args.to_database)
            result = recover_logical(
                repo,
                app.cluster,
                target,
                backup=args.backup,
                excluded=excluded,
                check=_checks(app, target.info),
                concurrency=app.concurrency,
                audit=catalog,
            )
    if args.json:
        print_json(result.to_json())
    else:
        _print_recovery(result)
    return EXIT_OK if result.status == "succeeded" else EXIT_FAILED


def _recover_physical(
    args: argparse.Namespace, app: App, repo: Repository, catalog: Catalog, excluded: dict[str, str]
) -> RecoverResult:
    from contentflow_backupd.observability.logging import register_secret
    from contentflow_backupd.ops.restore.recover import recover_physical
    from contentflow_backupd.ops.restore.recover_report import ServerState
    from contentflow_backupd.ops.restore.target import RecoveryTarget
    from contentflow_backupd.repository.walarchive import WalArchive
    from contentflow_backupd.source.conninfo import ConnInfo
    from contentflow_backupd.source.server import RestoredServer

    given = any(getattr(args, f"target_{k}") for k in ("time", "lsn", "xid", "name"))
    target = RecoveryTarget.parse(
        time=args.target_time,
        lsn=args.target_lsn,
        xid=args.target_xid,
        name=args.target_name,
        action=args.target_action or ("promote" if given else None),
        timeline=args.target_timeline,
    )
    if args.check_url:
        info = ConnInfo.parse(args.check_url, setting="--check-url")
        register_secret(info.password)
    else:
        info = app.conninfo

    archive = WalArchive(repo, app.cluster)
    identity = archive.identity() if args.start else None
    if identity is not None and identity.pg_version_num:
        from contentflow_backupd.source.scratch import server_bin_dir

        # Only a server of the cluster's own major can start it: refused before anything is written.
        server_bin_dir(identity.pg_version_num // 10000, app.drill_pg_bin, app.pg_bin)

    def start(restored: PhysicalRestoreResult) -> ServerState:
        server = RestoredServer(restored.pgdata, pg_bin=app.drill_pg_bin, client_bin=app.pg_bin)
        server.start()
        status = server.wait_recovery(info, target.action if target.kind else "promote")
        return ServerState(status.reached, status.replayed_to, status.detail, server.logfile)

    return recover_physical(
        repo,
        archive,
        _physical_options(args, app, target),
        catalog=catalog,
        excluded=excluded,
        pg=app.pg_drivers(restore_writers=args.process_max),
        start=start if args.start else None,
        check=_checks(app, info) if args.start else None,
    )


def _checks(app: App, info: ConnInfo) -> RunChecks:
    from contentflow_backupd.ops.drill.checks import run_checks
    from contentflow_backupd.repository.manifest import Manifest
    from contentflow_backupd.source.drivers import PgDatabaseFacts

    def check(manifest: Manifest) -> list[CheckOutcome]:
        return list(run_checks(PgDatabaseFacts(), info, manifest.details, app.drill_checks))

    return check


def _print_recovery(result: RecoverResult) -> None:
    for s in result.skipped:
        print(f"skipped backup {s.backup_id}: {s.reason}")
    took = f"restore {result.restore_seconds:.1f}s"
    if result.recovery_seconds is not None:
        took += f", recovery {result.recovery_seconds:.1f}s"
    print(
        f"recovered backup {result.backup_id} ({result.backup_kind}, finished "
        f"{result.backup_finished_at:%Y-%m-%d %H:%M:%S}Z) into {result.destination}: "
        f"{human_bytes(result.restored_bytes)}; {took}; {result.total_seconds:.1f}s in all"
    )
    print(f"recovered to: {result.recovered_to}")
    if result.server is not None:
        print(f"server: {result.server.reached} ({result.server.detail})")
    for c in result.checks:
        print(f"check {c.name}: {c.status}{': ' + c.detail if c.detail else ''}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    if result.status != "succeeded":
        print("RECOVERED, BUT CHECKS FAILED: " + ", ".join(c.name for c in result.checks_failed))
    print("next steps:")
    for step in result.next_steps:
        print(f"  - {step}")


def cmd_restore_test(args: argparse.Namespace, app: App) -> int:
    """Restore drill: exit 0 when it succeeded, 1 when it failed (the result says why)."""
    from contentflow_backupd.errors import EXIT_FAILED
    from contentflow_backupd.ops.drill.run import run_drill

    target = args.target_time
    if target not in ("random", "none"):
        from contentflow_backupd.ops.restore.target import RecoveryTarget

        RecoveryTarget.parse(time=target)  # a bad time is a usage error, not a failed drill
    opts = app.drill_options(backup=args.backup, target_time=None if target == "none" else target)
    repo = app.repository()
    with app.catalog() as catalog:
        result = run_drill(repo, catalog, opts, pg=app.pg_drivers())
    if args.json:
        print_json(result.to_json())
    else:
        rto = "-" if result.rto_seconds is None else f"{result.rto_seconds:.1f}s"
        print(
            f"restore drill {result.id}: {result.status.upper()}; backup {result.backup_id or '-'} to "
            f"{result.target}; RTO {rto}; restored {human_bytes(result.restored_bytes)}"
        )
        for check in result.checks:
            print(f"  {check.status:<8} {check.name:<16} {check.detail}")
        unrun = [c.name for c in result.checks if c.status == "not_run"]
        if unrun:
            print(f"  warning: {len(unrun)} check(s) could not run and prove nothing: {', '.join(unrun)}")
    return EXIT_OK if result.succeeded else EXIT_FAILED


def _physical_options(args: argparse.Namespace, app: App, target: RecoveryTarget) -> PhysicalRestoreOptions:
    """``restore --pgdata`` and ``recover --pgdata`` take the same options."""
    from contentflow_backupd.ops.restore.physical import PhysicalRestoreOptions

    return PhysicalRestoreOptions(
        cluster=app.cluster,
        backup=args.backup,
        pgdata=Path(args.pgdata),
        target=target,
        tool=app.self_command(),
        recovery=app.recovery_config(),
        owner=args.owner,
        keep_archiving=args.keep_archiving,
        concurrency=app.concurrency,
        pg_bin=app.pg_bin,
    )
