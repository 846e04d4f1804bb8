"""``check``: what the configured role and storage credentials can and cannot do."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from contentflow_backupd.cli.output import print_json
from contentflow_backupd.errors import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from contentflow_backupd.ops.repo.check import CheckItem, CheckReport, ObjectLockState
    from contentflow_backupd.wiring import App


def cmd_check(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.repo.check import run_check
    from contentflow_backupd.source.privileges import role_privileges

    info = app.conninfo
    lock_mode = app.object_lock
    report = run_check(
        app.mode,
        lambda: role_privileges(info, app.mode),
        app.open_storage,  # opened, checked and closed by run_check
        endpoint_url=app.s3_endpoint_url if app.repository_url.startswith("s3:") else None,
        object_lock=(lambda: _object_lock(app, str(lock_mode))) if lock_mode else None,
        delete_required=not lock_mode,
    )
    if args.json:
        print_json(report.to_json())
    else:
        _print(report)
    return EXIT_OK if report.ok else EXIT_FAILED


def _object_lock(app: App, mode: str) -> ObjectLockState:
    """Does the bucket support object lock ``mode``? Asked of the storage's optional
    ``ObjectLockReport`` ability (``storage.base.object_lock_status``)."""
    from contentflow_backupd.errors import BackupdError
    from contentflow_backupd.ops.repo.check import ObjectLockState

    if not app.repository_url.startswith("s3://"):
        return ObjectLockState(False, f"BACKUPD_S3__OBJECT_LOCK={mode} needs an s3:// repository")
    from contentflow_backupd.storage.base import object_lock_status

    try:
        storage = app.open_storage()
        try:
            supported, _mode, detail = object_lock_status(storage)
        finally:
            storage.close()
    except BackupdError as exc:
        return ObjectLockState(False, f"cannot read the bucket's object lock configuration: {exc.message}")
    return ObjectLockState(supported, detail)


def _print(report: CheckReport) -> None:
    for title, items in ((f"database ({report.mode})", report.database), ("storage", report.storage)):
        print(f"{title}:")
        for item in items:
            print(f"  {_mark(item)} {item.name}: {item.detail}")
            if not item.ok and item.fix:
                print(f"      fix: {item.fix}")
    missing = [i.name for i in (*report.database, *report.storage) if i.failed]
    if missing:
        print(f"missing: {', '.join(missing)}")
    else:
        print("ok: everything the configured mode needs is allowed")


def _mark(item: CheckItem) -> str:
    if item.ok:
        return "ok  "
    return "FAIL" if item.required else "warn"
