"""Step 5 of ``migrate``: after a failure, roll back with the migrations' ``down.sql`` files, or
say exactly how to recover from the safety net (``recovery_plan``), and ``migrate rollback
--to-restore-point`` that carries the plan out for logical backups.

Why the failed migration itself needs no ``down.sql``: PostgreSQL runs a multi-statement script
sent as one query (what Prisma does with ``migration.sql``) as one implicit transaction, so a
migration that failed left nothing behind; it is only marked rolled back. The ``down.sql`` files
undo the migrations of the same run that did finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import iso, utcnow
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.schema import (
    dump_schema,
    roll_back_with_down_sql,
    wal_bytes_since,
    write_counters,
)

log = structlog.get_logger(__name__)


@dataclass
class MigrationDone:
    """A migration this run applied (or tried to): its name and its ``down.sql``, if any."""

    name: str
    down_sql: str | None
    finished: bool


def roll_back(
    info: ConnInfo,
    done: Sequence[MigrationDone],
    *,
    schema_before: str,
    lock_timeout_ms: int,
    dump: Any = dump_schema,
) -> dict[str, Any]:
    """Undo ``done`` (in reverse order) in one transaction and check the schema is the one from
    before. Returns the ``rollback`` JSON: ``status`` (``rolled_back``, ``impossible``,
    ``failed``), what ran, and the schema comparison."""
    finished = [d for d in done if d.finished]
    missing = [d.name for d in finished if d.down_sql is None]
    if missing:
        return {
            "status": "impossible",
            "detail": "no down.sql beside migration.sql of " + ", ".join(missing) + ": cannot undo them",
            "ran": [],
        }
    scripts = [(d.name, d.down_sql or "") for d in reversed(finished)]
    try:
        roll_back_with_down_sql(info, scripts, [d.name for d in done], lock_timeout_ms=lock_timeout_ms)
    except BackupdError as exc:
        return {"status": "failed", "detail": exc.message, "ran": []}
    after = dump(info)
    same = after == schema_before
    log.info("migration_rolled_back", migrations=[d.name for d in done], schema_equals_before=same)
    return {
        "status": "rolled_back" if same else "failed",
        "detail": (
            "down.sql of " + (", ".join(n for n, _ in scripts) or "no migration")
            + " ran in one transaction; "
            + ("the schema equals the one from before" if same else "but the schema differs from before")
        ),
        "ran": [f"{n}/down.sql" for n, _ in scripts],
        "marked_rolled_back": [d.name for d in done],
        "schema_equals_before": same,
    }  # fmt: skip


def recovery_plan(
    info: ConnInfo,
    *,
    mode: str,
    restore_point: str | None,
    backup_id: str | None,
    lsn: str | None,
    safety_net_at: datetime | None,
    counters_before: dict[str, int] | None,
    config_arg: str,
) -> dict[str, Any]:
    """What to run to get back to before the migration, and what that would lose."""
    now = utcnow()
    loses: dict[str, Any] = {
        "since": iso(safety_net_at),
        "seconds": None if safety_net_at is None else round((now - safety_net_at).total_seconds(), 1),
    }
    try:
        counters = write_counters(info)
    except BackupdError:
        counters = None
    if counters is not None and counters_before is not None:
        written = {
            t: counters.get(t, 0) - counters_before.get(t, 0)
            for t in sorted(set(counters) | set(counters_before))
            if counters.get(t, 0) != counters_before.get(t, 0)
        }
        loses["rows_written_since_by_table"] = written
    if mode == "physical" and lsn is not None:
        loses["wal_bytes_since"] = wal_bytes_since(info, lsn)
        commands = [
            f"contentflow-backupd{config_arg} restore latest --pgdata NEW_DATA_DIR "
            f"--target-name {restore_point} --target-action promote",
            "pg_ctl -D NEW_DATA_DIR -o '-p NEW_PORT' start",
        ]
        what = (
            f"a point-in-time recovery to restore point {restore_point} (at {lsn}) into a new data "
            "directory, started on a free port beside the live server; check it, then stop the "
            "live server and point the application at the recovered one"
        )
    else:
        commands = [
            f"contentflow-backupd{config_arg} migrate rollback --to-restore-point {restore_point} --confirm",
            f"contentflow-backupd{config_arg} restore {backup_id} --to-database NEW_DATABASE_URL --create",
        ]
        what = (
            f"restore backup {backup_id} (taken just before the migration) into the live database "
            "(the first command), or into a new database to compare first (the second)"
        )
    return {
        "restore_point": restore_point,
        "backup_id": backup_id,
        "what": what,
        "commands": commands,
        "would_lose": loses,
        "note": "every change committed after the safety net is lost by restoring it: "
        "check would_lose before running the commands",
    }


def render_plan(plan: dict[str, Any]) -> str:
    lines = ["Recovery plan:", f"  {plan['what']}"]
    lines += [f"    {c}" for c in plan["commands"]]
    lose = plan.get("would_lose", {})
    lines.append(
        f"  Restoring loses everything committed since {lose.get('since')} ({lose.get('seconds')} s ago)."
    )
    written = lose.get("rows_written_since_by_table")
    if written:
        lines.append("  Rows written since, by table: " + ", ".join(f"{t} {n}" for t, n in written.items()))
    if lose.get("wal_bytes_since") is not None:
        lines.append(f"  WAL written since the restore point: {lose['wal_bytes_since']} bytes.")
    return "\n".join(lines)
