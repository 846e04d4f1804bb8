"""What a person at a terminal reads: `list`, `runs`, `keys list` and `list-restore-points` print
aligned tables with human sizes, times and ages (``--json`` prints the data itself, unchanged)."""

from __future__ import annotations

import re

import pytest

from tests.e2e.helpers import seed
from tests.support.cli import Cli
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg


def table(text: str, first_header: str) -> list[str]:
    """The lines of the table whose header line starts with ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_header))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def assert_aligned(lines: list[str], left_columns: list[str]) -> list[dict[str, str]]:
    """Each named left-aligned column starts at its header's position on every row; returns the
    rows as {header: cell} for those columns."""
    header = lines[0]
    starts = [header.index(name) for name in left_columns]
    rows = []
    for line in lines[1:]:
        cells = {}
        for name, start, end in zip(left_columns, starts, [*starts[1:], None], strict=True):
            assert line[start] != " " and (start == 0 or line[start - 1] == " "), (name, lines)
            cells[name] = line[start:end].strip() if end else line[start:].split("  ")[0]
        rows.append(cells)
    return rows


AGE = re.compile(r"^(\d+[dhms]( \d+[dhms])? ago|-)$")


def test_tables_are_aligned_with_human_sizes_and_ages(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    seed(pg, pg_db, size_mb=2)
    cli.run("init", check=True)
    cli.run("backup", "--kind", "full", check=True)
    cli.run("backup", "--kind", "incremental", check=True)
    cli.env["BACKUPD_WAL__ARCHIVE_TIMEOUT"] = "5"  # nothing archives WAL here
    cli.run("restore-point", "before-the-release", check=True)
    cli.run("restore-point", "a-much-longer-restore-point-name-than-usual", check=True)

    listed = cli.run("list", check=True).stdout
    rows = assert_aligned(table(listed, "ID"), ["ID", "KIND", "MODE", "STATUS", "FINISHED (UTC)", "AGE"])
    assert [r["KIND"] for r in rows] == ["full", "incremental"]
    assert all(AGE.match(r["AGE"]) for r in rows), rows
    assert re.search(r"\d+\.\d (KiB|MiB)", listed), listed
    assert [b["kind"] for b in cli.ok_json("list")] == ["full", "incremental"]  # --json unchanged

    runs = cli.run("runs", check=True).stdout
    rows = assert_aligned(table(runs, "ID"), ["JOB", "TRIGGER", "STATUS", "STARTED (UTC)", "AGE"])
    assert {r["JOB"] for r in rows} >= {"full", "incremental"}
    assert all(AGE.match(r["AGE"]) for r in rows), rows

    keys = cli.run("keys", "list", check=True).stdout
    assert_aligned(table(keys, "KEY-ENCRYPTION KEY"), ["KEY-ENCRYPTION KEY", "KIND", "CREATED (UTC)"])
    assert_aligned(table(keys, "DATA KEY"), ["DATA KEY", "ACTIVE", "CREATED (UTC)"])

    points = cli.run("list-restore-points", check=True).stdout
    rows = assert_aligned(table(points, "NAME"), ["NAME", "LSN", "CREATED (UTC)", "AGE"])
    assert [r["NAME"] for r in rows] == ["before-the-release", "a-much-longer-restore-point-name-than-usual"]
    assert all(AGE.match(r["AGE"]) for r in rows), rows
