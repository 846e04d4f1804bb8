"""Step 4 of ``migrate``: is the database what the applied migrations say it should be?

- ``migrations_recorded``: every migration on disk finished in ``_prisma_migrations``, none failed;
- ``schema_matches_migrations``: the schema after equals the schema before with the applied
  migrations replayed on it (``migrate/expect.py``); the diff before -> after is recorded;
- ``migrate_check:N``: the queries of ``BACKUPD_MIGRATE__CHECKS`` return true.

``schema_matches_migrations`` is ``not_run`` (not ``failed``) when the comparison could not be
made: the live schema could not be dumped, or the expected one could not be computed (its
scratch PostgreSQL did not start, a tool is missing, a migration's SQL does not replay on the
scratch copy, a timeout). The guard keeps the migration then (``migrate/guard.py``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from contentflow_backupd.errors import BackupdError
from contentflow_backupd.migrate.prisma import MigrationFile
from contentflow_backupd.ops.drill.checks import CheckResult
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.schema import dump_schema

if TYPE_CHECKING:
    from contentflow_backupd.catalog.guard_records import MigrationRunRecord
    from contentflow_backupd.migrate.guard import GuardDeps, GuardOptions, MigrateResult


def validate(
    opts: GuardOptions,
    deps: GuardDeps,
    result: MigrateResult,
    info: ConnInfo,
    on_disk: Sequence[MigrationFile],
    pending: Sequence[MigrationFile],
    rows: Sequence[Any],
) -> list[CheckResult]:
    checks: list[CheckResult] = []
    applied = {r.migration_name for r in rows if r.applied}
    failed = sorted({r.migration_name for r in rows if r.failed})
    unfinished = [m.name for m in on_disk if m.name not in applied]
    if failed or unfinished:
        detail = []
        if failed:
            detail.append("failed in _prisma_migrations: " + ", ".join(failed))
        if unfinished:
            detail.append("not recorded as finished: " + ", ".join(unfinished))
        checks.append(CheckResult("migrations_recorded", "failed", "; ".join(detail)))
    else:
        checks.append(
            CheckResult(
                "migrations_recorded", "passed", f"all {len(on_disk)} migrations finished, none failed"
            )
        )
    record = result.record
    scripts = [(m.name, m.sql) for m in pending if m.name in set(result.applied)]
    try:
        after = dump_schema(info, bin_dir=opts.pg_bin)
    except BackupdError as exc:
        checks.append(_not_run("the schema after the migration could not be dumped", exc))
    else:
        record.schema_after = after
        record.details["schema_diff"] = schema_diff(record.schema_before or "", after)
        checks.append(_schema_check(deps, record, after, scripts))
    if opts.checks_file is not None:
        user = deps.user_checks(info, opts.checks_file)
        checks.extend(
            CheckResult(c.name.replace("user_check", "migrate_check"), c.status, c.detail) for c in user
        )
    return checks


def _not_run(why: str, exc: BackupdError) -> CheckResult:
    hint = f" (hint: {exc.hint})" if exc.hint else ""
    return CheckResult(
        "schema_matches_migrations",
        "not_run",
        f"could not run: {why}: {exc.message}{hint}. What to do: fix that cause, and compare the "
        "live schema with the migrations yourself (`migrate list --json` holds the schema diff); "
        "this proves nothing either way, so the migration is kept unless --strict-checks is given",
    )


def _schema_check(
    deps: GuardDeps, record: MigrationRunRecord, after: str, scripts: Sequence[tuple[str, str]]
) -> CheckResult:
    try:
        expected = deps.expected_schema(record.schema_before or "", scripts)
    except BackupdError as exc:
        return _not_run("the expected schema could not be computed in a scratch PostgreSQL", exc)
    unexplained = schema_diff(expected, after)
    if unexplained:
        record.details["unexplained_schema_diff"] = unexplained
        return CheckResult(
            "schema_matches_migrations",
            "failed",
            "the schema after differs from the schema before plus the applied migrations:\n" + unexplained,
        )
    return CheckResult(
        "schema_matches_migrations",
        "passed",
        f"the schema changed exactly as {len(scripts)} applied migration(s) say",
    )


def schema_diff(before: str, after: str) -> str:
    """A unified diff of two normalised schema dumps ('' when equal)."""
    if before == after:
        return ""
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), "before", "after", n=2
        )
    )
