"""``migrate check``: the migrations directory against ``_prisma_migrations``, without changing
anything.

Rules (``run_check``):

- ``applied``: names with a row that finished and was not rolled back, in name order (including
  names no longer on disk, which are also ``missing``);
- ``pending``: migrations on disk without such a row, in name order: what ``migrate deploy``
  would apply next (a ``failed`` migration stays pending too; Prisma retries it once resolved);
- ``modified``: applied migrations on disk whose ``migration.sql`` no longer matches the checksum
  of its newest applied row, by Prisma's rule (``prisma.checksum_matches``);
- ``missing``: applied names without a valid migration folder on disk;
- ``failed``: names with a row that neither finished nor was rolled back (Prisma's P3009 blocks
  ``migrate deploy`` until it is resolved);
- ``risky``: statements of pending migrations that destroy data or hold heavy locks
  (``risk.KINDS``), with their table and its current size;
- ``problems``: directory problems, and pending SQL that PostgreSQL's parser rejects.

``safe`` when all of modified, missing, failed, risky and problems are empty;
``safe_with(allow_risky=True)`` ignores ``risky`` (the guard's ``--allow-risky``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contentflow_backupd.migrate.prisma import MigrationDir, MigrationFile, read_migrations_dir
from contentflow_backupd.migrate.risk import (
    KINDS,
    Finding,
    RiskyStatement,
    analyze_migration,
    assess,
    relation_names,
)
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.prisma_db import PrismaMigrationRow, read_prisma_migrations, relation_sizes

__all__ = ["CheckReport", "History", "compare_history", "run_check"]


@dataclass(frozen=True)
class CheckReport:
    """What ``migrate check`` found. :meth:`to_json` has exactly the keys of the issue."""

    applied: list[str]
    pending: list[str]
    modified: list[str]
    missing: list[str]
    failed: list[str]
    risky: list[RiskyStatement]
    problems: list[str]
    migrations: MigrationDir
    """The directory as read (every valid migration file, with checksums and ``down.sql``)."""
    pending_files: list[MigrationFile] = field(default_factory=list)
    """The pending migrations, in order (what the guard applies, audits and may roll back)."""

    def safe_with(self, *, allow_risky: bool = False) -> bool:
        """Would deploying be safe? ``allow_risky`` accepts risky statements (``--allow-risky``)."""
        blockers = [self.problems, self.modified, self.missing, self.failed]
        if not allow_risky:
            blockers.append([r.kind for r in self.risky])
        return not any(blockers)

    @property
    def safe(self) -> bool:
        return self.safe_with(allow_risky=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": list(self.applied),
            "pending": list(self.pending),
            "modified": list(self.modified),
            "missing": list(self.missing),
            "failed": list(self.failed),
            "risky": [r.to_json() for r in self.risky],
            "problems": list(self.problems),
        }

    def render(self) -> str:
        """The terminal form: counts, then each list that is not empty, then the verdict."""
        lines = [
            f"migrations in {self.migrations.path}: {len(self.applied)} applied, {len(self.pending)} pending"
        ]
        sections = [
            ("pending (in order)", self.pending, ""),
            ("modified after they were applied", self.modified, "the file no longer matches its checksum"),
            ("missing on disk", self.missing, "recorded as applied, no folder"),
            ("failed", self.failed, "blocks deploy: `prisma migrate resolve` it first"),
        ]
        for title, names, note in sections:
            if names:
                lines.append(f"{title}{': ' + note if note else ''}:")
                lines.extend(f"  {n}" for n in names)
        if self.risky:
            lines.append("risky statements in pending migrations:")
            for r in self.risky:
                size = "" if r.table_bytes is None else f" ({_human(r.table_bytes)})"
                table = f" on {r.table}{size}" if r.table else ""
                lines.append(f"  {r.migration}: {r.kind}{table}")
                lines.append(f"    {r.statement}")
                lines.append(f"    {KINDS[r.kind].description}")
        if self.problems:
            lines.append("problems:")
            lines.extend(f"  {p}" for p in self.problems)
        if self.safe:
            lines.append("safe to deploy")
        elif self.safe_with(allow_risky=True):
            lines.append("NOT safe to deploy: risky statements (review them; the guard needs --allow-risky)")
        else:
            lines.append("NOT safe to deploy")
        return "\n".join(lines)


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@dataclass(frozen=True)
class History:
    """:func:`compare_history`'s answer: the directory against the rows (names only)."""

    applied: list[str]
    pending: list[MigrationFile]
    modified: list[str]
    missing: list[str]
    failed: list[str]


def compare_history(migrations: MigrationDir, rows: list[PrismaMigrationRow]) -> History:
    """The pure part of :func:`run_check`: classify names by the rules of the module docstring."""
    newest_applied: dict[str, PrismaMigrationRow] = {}
    failed: set[str] = set()
    for row in rows:  # oldest start first: later rows win
        if row.applied:
            newest_applied[row.migration_name] = row
        elif row.failed:
            failed.add(row.migration_name)
    on_disk = migrations.by_name()
    applied = sorted(newest_applied)
    return History(
        applied=applied,
        pending=[m for m in migrations.migrations if m.name not in newest_applied],
        modified=[
            n for n in applied if n in on_disk and not on_disk[n].matches_checksum(newest_applied[n].checksum)
        ],
        missing=[n for n in applied if n not in on_disk],
        failed=sorted(failed),
    )


def run_check(conninfo: ConnInfo, migrations_dir: Path, *, large_table_bytes: int) -> CheckReport:
    """Read the directory and the database (read-only) and report (module docstring).
    ``SourceError`` when the database cannot be reached or read; everything else is reported."""
    migrations = read_migrations_dir(migrations_dir)
    history = compare_history(migrations, read_prisma_migrations(conninfo))
    problems = list(migrations.problems)
    findings: list[Finding] = []
    for m in history.pending:
        analysis = analyze_migration(m.name, m.sql, source=str(m.path))
        findings.extend(analysis.findings)
        problems.extend(analysis.problems)
    risky: list[RiskyStatement] = []
    if findings:
        sizes = relation_sizes(conninfo, relation_names(findings))
        risky = assess(
            findings, sizes.found, current_schema=sizes.current_schema, large_table_bytes=large_table_bytes
        )
    return CheckReport(
        applied=history.applied,
        pending=[m.name for m in history.pending],
        modified=history.modified,
        missing=history.missing,
        failed=history.failed,
        risky=risky,
        problems=problems,
        migrations=migrations,
        pending_files=history.pending,
    )
