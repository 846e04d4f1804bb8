"""The checks a restored database must pass: used by restore drills and by ``recover``.

``run_checks(facts, db, expected, user_checks_file)`` runs, in this order, against a running
server (``expected`` is the backup's manifest ``details``, recorded when it was taken; ``facts``
reads the database: ``source.base.DatabaseFacts``):

==============  ==============================================================================
``connect``     the server accepts queries on the database
``schema``      the schema fingerprint equals the recorded one (names the relations that differ)
``read_tables`` every user table can be read in full (every column of every row, TOAST too)
``row_counts``  rows equal the exact counts recorded in the dump's snapshot (logical backups);
                reported, not compared, where only estimates were recorded (physical backups)
``amcheck``     ``bt_index_check`` on every valid user B-tree index, when the extension is there
                (created first only with ``create_extensions``: scratch instances)
``user_check:N`` each query of the user's checks file (``BACKUPD_DRILL__CHECKS``) returns true
==============  ==============================================================================

A check is ``passed`` or ``failed`` (it ran, and that is its verdict), ``not_run`` (it should
have run but could not: its tool is missing, its server does not start or answer, a timeout; the
detail says why and what to do) or ``skipped`` (it does not apply, or its input was not
recorded). Only ``failed`` fails a drill; a ``not_run`` check is reported as such, never as a
pass. The comparisons are pure functions, tested as tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from contentflow_backupd.errors import BackupdError
from contentflow_backupd.source.base import Database, DatabaseFacts, IndexCheck, SchemaFingerprint, TableRead
from contentflow_backupd.sqltext import split_sql

log = structlog.get_logger(__name__)

CheckStatus = Literal["passed", "failed", "not_run", "skipped"]
_LISTED = 10  # names listed in a detail before "and N more"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: CheckStatus
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def passed(results: Sequence[CheckResult], *, strict: bool = False) -> bool:
    """No check failed (skipped ones do not count; ``not_run`` ones count only when ``strict``)."""
    bad = ("failed", "not_run") if strict else ("failed",)
    return all(r.status not in bad for r in results)


def not_run(results: Sequence[CheckResult]) -> list[CheckResult]:
    """The checks that could not run."""
    return [r for r in results if r.status == "not_run"]


class CheckLog:
    """Collects the results of a drill (or recovery) in order; a step that raised becomes the
    failed check named for it, with the error's message and hint."""

    def __init__(self, checks: list[CheckResult]) -> None:
        self.checks = checks

    def add(self, check: CheckResult) -> None:
        self.checks.append(check)

    def extend(self, checks: Sequence[CheckResult]) -> None:
        self.checks.extend(checks)

    def restore_passed(
        self, backup_id: str, what: str, seconds: float, *, into: str = "", then: str = ""
    ) -> None:
        """The drill's ``restore`` check once the restore succeeded, for both modes:
        ``backup <id> restored[ into <where>] (<what>) in <seconds>s<then>``."""
        where = f" into {into}" if into else ""
        self.add(
            CheckResult(
                "restore", "passed", f"backup {backup_id} restored{where} ({what}) in {seconds:.1f}s{then}"
            )
        )

    def fail(self, name: str, exc: BaseException) -> None:
        if isinstance(exc, BackupdError):
            detail = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        else:
            log.exception("check_step_crashed", step=name)
            detail = f"{type(exc).__name__}: {exc}"
        self.checks.append(CheckResult(name, "failed", detail))


def run_checks(
    facts: DatabaseFacts,
    conninfo: Database,
    expected: Mapping[str, Any],
    user_checks_file: Path | None,
    *,
    create_extensions: bool = False,
) -> list[CheckResult]:
    """Run every check against the database of ``conninfo``; never raises for a failed check
    (an unreachable server is the failed ``connect`` check, the others are then skipped)."""
    try:
        state = facts.server_state(conninfo)
    except BackupdError as exc:
        unrun = [CheckResult(n, "not_run", "the server does not accept queries") for n in _AFTER_CONNECT]
        return [CheckResult("connect", "failed", exc.message), *unrun]
    results = [
        CheckResult(
            "connect",
            "passed",
            f"PostgreSQL {state.server_version_num // 10000} accepts queries on {conninfo.display()}"
            + (" (in recovery, read-only)" if state.in_recovery else ""),
        )
    ]
    try:
        results.append(compare_schema(expected, facts.schema_fingerprint(conninfo)))
    except BackupdError as exc:
        results.append(CheckResult("schema", "failed", exc.message))
    try:
        reads = facts.read_tables(conninfo)
    except BackupdError as exc:
        results.append(CheckResult("read_tables", "failed", exc.message))
        results.append(CheckResult("row_counts", "not_run", "the tables could not be listed"))
    else:
        results.append(check_reads(reads))
        results.append(compare_counts(expected, reads))
    try:
        results.append(
            amcheck_result(facts.check_btree_indexes(conninfo, create_extension=create_extensions))
        )
    except BackupdError as exc:
        results.append(CheckResult("amcheck", "failed", exc.message))
    results.extend(user_checks(facts, conninfo, user_checks_file))
    return results


_AFTER_CONNECT = ("schema", "read_tables", "row_counts", "amcheck", "user_checks")


# -- comparisons (pure) ----------------------------------------------------------------------
def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def compare_schema(expected: Mapping[str, Any], actual: SchemaFingerprint) -> CheckResult:
    want = expected.get("schema_fingerprint")
    if not isinstance(want, str):
        return CheckResult(
            "schema", "skipped", "the backup recorded no schema fingerprint (taken by an older version)"
        )
    if want == actual.digest:
        count = len(actual.objects) - 1 if actual.objects else None
        relations = f" ({count} relations)" if count is not None else ""
        return CheckResult("schema", "passed", f"fingerprint {want[:12]} matches{relations}")
    recorded = expected.get("schema_objects")
    if not isinstance(recorded, Mapping) or actual.objects is None:
        return CheckResult(
            "schema",
            "failed",
            f"fingerprint {actual.digest[:12]} differs from {want[:12]}, recorded at backup time",
        )
    parts = []
    missing = sorted(k for k in recorded if k not in actual.objects)
    changed = sorted(k for k in recorded if k in actual.objects and actual.objects[k] != recorded[k])
    unexpected = sorted(k for k in actual.objects if k not in recorded)
    if missing:
        parts.append(f"missing {_names(missing)}")
    if changed:
        what = ["schemas or extensions" if k == "" else k for k in changed]
        parts.append(f"changed {_names(what)}")
    if unexpected:
        parts.append(f"not in the backup {_names(unexpected)}")
    return CheckResult(
        "schema",
        "failed",
        "the schema differs from the one recorded at backup time: " + "; ".join(parts or ["(no detail)"]),
    )


def check_reads(reads: Sequence[TableRead]) -> CheckResult:
    bad = [r for r in reads if r.error is not None]
    if bad:
        shown = "; ".join(f"{r.name}: {r.error}" for r in bad[:_LISTED])
        more = f" (and {len(bad) - _LISTED} more)" if len(bad) > _LISTED else ""
        return CheckResult(
            "read_tables", "failed", f"{len(bad)} of {len(reads)} tables cannot be read: {shown}{more}"
        )
    rows = sum(r.rows for r in reads)
    size = sum(r.bytes for r in reads)
    return CheckResult(
        "read_tables", "passed", f"{len(reads)} tables read in full: {rows} rows, {size} bytes as text"
    )


def compare_counts(expected: Mapping[str, Any], reads: Sequence[TableRead]) -> CheckResult:
    exact = expected.get("row_counts")
    estimates = expected.get("row_estimates")
    got = {r.name: r.rows for r in reads if r.error is None}
    unreadable = {r.name for r in reads if r.error is not None}
    if not isinstance(exact, Mapping) and not isinstance(estimates, Mapping):
        total = sum(got.values())
        return CheckResult(
            "row_counts",
            "skipped",
            f"the backup recorded no row counts; restored {total} rows in {len(got)} tables",
        )
    if isinstance(exact, Mapping) and exact:
        wrong = [
            f"{name}: {count} recorded, {got.get(name, 'no such table')} restored"
            for name, count in sorted(exact.items())
            if name not in unreadable and got.get(name) != count
        ]
        if wrong:
            return CheckResult(
                "row_counts",
                "failed",
                f"{len(wrong)} of {len(exact)} tables differ from the exact counts recorded at backup "
                f"time: {'; '.join(wrong[:_LISTED])}"
                + (f" (and {len(wrong) - _LISTED} more)" if len(wrong) > _LISTED else ""),
            )
        same = len(exact) - len(unreadable & set(exact))
        detail = f"{same} tables hold exactly the rows counted at backup time ({sum(exact.values())} rows)"
        if isinstance(estimates, Mapping) and estimates:
            rest = sum(got.get(name, 0) for name in estimates)
            detail += (
                f"; {len(estimates)} tables were not counted at backup time (the dump ended first, "
                f"or they were locked): {rest} rows restored"
            )
        return CheckResult("row_counts", "passed", detail)
    assert isinstance(estimates, Mapping)
    total = sum(got.values())
    estimated = sum(max(int(v), 0) for v in estimates.values())
    return CheckResult(
        "row_counts",
        "passed",
        f"reported, not compared (the backup recorded estimates only): {total} rows restored in "
        f"{len(got)} tables; about {estimated} estimated at backup time",
    )


def amcheck_result(check: IndexCheck) -> CheckResult:
    if not check.available:
        return CheckResult("amcheck", "skipped", check.reason)
    if check.failures:
        shown = "; ".join(f"{name}: {error}" for name, error in check.failures[:_LISTED])
        return CheckResult(
            "amcheck",
            "failed",
            f"{len(check.failures)} of {check.checked} B-tree indexes are corrupt: {shown}",
        )
    return CheckResult("amcheck", "passed", f"{check.checked} B-tree indexes verified (bt_index_check)")


# -- the user's checks -----------------------------------------------------------------------
def user_checks(facts: DatabaseFacts, conninfo: Database, path: Path | None) -> list[CheckResult]:
    if path is None:
        return [CheckResult("user_checks", "skipped", "no checks file (BACKUPD_DRILL__CHECKS)")]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [CheckResult("user_checks", "failed", f"cannot read the checks file {path}: {exc}")]
    statements = split_sql(text)
    if not statements:
        return [CheckResult("user_checks", "failed", f"the checks file {path} holds no query")]
    results = []
    for n, (line, query) in enumerate(statements, start=1):
        ok, outcome = _run_user_query(facts, conninfo, query)
        snippet = " ".join(query.split())
        snippet = snippet if len(snippet) <= 160 else snippet[:157] + "..."
        results.append(
            CheckResult(
                f"user_check:{n}",
                "passed" if ok else "failed",
                f"{path.name} line {line}: {snippet}: {outcome}",
            )
        )
    return results


def _run_user_query(facts: DatabaseFacts, conninfo: Database, query: str) -> tuple[bool, str]:
    try:
        return facts.run_boolean_query(conninfo, query)
    except BackupdError as exc:
        return False, exc.message
