"""Commands on the repository and its backups: init, backup create|list|show, verify, catalog
rebuild|upgrade, config show."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING

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
from contentflow_backupd.errors import EXIT_FAILED, EXIT_OK, BackupdError, VerificationFailed

if TYPE_CHECKING:
    from contentflow_backupd.ops.verify.backups import VerifyReport
    from contentflow_backupd.ops.verify.sweep import SweepResult
    from contentflow_backupd.wiring import App

log = structlog.get_logger("contentflow_backupd.cli")


def cmd_init(args: argparse.Namespace, app: App) -> int:

    repo = app.init_repository()
    log.info("repository_initialised", url=repo.storage.url, repository_id=repo.id)
    out = {"repository_id": repo.id, "url": repo.storage.url, "key_id": repo.kek_id}
    if args.json:
        print_json(out)
    else:
        print(f"initialised repository {repo.id} at {repo.storage.url} (key {repo.kek_id})")
        print("keep a copy of the passphrase or key file somewhere safe: without it the backups are lost")
    return EXIT_OK


def cmd_backup(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.backup.run import run_backup
    from contentflow_backupd.repository.walarchive import WalArchive

    mode = args.mode or app.mode
    logical = app.logical_source() if mode == "logical" else None
    if logical is not None:
        # pg_dump reads the schema while the repository and catalog open. An error here is met
        # again, and recorded as a failed run, by run_backup.
        with contextlib.suppress(BackupdError):
            logical.start()
    try:
        repo = app.repository()
        with app.catalog() as catalog:
            record = run_backup(
                repo,
                catalog,
                app.backup_options(args.kind, mode=mode),
                logical=logical,
                physical=app.physical_source() if mode == "physical" else None,
                archive=WalArchive(repo, app.cluster) if mode == "physical" else None,
            )
    finally:
        if logical is not None:
            logical.close()
    if args.json:
        print_json(record.to_json())
    else:
        if args.kind == "incremental" and record.kind == "full":
            print("note: no full backup in the repository, so this backup ran as a full backup")
        print(
            f"backup {record.id} ({record.kind}, {record.mode}) succeeded in {record.duration_seconds:.1f}s: "
            f"{human_bytes(record.source_bytes)} dumped, {human_bytes(record.stored_bytes)} stored, "
            f"{record.chunks_new}/{record.chunks_total} chunks new"
        )
    return EXIT_OK


def cmd_list(args: argparse.Namespace, app: App) -> int:
    from datetime import timedelta

    from contentflow_backupd.model import iso

    every = bool(getattr(args, "all_clusters", False))
    # ``as_reaped`` shows what a writing command will record.
    read, failed = read_clusters(
        args,
        app,
        lambda catalog, scope: as_reaped(
            catalog.list_backups(scope, None if args.attempts else ["succeeded"])
        ),
    )
    listed = []
    for one, records in read:
        _warn_if_catalog_stale(one, {r.id for r in records if r.status == "succeeded"})
        grace = timedelta(seconds=one.gc_grace_s)
        listed += [(one, r, grace) for r in records]
    leftovers = [
        (one, r) for one, r, _ in listed if r.status in ("failed", "interrupted") and r.stored_bytes > 0
    ]
    if args.json:
        out = []
        for one, r, grace in listed:
            item = {"cluster": one.cluster, **r.to_json()} if every else r.to_json()
            if r.status in ("failed", "interrupted") and r.stored_bytes > 0:
                # Chunks without a manifest: retention deletes them once older than gc_grace.
                item["collectable_after"] = iso((r.finished_at or r.started_at) + grace)
            out.append(item)
        print_json(out)
        return EXIT_FAILED if failed else EXIT_OK
    if not listed:
        print("no backups in any cluster" if every else f"no backups of cluster {app.cluster!r}")
        return EXIT_FAILED if failed else EXIT_OK
    rows = [
        (
            *((one.cluster,) if every else ()),
            r.id,
            r.kind,
            r.mode,
            r.status,
            human_time(r.finished_at),
            human_age(r.finished_at),
            human_duration((r.finished_at - r.started_at).total_seconds() if r.finished_at else None),
            human_bytes(r.source_bytes),
            human_bytes(r.stored_bytes),
        )
        for one, r, _ in listed
    ]
    headers: tuple[str, ...] = (
        "ID",
        "KIND",
        "MODE",
        "STATUS",
        "FINISHED (UTC)",
        "AGE",
        "TOOK",
        "SOURCE",
        "STORED",
    )
    right = {6, 7, 8}
    if every:
        headers, right = ("CLUSTER", *headers), {i + 1 for i in right}
    sys.stdout.write(render_table(headers, rows, right=right))
    if leftovers:
        total = human_bytes(sum(r.stored_bytes for _, r in leftovers))
        print(
            f"{total} stored by {len(leftovers)} failed or interrupted attempt(s): chunks without a "
            f"manifest, deleted by retention (`expire --confirm`, the daemon's retention job) once "
            f"older than gc_grace ({leftovers[0][0].gc_grace})"
        )
    return EXIT_FAILED if failed else EXIT_OK


def _warn_if_catalog_stale(app: App, catalog_ids: set[str]) -> None:
    from contentflow_backupd.repository import layout

    try:
        storage = app.storage()
        stored = {
            bid
            for info in storage.list(layout.backups_prefix(app.cluster))
            if (bid := layout.backup_id_from_manifest_key(app.cluster, info.key))
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


def cmd_show(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.restore.logical import resolve_backup_id
    from contentflow_backupd.repository import layout

    if args.backup_id != "latest":
        layout.check_backup_id(args.backup_id)  # before opening anything
    repo = app.repository()
    backup_id = resolve_backup_id(repo, None, app.cluster, args.backup_id)
    manifest = repo.read_manifest(app.cluster, backup_id)
    key = layout.manifest_key(app.cluster, backup_id)
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
                "chunks": s.chunk_count,
                "chunk_size": s.chunk_size,
                "packs": len(s.packs),
            }
            for s in manifest.streams
        ],
        "details": manifest.details,
    }
    if args.json:
        print_json(out)
    else:
        for k, v in out.items():
            if k != "manifest":
                print(f"{k:<17} {v}")
        print(f"{'manifest':<17} {key}")
        for s in out["manifest"]["streams"]:
            packed = (
                f" of {human_bytes(s['chunk_size'])} average, in {s['packs']} packs" if s["packs"] else ""
            )
            print(
                f"  stream {s['name']} ({s['type']}): {human_bytes(s['size'])} in {s['chunks']} chunks"
                f"{packed}, blake3 {s['digest']}"
            )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.restore.logical import resolve_backup_id
    from contentflow_backupd.ops.verify.backups import verify_backups

    if getattr(args, "since_last", False):
        return _verify_since_last(args, app)
    repo = app.repository()
    everything = args.all or not args.backup_ids
    if not everything:
        ids = [resolve_backup_id(repo, None, app.cluster, b) for b in args.backup_ids]
    else:
        ids = list(repo.iter_backup_ids(app.cluster))
    with app.audit_catalog() as audit:
        report = verify_backups(
            repo,
            app.cluster,
            ids,
            quick=args.quick,
            concurrency=app.concurrency,
            audit=audit,
            everything=everything,
        )
    if args.json:
        print_json(report.to_json())
    else:
        for b in report.backups:
            state = "ok" if b.ok else f"FAULTY ({len(b.faults)} faults)"
            print(f"{b.backup_id}: {state} ({b.objects_checked} objects, {human_bytes(b.bytes_read)} read)")
        for f in (f for b in report.backups for f in b.faults):
            print(f"  fault: backup {f.backup_id}: {f.key}: {f.problem}")
        if not ids:
            print(f"no backups of cluster {app.cluster!r} to verify")
        _print_repository_check(report)
    if not report.ok:
        where = f"{sum(1 for b in report.backups if not b.ok)} backup(s)"
        if report.repository is not None and report.repository.faults:
            where += f" and {len(report.repository.faults)} in the rest of the repository"
        raise VerificationFailed(
            f"verification found {len(report.faults)} fault(s) in {where}: "
            + "; ".join(f"{f.backup_id} {f.key} ({f.problem})" for f in report.faults[:5])
        )
    return EXIT_OK


def _print_repository_check(report: VerifyReport) -> None:
    rc = report.repository
    if rc is None:
        return
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(rc.kinds.items()))
    state = "ok" if rc.ok else f"FAULTY ({len(rc.faults)} faults)"
    print(f"repository: {state} ({kinds}; {human_bytes(rc.bytes_read)} read)")
    for f in rc.faults:
        print(f"  fault: {f.key}: {f.problem} (needed by {f.needed_by})")
    for w in rc.warnings:
        print(f"  warning: {w}")


def _verify_since_last(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.errors import UsageError
    from contentflow_backupd.ops.verify.sweep import open_corrupt_summary, verify_since_last

    if args.backup_ids or args.all or args.quick:
        raise UsageError("--since-last verifies the whole cluster: not with backup ids, --all or --quick")
    # A manual run with the verify job off paces the sweep as a daily job would.
    interval_s = app.verify_interval_s
    repo = app.repository()
    with app.catalog() as catalog:
        result = verify_since_last(
            repo,
            catalog,
            app.cluster,
            full_sweep_s=app.verify_sweep_s,
            interval_s=interval_s,
            concurrency=app.concurrency,
            lock_dir=app.lock_dir(),
        )
    if args.json:
        print_json(result.to_json())
    else:
        _print_sweep(result)
    if not result.ok:
        n = len(result.open_corrupt)
        raise VerificationFailed(
            f"{n} corrupt object(s) in cluster {app.cluster!r}: "
            + "; ".join(open_corrupt_summary(result.open_corrupt)),
            hint="take a new full backup so that new backups stop needing it (then `expire` the old "
            "ones), or restore the object from a copy; see docs/verification.md",
        )
    return EXIT_OK


def _print_sweep(result: SweepResult) -> None:
    from contentflow_backupd.ops.verify.sweep import needed_by_nobackup

    fmt = "%Y-%m-%d %H:%M:%S"
    read = result.to_json()["read"]
    new = ", ".join(result.new_backups) or "none"
    print(
        f"cluster {result.cluster!r}: read {read['manifests']} manifests, {read['new_objects']} objects of "
        f"new backups ({new}), {read['sweep_objects']} sweep objects, {read['rechecked']} rechecked; "
        f"{human_bytes(result.bytes_read)}; {read['referenced_checked']} referenced objects listed with "
        "their size"
    )
    plan = result.plan
    print(
        f"sweep: share {plan.share} of {result.state.sweep_objects_total} objects, cursor "
        f"{plan.cursor or '(start)'}, {plan.remaining} left in this pass (started "
        f"{plan.pass_started_at:{fmt}} UTC), full pass expected by {result.estimated_pass_end:{fmt}} UTC"
    )
    for f in result.found:
        needs = ", ".join(f.backup_ids) or needed_by_nobackup(f.key)
        print(f"  corrupt: {f.key}: {f.problem} (needed by {needs})")
    for f in result.ignored:
        print(f"  ignored: {f.key}: {f.problem} (no kept backup needs it)")
    for r in result.resolved:
        print(f"  resolved: {r.key}: {r.resolution}")
    still = [r for r in result.open_corrupt if r.key not in {f.key for f in result.found}]
    for r in still:
        print(f"  still open: {r.key}: {r.problem} (since {r.detected_at:{fmt}} UTC)")
    print(
        "ok: no corrupt object is open"
        if result.ok
        else f"CORRUPT: {len(result.open_corrupt)} object(s) open"
    )


def cmd_catalog_rebuild(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.repo.rebuild import rebuild_catalog

    repo = app.repository()
    with app.catalog() as catalog:
        result = rebuild_catalog(repo, catalog, app.cluster)
    if args.json:
        print_json(result.to_json())
    else:
        print(f"catalog rebuilt: {result.backups} backups of cluster {app.cluster!r}")
        if result.audit is not None:
            audit = result.audit
            print(f"audit trail: {audit.found} records in the repository, {audit.imported} restored")
        for u in result.unreadable:
            print(f"  unreadable: {u['key']}: {u['error']}")
    return EXIT_FAILED if result.unreadable else EXIT_OK


def cmd_catalog_upgrade(args: argparse.Namespace, app: App) -> int:
    """What every writing command does on its way, as a command of its own: the schema brought
    to the newest revision, this repository's id remembered, old rows attributed."""
    from contentflow_backupd.catalog.sql import head_revision

    with app.catalog() as catalog:
        scope = app.scope(catalog)
    out = {"revision": head_revision(), "repository_id": scope.repository_id, "cluster": scope.cluster}
    if args.json:
        print_json(out)
    else:
        print(
            f"catalog at revision {out['revision']}, rows of repository {scope.repository_id} "
            f"and cluster {scope.cluster!r} attributed"
        )
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace, app: App) -> int:
    rows = args.fleet.settings_view(args.cluster)
    if args.json:
        print_json(rows)
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}} = {r['value']}   ({r['source']})")
    return EXIT_OK
