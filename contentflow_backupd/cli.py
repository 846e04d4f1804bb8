"""The command line: argv -> one command. No logic beyond parsing, wiring and printing."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from contentflow_backupd import __version__
from contentflow_backupd.errors import EXIT_FAILED, EXIT_OK, BackupdError, VerificationFailed
from contentflow_backupd.settings import Settings, load_settings

log = structlog.get_logger("contentflow_backupd.cli")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


# -- commands ------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring

    repo = wiring.init_repository(settings)
    log.info("repository_initialised", url=repo.storage.url, repository_id=repo.id)
    out = {"repository_id": repo.id, "url": repo.storage.url, "key_id": repo.kek_id}
    if args.json:
        _print_json(out)
    else:
        print(f"initialised repository {repo.id} at {repo.storage.url} (key {repo.kek_id})")
        print("keep a copy of the passphrase or key file somewhere safe: without it the backups are lost")
    return EXIT_OK


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.ops.backup import BackupOptions, run_backup
    from contentflow_backupd.repository.walarchive import WalArchive

    mode = args.mode or settings.mode
    logical = wiring.logical_source(settings) if mode == "logical" else None
    if logical is not None:
        # pg_dump reads the schema while the repository and catalog open. An error here is met
        # again, and recorded as a failed run, by run_backup.
        with contextlib.suppress(BackupdError):
            logical.start()
    try:
        repo = wiring.open_repository(settings)
        catalog = wiring.open_catalog(settings)
        try:
            record = run_backup(
                repo,
                catalog,
                BackupOptions(
                    cluster=settings.cluster,
                    kind=args.kind,
                    mode=mode,
                    concurrency=settings.upload_concurrency,
                    lock_dir=wiring.lock_dir(settings),
                    archive_timeout=settings.wal.archive_timeout,
                ),
                logical=logical,
                physical=wiring.physical_source(settings) if mode == "physical" else None,
                archive=WalArchive(repo, settings.cluster) if mode == "physical" else None,
            )
        finally:
            catalog.close()
    finally:
        if logical is not None:
            logical.close()
    if args.json:
        _print_json(record.to_json())
    else:
        if args.kind == "incremental" and record.kind == "full":
            print("note: no full backup in the repository, so this backup ran as a full backup")
        print(
            f"backup {record.id} ({record.kind}, {record.mode}) succeeded in {record.duration_seconds:.1f}s: "
            f"{_human_bytes(record.source_bytes)} dumped, {_human_bytes(record.stored_bytes)} stored, "
            f"{record.chunks_new}/{record.chunks_total} chunks new"
        )
    return EXIT_OK


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.ops.backup import reap_interrupted

    catalog = wiring.open_catalog(settings)
    try:
        reap_interrupted(catalog)
        records = catalog.list_backups(settings.cluster, None if args.all else ["succeeded"])
    finally:
        catalog.close()
    _warn_if_catalog_stale(settings, {r.id for r in records if r.status == "succeeded"})
    if args.json:
        _print_json([r.to_json() for r in records])
        return EXIT_OK
    if not records:
        print(f"no backups of cluster {settings.cluster!r}")
        return EXIT_OK
    print(
        f"{'ID':<30} {'KIND':<11} {'MODE':<8} {'STATUS':<11} {'FINISHED':<20} {'SOURCE':>10} {'STORED':>10}"
    )
    for r in records:
        finished = r.finished_at.strftime("%Y-%m-%d %H:%M:%S") if r.finished_at else "-"
        print(
            f"{r.id:<30} {r.kind:<11} {r.mode:<8} {r.status:<11} {finished:<20} "
            f"{_human_bytes(r.source_bytes):>10} {_human_bytes(r.stored_bytes):>10}"
        )
    return EXIT_OK


def _warn_if_catalog_stale(settings: Settings, catalog_ids: set[str]) -> None:
    from contentflow_backupd import wiring
    from contentflow_backupd.repository import layout

    try:
        storage = wiring.open_storage(settings)
        stored = {
            bid
            for info in storage.list(layout.backups_prefix(settings.cluster))
            if (bid := layout.backup_id_from_manifest_key(settings.cluster, info.key))
        }
    except BackupdError as exc:
        log.warning("repository_not_checked", error=exc.message)
        return
    unknown = stored - catalog_ids
    gone = catalog_ids - stored
    if unknown:
        log.warning(
            "catalog_missing_backups",
            count=len(unknown),
            hint="run `contentflow-backupd catalog rebuild`",
        )
    if gone:
        log.warning("catalog_lists_missing_backups", count=len(gone), ids=sorted(gone)[:10])


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.repository import layout

    layout.check_backup_id(args.backup_id)
    repo = wiring.open_repository(settings)
    manifest = repo.read_manifest(settings.cluster, args.backup_id)
    key = layout.manifest_key(settings.cluster, args.backup_id)
    out = manifest.to_record(key).to_json()
    out["manifest"] = {
        "key": key,
        "repository_id": repo.id,
        "tool_version": manifest.tool_version,
        "streams": [
            {
                "name": s.name,
                "type": s.type,
                "size": s.size,
                "digest": s.digest,
                "chunks": len(s.chunks),
            }
            for s in manifest.streams
        ],
        "details": manifest.details,
    }
    if args.json:
        _print_json(out)
    else:
        for k, v in out.items():
            if k != "manifest":
                print(f"{k:<17} {v}")
        print(f"{'manifest':<17} {key}")
        for s in out["manifest"]["streams"]:
            print(
                f"  stream {s['name']} ({s['type']}): {_human_bytes(s['size'])} in {s['chunks']} chunks, "
                f"blake3 {s['digest']}"
            )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.ops.restore import resolve_backup_id
    from contentflow_backupd.ops.verify import verify_backups

    repo = wiring.open_repository(settings)
    if args.backup_ids and not args.all:
        ids = [resolve_backup_id(repo, None, settings.cluster, b) for b in args.backup_ids]
    else:
        ids = list(repo.iter_backup_ids(settings.cluster))
    report = verify_backups(
        repo, settings.cluster, ids, quick=args.quick, concurrency=settings.upload_concurrency
    )
    if args.json:
        _print_json(report.to_json())
    else:
        for b in report.backups:
            state = "ok" if b.ok else f"FAULTY ({len(b.faults)} faults)"
            print(f"{b.backup_id}: {state} ({b.objects_checked} objects, {_human_bytes(b.bytes_read)} read)")
        for f in report.faults:
            print(f"  fault: backup {f.backup_id}: {f.key}: {f.problem}")
        if not ids:
            print(f"no backups of cluster {settings.cluster!r} to verify")
    if not report.ok:
        raise VerificationFailed(
            f"verification found {len(report.faults)} fault(s) in "
            f"{sum(1 for b in report.backups if not b.ok)} backup(s): "
            + "; ".join(f"{f.backup_id} {f.key} ({f.problem})" for f in report.faults[:5])
        )
    return EXIT_OK


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
        _print_json(result.to_json())
    else:
        print(
            f"restored backup {result.backup_id} to {result.target} "
            f"({_human_bytes(result.restored_bytes)} in {result.duration_seconds:.1f}s)"
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
        _print_json(result.to_json())
        return EXIT_OK
    print(
        f"restored backup {result.backup_id} into {result.pgdata} ({_human_bytes(result.restored_bytes)} "
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
        _print_json(result.to_json())
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
        _print_json([p.to_json() for p in points])
        return EXIT_OK
    if not points:
        print(f"no restore points of cluster {settings.cluster!r}")
        return EXIT_OK
    print(f"{'NAME':<32} {'LSN':<18} {'TIMELINE':>8}  CREATED")
    for p in points:
        print(f"{p.name:<32} {p.lsn:<18} {p.timeline:>8}  {p.created_at:%Y-%m-%d %H:%M:%S.%f}")
    return EXIT_OK


def cmd_catalog_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.ops.rebuild import rebuild_catalog

    repo = wiring.open_repository(settings)
    catalog = wiring.open_catalog(settings)
    try:
        result = rebuild_catalog(repo, catalog, settings.cluster)
    finally:
        catalog.close()
    if args.json:
        _print_json(result.to_json())
    else:
        print(f"catalog rebuilt: {result.backups} backups of cluster {settings.cluster!r}")
        for u in result.unreadable:
            print(f"  unreadable: {u['key']}: {u['error']}")
    return EXIT_FAILED if result.unreadable else EXIT_OK


def cmd_config_show(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd.configshow import describe_settings

    rows = describe_settings(settings, args.file_data)
    if args.json:
        _print_json(rows)
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}} = {r['value']}   ({r['source']})")
    return EXIT_OK


def cmd_wal_push(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.ops.wal import push_wal_file

    status = push_wal_file(wiring.open_wal_archive(settings), Path(args.path))
    if args.json:
        _print_json({"file": Path(args.path).name, "status": status})
    return EXIT_OK


def cmd_wal_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.errors import ObjectNotFound, RecoveryMustStop
    from contentflow_backupd.ops.wal import fetch_wal_file

    try:
        fetch_wal_file(wiring.open_wal_archive(settings), args.name, Path(args.dest))
    except ObjectNotFound:
        log.info("wal_not_archived", wal=args.name)
        return EXIT_FAILED
    except BackupdError as exc:
        raise RecoveryMustStop(f"wal-fetch {args.name}: {exc.message}; stopping recovery") from None
    return EXIT_OK


def cmd_wal_stream(args: argparse.Namespace, settings: Settings) -> int:
    import threading

    from contentflow_backupd import wiring
    from contentflow_backupd.ops.wal_stream import run_wal_stream

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            raise SystemExit(1)  # a second signal: stop now
        log.info("wal_stream_stopping", signal=signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_wal_stream(
        wiring.open_wal_archive(settings),
        wiring.source_conninfo(settings),
        spool_dir=wiring.wal_spool_dir(settings),
        slot=settings.wal.slot,
        stop=stop,
        bin_dir=settings.pg_bin,
        tmp_root=wiring.tmp_dir(settings),
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd.daemon import run_daemon

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the daemon installs its own two-signal handling
    return run_daemon(settings)


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.ops.backup import reap_interrupted

    catalog = wiring.open_catalog(settings)
    try:
        reap_interrupted(catalog)
        runs = catalog.list_runs(limit=args.limit)
    finally:
        catalog.close()
    if args.job:
        runs = [r for r in runs if r.job == args.job]
    if args.json:
        _print_json([r.to_json() for r in runs])
        return EXIT_OK
    if not runs:
        print("no runs recorded")
        return EXIT_OK
    print(f"{'ID':>6} {'JOB':<12} {'TRIGGER':<9} {'STATUS':<11} {'STARTED':<20} {'SECS':>8}  BACKUP / ERROR")
    for r in runs:
        secs = f"{(r.finished_at - r.started_at).total_seconds():.1f}" if r.finished_at else "-"
        detail = r.backup_id or ""
        if r.error:
            detail = f"{detail} {r.error}".strip()
        print(
            f"{r.id:>6} {r.job:<12} {r.trigger:<9} {r.status:<11} "
            f"{r.started_at:%Y-%m-%d %H:%M:%S}  {secs:>8}  {detail[:100]}"
        )
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.model import utcnow
    from contentflow_backupd.ops.health import WalState, collect_health_inputs, evaluate_health

    objectives = wiring.objectives(settings)
    storage = wiring.open_storage(settings)
    catalog = None
    try:
        catalog = wiring.open_catalog(settings)
    except BackupdError as exc:
        log.warning("catalog_unavailable", error=exc.message)
    try:
        deps = wiring.probe_dependencies(settings, catalog, storage)
        wal = None
        if objectives.wal is not None:
            try:
                wal = wiring.wal_health_state(settings)
            except BackupdError as exc:
                wal = WalState(None, None, False, f"cannot read the WAL archive: {exc.message}")
        try:
            readable = catalog if deps["catalog"].up else None
            inputs = collect_health_inputs(readable, settings.cluster, dependencies=deps, wal=wal)
        except BackupdError as exc:
            log.warning("catalog_unavailable", error=exc.message)
            inputs = collect_health_inputs(None, settings.cluster, dependencies=deps, wal=wal)
    finally:
        if catalog is not None:
            catalog.close()
        storage.close()
    report = evaluate_health(inputs, objectives, utcnow())
    if args.json:
        _print_json(report.to_json())
    else:
        sys.stdout.write(report.to_text())
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_wal_verify(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.ops.wal import check_wal_chain

    report = check_wal_chain(wiring.open_wal_archive(settings))
    if args.json:
        _print_json(report.to_json())
    else:
        for t in report.to_json()["timelines"]:
            print(f"timeline {t['timeline']}: {t['segments']} segments, {t['first']} .. {t['last']}")
        for g in report.gaps:
            print(f"  gap on timeline {g.timeline}: {g.missing_from} .. {g.missing_to} missing")
    if not report.ok:
        raise VerificationFailed(f"the WAL archive has {len(report.gaps)} gap(s)")
    return EXIT_OK


def cmd_expire(args: argparse.Namespace, settings: Settings) -> int:
    from contentflow_backupd import wiring
    from contentflow_backupd.model import utcnow
    from contentflow_backupd.ops.retention import expire, expiry_report

    repo = wiring.open_repository(settings)
    catalog = wiring.open_catalog(settings)
    try:
        plan, result = expire(
            repo,
            catalog,
            settings.cluster,
            wiring.retention_policy(settings),
            utcnow(),
            apply=args.confirm,
            lock_dir=wiring.lock_dir(settings),
            trigger="manual",
            concurrency=settings.upload_concurrency,
        )
    finally:
        catalog.close()
    report = expiry_report(plan, result)
    if args.json:
        _print_json(report)
    else:
        print(f"{'BACKUP':<30} {'KIND':<11} {'MODE':<8} {'FINISHED':<20} {'ACTION':<7} REASON")
        for b in report["backups"]:
            finished = (b["finished_at"] or "-").replace("T", " ")[:19]
            mode = b["mode"] or "?"
            print(f"{b['id']:<30} {b['kind']:<11} {mode:<8} {finished:<20} {b['action']:<7} {b['reason']}")
        if report["generations"]:
            print(f"\n{'GENERATION':<30} {'OBJECTS':>8} {'BYTES':>10} {'ACTION':<7} REASON")
        for g in report["generations"]:
            size = _human_bytes(g["bytes"])
            print(f"{g['generation']:<30} {g['objects']:>8} {size:>10} {g['action']:<7} {g['reason']}")
        wal = report["wal"]
        span = f", {wal['first']} .. {wal['last']}" if wal["first"] else ""
        if wal["delete_segments"] or wal["kept_segments"]:
            print(
                f"\nWAL: {wal['delete_segments']} files to delete "
                f"({_human_bytes(wal['delete_bytes'])}{span}); "
                f"{wal['kept_segments']} kept"
            )
        if result is not None:
            stored = _human_bytes(result.stored_bytes_after)
            print(f"deleted {_human_bytes(result.deleted_bytes)}; the cluster now stores {stored}")
        for warning in plan.warnings:
            print(f"warning: {warning}")
    if result is None:
        print(
            f"plan only: nothing was deleted ({_human_bytes(plan.delete_bytes)} would be); "
            "run `contentflow-backupd expire --confirm` to apply it",
            file=sys.stderr,
        )
    return EXIT_OK


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contentflow-backupd",
        description="Encrypted, deduplicated, verified PostgreSQL backups to S3 or a local directory.",
    )
    p.add_argument("--version", action="version", version=f"contentflow-backupd {__version__}")
    p.add_argument("--config", type=Path, help="TOML settings file (default: $BACKUPD_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace, Settings], int], help_: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        return sp

    add("init", cmd_init, "create the repository (repo.json and the wrapped key)")
    sp = add("backup", cmd_backup, "take a backup")
    sp.add_argument("--kind", choices=["full", "incremental"], required=True)
    sp.add_argument("--mode", choices=["logical", "physical"], help="default: BACKUPD_MODE")
    sp = add("list", cmd_list, "list backups, oldest first")
    sp.add_argument("--all", action="store_true", help="include failed and interrupted attempts")
    sp = add("show", cmd_show, "show one backup and its manifest summary")
    sp.add_argument("backup_id")
    sp = add("verify", cmd_verify, "read back and authenticate backups (all of them by default)")
    sp.add_argument("backup_ids", nargs="*", metavar="BACKUP_ID", help="backup ids or 'latest'")
    sp.add_argument("--all", action="store_true", help="verify every backup (the default without ids)")
    sp.add_argument("--quick", action="store_true", help="only check that every object exists with its size")
    sp = add("restore", cmd_restore, "restore a backup into a database, a file or a data directory")
    sp.add_argument("backup", metavar="BACKUP_ID|latest")
    sp.add_argument("--to-database", metavar="URL", help="libpq URI of the database to restore into")
    sp.add_argument("--to-file", metavar="PATH", help="write the pg_dump archive to PATH instead")
    sp.add_argument("--create", action="store_true", help="create the target database if it does not exist")
    sp.add_argument("--clean", action="store_true", help="drop and replace objects in a non-empty database")
    sp.add_argument(
        "--jobs", type=int, default=1, help="parallel pg_restore jobs (>1 is not one transaction)"
    )
    sp.add_argument("--no-owner", action="store_true", help="do not restore ownership and privileges")
    sp.add_argument("--pgdata", metavar="DIR", help="restore a physical backup into a new data directory")
    sp.add_argument("--target-time", metavar="TIME", help="recover to this time (ISO 8601; UTC without zone)")
    sp.add_argument("--target-lsn", metavar="LSN", help="recover to this WAL position (e.g. 0/3000100)")
    sp.add_argument("--target-xid", metavar="XID", help="recover to the commit of this transaction")
    sp.add_argument("--target-name", metavar="NAME", help="recover to this restore point (see restore-point)")
    sp.add_argument(
        "--target-action",
        choices=["promote", "pause", "shutdown"],
        help="what the server does at the target (default: pause)",
    )
    sp.add_argument("--target-timeline", metavar="TLI", help="latest (default), current or a number")
    sp.add_argument("--owner", metavar="USER[:GROUP]", help="owner of the data directory (root only)")
    sp.add_argument(
        "--keep-archiving", action="store_true", help="keep archive_mode of the backup (default: set it off)"
    )
    sp = add("restore-point", cmd_restore_point, "create a named restore point on the server and record it")
    sp.add_argument("name", metavar="NAME")
    add("list-restore-points", cmd_list_restore_points, "list the recorded restore points, oldest first")
    sp = add("expire", cmd_expire, "plan retention (BACKUPD_RETENTION__*) and, with --confirm, apply it")
    sp.add_argument("--confirm", action="store_true", help="delete what the plan says (default: print it)")
    sp = add("wal-push", cmd_wal_push, "archive one WAL file (archive_command = '... wal-push %%p')")
    sp.add_argument("path", metavar="PATH")
    sp = add("wal-fetch", cmd_wal_fetch, "fetch one WAL file (restore_command = '... wal-fetch %%f %%p')")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("dest", metavar="DEST")
    add("wal-stream", cmd_wal_stream, "stream WAL with pg_receivewal on a slot and archive each segment")
    add("run", cmd_run, "run the daemon: scheduled backups, WAL, retention, metrics and health")
    add("status", cmd_status, "health report: backup ages, last runs, WAL, dependencies; exit 1 if unhealthy")
    sp = add("runs", cmd_runs, "list recorded runs of jobs (scheduled and manual), oldest first")
    sp.add_argument("--limit", type=int, default=100, help="the newest N runs (default 100)")
    sp.add_argument("--job", choices=["full", "incremental", "wal", "retention"], help="only this job")
    walp = sub.add_parser("wal", help="WAL archive maintenance")
    walsub = walp.add_subparsers(dest="wal_command", required=True, metavar="SUBCOMMAND")
    sp = walsub.add_parser("verify", help="check the WAL archive for gaps, per timeline")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_wal_verify)
    cat = sub.add_parser("catalog", help="catalog maintenance")
    catsub = cat.add_subparsers(dest="catalog_command", required=True, metavar="SUBCOMMAND")
    sp = catsub.add_parser("rebuild", help="rebuild the catalog from the repository's manifests")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_catalog_rebuild)
    cfg = sub.add_parser("config", help="settings")
    cfgsub = cfg.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    sp = cfgsub.add_parser("show", help="print the resolved settings and their sources, secrets masked")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_config_show)
    return p


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    from contentflow_backupd.ops.backup import Interrupted

    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
    raise Interrupted(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings, file_data = load_settings(args.config)
        args.file_data = file_data
        from contentflow_backupd import wiring

        wiring.setup_logging(settings)
        wiring.warn_unknown_env(settings)
        signal.signal(signal.SIGTERM, _on_signal)
        return int(args.func(args, settings))
    except BackupdError as exc:
        print(f"contentflow-backupd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BaseException as exc:
        from contentflow_backupd.ops.backup import Interrupted

        if isinstance(exc, Interrupted | KeyboardInterrupt):
            print("contentflow-backupd: interrupted", file=sys.stderr)
            return 130
        if isinstance(exc, SystemExit):
            raise
        log.exception("internal_error")
        print(f"contentflow-backupd: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
