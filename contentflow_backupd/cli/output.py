"""Printing helpers shared by the commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

if TYPE_CHECKING:
    import argparse

    from contentflow_backupd.catalog.base import Catalog
    from contentflow_backupd.model import BackupRecord, RunRecord, Scope
    from contentflow_backupd.wiring import App

log = structlog.get_logger("contentflow_backupd.cli")

Record = TypeVar("Record", "BackupRecord", "RunRecord")
T = TypeVar("T")


def read_clusters(
    args: argparse.Namespace, app: App, read: Callable[[Catalog, Scope], T]
) -> tuple[list[tuple[App, T]], bool]:
    """``read`` of the chosen cluster, or of every configured cluster with ``--all-clusters``,
    each on its catalog opened read-only (no schema upgrade, no reaping, no scope remembered).
    Returns what was read and whether a cluster failed: with ``--all-clusters`` a failing
    cluster is named on stderr and the others are still read (the exit code says it); for one
    cluster the error is raised."""
    from contentflow_backupd.errors import BackupdError

    every = bool(getattr(args, "all_clusters", False))
    read_out: list[tuple[App, T]] = []
    failed = False
    for one in args.fleet.apps() if every else [app]:
        try:
            with one.catalog(read_only=True) as catalog:
                read_out.append((one, read(catalog, one.scope(catalog, read_only=True))))
        except BackupdError as exc:
            if not every:
                raise
            failed = True
            print(f"contentflow-backupd: error: cluster {one.cluster}: {exc}", file=sys.stderr)
    return read_out, failed


def as_reaped(records: list[Record]) -> list[Record]:
    """``records`` as ``reap_interrupted`` would record them, without writing (read-only
    commands never write): a ``running`` one whose process is gone reads ``interrupted``. The
    next command that writes records it so."""
    import dataclasses
    import socket

    from contentflow_backupd.catalog.sql import INTERRUPTED_ERROR
    from contentflow_backupd.ops.locks import pid_alive

    host = socket.gethostname()
    return [
        dataclasses.replace(r, status="interrupted", error=INTERRUPTED_ERROR)
        if r.status == "running" and not pid_alive(r.pid, r.host, host)
        else r
        for r in records
    ]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


# -- tables for people (``--json`` prints the data itself) ----------------------------------------
def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """Columns as wide as their widest cell, two spaces apart; columns ``right`` (numbers,
    sizes) right-aligned; the last column is not padded (it may hold free text)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    last = len(headers) - 1

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            if i in right:
                out.append(cell.rjust(widths[i]))
            else:
                out.append(cell if i == last else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)]) + "\n"


def _aware(when: datetime | str) -> datetime:
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def human_time(when: datetime | str | None) -> str:
    """``2026-12-07 03:06:01`` (UTC), ``-`` for none."""
    if when is None or when == "":
        return "-"
    return _aware(when).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def human_age(when: datetime | str | None, now: datetime | None = None) -> str:
    """``3h 25m ago``, ``in 5m`` (a time to come), ``-`` for none."""
    if when is None or when == "":
        return "-"
    from contentflow_backupd.ops.health.evaluate import human_seconds

    delta = ((now or datetime.now(UTC)) - _aware(when)).total_seconds()
    if delta < 0:
        return f"in {human_seconds(-delta)}"
    return f"{human_seconds(delta)} ago"


def human_duration(seconds: float | None) -> str:
    """``0.8s``, ``42s``, ``3m 5s``: a run's or a backup's duration."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    from contentflow_backupd.ops.health.evaluate import human_seconds

    return human_seconds(seconds)
