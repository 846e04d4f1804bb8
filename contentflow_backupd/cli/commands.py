"""The command table: each command is ``"module:function"`` of this package, imported only when
it runs (``LazyCommand``), so that ``wal push`` (``wal-push``, once per WAL segment) starts fast."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contentflow_backupd.wiring import App

Command = Callable[[argparse.Namespace, "App"], int]
"""A command: its arguments and the application (``wiring.App``, built once from the settings)."""


class LazyCommand:
    """The command ``"module:function"`` of this package, imported only when it runs.

    ``wal push`` is started once per WAL segment (``archive_command``): it must not import the
    catalog, the scheduler, the metrics or the restore code that the other commands need.
    """

    def __init__(self, target: str) -> None:
        self.target = target

    def resolve(self) -> Command:
        module, _, name = self.target.partition(":")
        fn: Command = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        return fn

    def __call__(self, args: argparse.Namespace, app: App) -> int:
        return int(self.resolve()(args, app))


cmd_init = LazyCommand("backups:cmd_init")
cmd_backup = LazyCommand("backups:cmd_backup")
cmd_list = LazyCommand("backups:cmd_list")
cmd_show = LazyCommand("backups:cmd_show")
cmd_verify = LazyCommand("backups:cmd_verify")
cmd_catalog_rebuild = LazyCommand("backups:cmd_catalog_rebuild")
cmd_catalog_upgrade = LazyCommand("backups:cmd_catalog_upgrade")
cmd_config_show = LazyCommand("backups:cmd_config_show")
cmd_expire = LazyCommand("daemon:cmd_expire")
cmd_run = LazyCommand("daemon:cmd_run")
cmd_runs = LazyCommand("daemon:cmd_runs")
cmd_status = LazyCommand("daemon:cmd_status")
cmd_restore = LazyCommand("restore:cmd_restore")
cmd_restore_point = LazyCommand("restore:cmd_restore_point")
cmd_list_restore_points = LazyCommand("restore:cmd_list_restore_points")
cmd_recover = LazyCommand("restore:cmd_recover")
cmd_restore_test = LazyCommand("restore:cmd_restore_test")
cmd_wal_push = LazyCommand("wal:cmd_wal_push")
cmd_wal_prefetch = LazyCommand("wal:cmd_wal_prefetch")
cmd_wal_fetch = LazyCommand("wal:cmd_wal_fetch")
cmd_wal_stream = LazyCommand("wal:cmd_wal_stream")
cmd_wal_verify = LazyCommand("wal:cmd_wal_verify")
cmd_check = LazyCommand("check:cmd_check")
cmd_audit = LazyCommand("audit:cmd_audit")
cmd_keys = {name: LazyCommand(f"keys:cmd_keys_{name}") for name in ("list", "add", "remove", "rotate")}
cmd_audit_verify = LazyCommand("audit:cmd_audit_verify")
