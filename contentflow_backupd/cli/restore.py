"""Restore commands: into a database or file (logical), into a data directory (physical, PITR),
and restore points."""

from __future__ import annotations

import argparse
from pathlib import Path

import structlog

from contentflow_backupd.cli.output import human_bytes, print_json
from contentflow_backupd.errors import EXIT_OK
from contentflow_backupd.settings import Settings

log = structlog.get_logger("contentflow_backupd.cli")


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.ops.restore import (
        resolve_backup_id,
        restore_to_database,
        restore_to_file,
    )

    if args.pgdata:
        return cmd_restore_physical(args, settings)
    if bool(args.to_database) == bool(args.to_file) or _physical_restore_options(args):
        from contentflow_backupd.errors import UsageError

        if bool(args.to_database) != bool(args.to_file):
            raise UsageError(f"{', '.join(_physical_restore_options(args))}: only with --pgdata DIR")
        raise UsageError("restore needs exactly one of --to-database URL, --to-file PATH or --pgdata DIR")
    repo = wiring.open_repository(settings)
    backup_id = resolve_backup_id(repo, None, settings.cluster, args.backup)
    if args.to_file:
        result = restore_to_file(
            repo,
            settings.cluster,
            backup_id,
            Path(args.to_file),
            concurrency=settings.upload_concurrency,
        )
    else:
        result = restore_to_database(
            repo,
            settings.cluster,
            backup_id,
            wiring.restore_target(settings, args.to_database),
            create=args.create,
            clean=args.clean,
            jobs=args.jobs,
            no_owner=args.no_owner,
            concurrency=settings.upload_concurrency,
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
    given = [f"--{n.replace('_', '-')}" for n in (*names, "owner") if getattr(args, n) is not None]
    return [*given, "--keep-archiving"] if args.keep_archiving else given


def cmd_restore_physical(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.errors import UsageError
    from contentflow_backupd.ops.physical_restore import (
        PhysicalRestoreOptions,
        RecoveryTarget,
        restore_physical,
    )
    from contentflow_backupd.repository.walarchive import WalArchive

    logical = [o for o, v in (("--to-database", args.to_database), ("--to-file", args.to_file)) if v]
    logical += [o for o, v in (("--create", args.create), ("--clean", args.clean)) if v]
    logical += [o for o, v in (("--no-owner", args.no_owner), ("--jobs", args.jobs != 1)) if v]
    if logical:
        raise UsageError(f"--pgdata restores a physical backup; not with {', '.join(logical)}")
    target = RecoveryTarget.parse(
        time=args.target_time,
        lsn=args.target_lsn,
        xid=args.target_xid,
        name=args.target_name,
        action=args.target_action,
        timeline=args.target_timeline,
    )
    repo = wiring.open_repository(settings)
    catalog = wiring.open_catalog(settings) if target.kind == "name" else None
    try:
        result = restore_physical(
            repo,
            WalArchive(repo, settings.cluster),
            PhysicalRestoreOptions(
                cluster=settings.cluster,
                backup=args.backup,
                pgdata=Path(args.pgdata),
                target=target,
                tool=wiring.self_command(),
                recovery=wiring.recovery_config(settings),
                owner=args.owner,
                keep_archiving=args.keep_archiving,
                concurrency=settings.upload_concurrency,
            ),
            catalog=catalog,
        )
    finally:
        if catalog is not None:
            catalog.close()
    if args.json:
        print_json(result.to_json())
        return EXIT_OK
    print(
        f"restored backup {result.backup_id} into {result.pgdata} ({human_bytes(result.restored_bytes)} "
        f"in {result.duration_seconds:.1f}s); recovery to {target.describe()} on timeline {result.timeline}"
    )
    for warning in result.warnings:
        print(f"warning: {warning}")
    print("next steps:")
    for step in result.next_steps:
        print(f"  - {step}")
    return EXIT_OK


def cmd_restore_point(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.ops.restore_points import create_restore_point
    from contentflow_backupd.repository.walarchive import WalArchive

    repo = wiring.open_repository(settings)
    catalog = wiring.open_catalog(settings)
    try:
        result = create_restore_point(
            catalog,
            WalArchive(repo, settings.cluster),
            settings.cluster,
            args.name,
            describe=wiring.physical_source(settings).describe,
            make=wiring.restore_point_maker(settings),
            archive_timeout=settings.wal.archive_timeout,
        )
    finally:
        catalog.close()
    if args.json:
        print_json(result.to_json())
        return EXIT_OK
    point = result.point
    state = "archived" if result.archived else "NOT archived yet: check archive_command or wal-stream"
    print(f"restore point {point.name!r} at {point.lsn}, timeline {point.timeline}; {result.segment} {state}")
    return EXIT_OK


def cmd_list_restore_points(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.ops.restore_points import list_restore_points

    catalog = wiring.open_catalog(settings)
    try:
        points = list_restore_points(catalog, settings.cluster)
    finally:
        catalog.close()
    if args.json:
        print_json([p.to_json() for p in points])
        return EXIT_OK
    if not points:
        print(f"no restore points of cluster {settings.cluster!r}")
        return EXIT_OK
    print(f"{'NAME':<32} {'LSN':<18} {'TIMELINE':>8}  CREATED")
    for p in points:
        print(f"{p.name:<32} {p.lsn:<18} {p.timeline:>8}  {p.created_at:%Y-%m-%d %H:%M:%S.%f}")
    return EXIT_OK
