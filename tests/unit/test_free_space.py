"""The free-space reserve drills and large temporary files keep for the WAL spools
(``fsutil.free_space_reserve``): 1 GiB, or 5% of a smaller file system. The refusal itself runs
on a real file system in tests/e2e/test_isolation.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from contentflow_backupd.fsutil import RESERVE_BYTES, free_space_reserve, require_free_space

GiB = 1024**3


@pytest.mark.parametrize(
    ("total", "reserve"),
    [
        (0, 0),
        (64 * 1024**2, int(64 * 1024**2 * 0.05)),
        (10 * GiB, GiB // 2),
        (20 * GiB, GiB),
        (4096 * GiB, GiB),
    ],
)
def test_the_reserve_is_1_gib_or_5_percent_of_a_smaller_file_system(total: int, reserve: int) -> None:
    assert free_space_reserve(total) == reserve
    assert free_space_reserve(total) <= RESERVE_BYTES


def test_a_path_that_does_not_exist_yet_is_judged_by_its_nearest_parent(tmp_path: Path) -> None:
    """The state directory's ``tmp`` or ``drills`` may not exist yet: its parent's file system
    counts (this test's file system has room: no refusal)."""
    require_free_space(tmp_path / "state" / "tmp", "a test")
