"""``audit [--since T]`` and ``audit verify``: the audit trail (ops/audit.py)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from contentflow_backupd.cli.output import print_json
from contentflow_backupd.errors import EXIT_FAILED, EXIT_OK, UsageError
from contentflow_backupd.model import iso, parse_iso, utcnow

if TYPE_CHECKING:
    from contentflow_backupd.wiring import App

log = structlog.get_logger("contentflow_backupd.cli")


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (naive: UTC) or a duration before now (``7d``, ``12h``)."""
    from contentflow_backupd.timespec import parse_duration

    try:
        when = parse_iso(value)
    except ValueError:
        when = None
    if when is not None:
        return when
    try:
        return (now or utcnow()) - timedelta(seconds=parse_duration(value))
    except ValueError:
        raise UsageError(
            f"--since {value!r} is neither a time nor a duration",
            hint="use an ISO 8601 time (2026-11-24T05:00:00Z) or a duration before now (7d, 12h)",
        ) from None


def cmd_audit(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.audit import list_events

    since = parse_since(args.since) if args.since else None
    with app.catalog(read_only=True) as catalog:
        events = list_events(catalog, since=since)
    if args.json:
        print_json([e.to_json() for e in events])
        return EXIT_OK
    if not events:
        print("no audit records" + (f" since {iso(since)}" if since else ""))
        return EXIT_OK
    print(f"{'SEQ':>6}  {'AT':<27} {'ACTOR':<24} {'ACTION':<18} {'OUTCOME':<11} OBJECTS")
    for e in events:
        objects = ", ".join(e.objects[:3]) + (f" (+{len(e.objects) - 3})" if len(e.objects) > 3 else "")
        print(f"{e.seq:>6}  {iso(e.at) or '':<27} {e.actor:<24} {e.action:<18} {e.outcome:<11} {objects}")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace, app: App) -> int:
    """Exit 0 when the chain holds and the repository's copy matches it; 1 naming the first
    broken record or the first difference."""
    from contentflow_backupd.ops.audit import check_audit_copy, verify_audit

    with app.catalog(read_only=True) as catalog:
        result = verify_audit(catalog)
        copy = check_audit_copy(app.repository(), catalog)
    if args.json:
        print_json({**result.to_json(), "ok": result.ok and copy.ok, "repository": copy.to_json()})
    elif result.ok and copy.ok:
        print(
            f"audit trail intact: {result.records} records, last {result.last_seq} ({result.last_hash}); "
            f"the repository's copy ({copy.objects} objects, {copy.records} records) matches"
        )
    failed = False
    if result.broken is not None:
        failed = True
        print(
            f"contentflow-backupd: error: audit record {result.broken.seq} is broken: "
            f"{result.broken.problem}\n  hint: the audit trail was altered; the repository holds a "
            "copy (audit/), restored by `catalog rebuild`",
            file=sys.stderr,
        )
    problems = [*copy.problems, *([copy.first_difference] if copy.first_difference else [])]
    for p in problems:
        failed = True
        where = f" ({p.key})" if p.key else ""
        print(f"contentflow-backupd: error: the repository's audit copy{where}: {p.problem}", file=sys.stderr)
    if problems:
        print(
            "  hint: the repository's copy of the audit trail (audit/) was altered or lost; the "
            "catalog's chain is the reference while `audit verify` finds it intact",
            file=sys.stderr,
        )
    for key in copy.unknown:
        log.warning("audit_unknown_object", key=key)
    return EXIT_FAILED if failed else EXIT_OK
