"""bench/physical.py's table: issue 15's targets against pgBackRest, a missed one is ``NO``, and
every pgBackRest row says it was skipped when pgBackRest is not installed."""

from __future__ import annotations

from typing import Any

from bench import physical


def _run(wall: float) -> dict[str, Any]:
    return {"wall_seconds": wall, "peak_rss_kib": 100_000}


def _spread(median: float) -> dict[str, float]:
    return {"min": median, "median": median, "max": median}


def _archiving(label: str, backlog_max: int, backlog_final: int) -> dict[str, Any]:
    return {
        "archive_command": label,
        "wal_mb_per_s": 20.0,
        "wal_segments_per_s": 1.2,
        "archived_segments_per_s": 1.2,
        "backlog_grew": False,
        "backlog_max": backlog_max,
        "backlog_final": backlog_final,
        "backlog_before": 0,
    }


def _measured(with_pgbackrest: bool) -> dict[str, Any]:
    runs: dict[str, Any] = {
        "pg_basebackup": [_run(2.0), _run(2.2)],
        "ours_backup": [_run(6.0), _run(6.4), _run(6.2)],
        "ours_restore": [_run(5.0), _run(6.0), _run(7.0)],
        "pgbackrest_backup": [],
        "pgbackrest_restore": [],
    }
    costs: dict[str, Any] = {
        "segments": [f"{i:024X}" for i in range(12)],
        "ours_push_seconds": _spread(0.2),
        "ours_direct_push_seconds": _spread(0.3),
        "ours_fetch_seconds": _spread(0.3),
        "ours_push_segments_per_s": 4.8,
        "rss_wal_push_kib": 80_000,
    }
    wal = {"ours": _archiving("wal-push", 5, 2)}
    pitr: dict[str, Any] = {
        "ours_segments_to_replay": 201.0,
        "runs": [{"tool": "ours", "start_to_promoted_seconds": 90.0}],
    }
    if with_pgbackrest:
        runs["pgbackrest_backup"] = [_run(7.0), _run(6.8), _run(6.9)]  # median 6.9: 6.2/6.9 = 0.90
        runs["pgbackrest_restore"] = [_run(3.0), _run(3.0), _run(3.0)]  # 6.0/3.0 = 2.0
        costs["br_push_seconds"] = _spread(0.05)
        costs["br_fetch_seconds"] = _spread(0.6)
        costs["br_async_fetch_seconds"] = _spread(0.15)
        wal["pgbackrest"] = _archiving("pgbackrest archive-push (sync)", 4, 0)
        pitr["pgbackrest_segments_to_replay"] = 200.0
        pitr["runs"].append({"tool": "pgbackrest", "start_to_promoted_seconds": 60.0})
    return {
        "runs": runs,
        "segment_costs": costs,
        "wal_archiving": wal,
        "pitr": pitr,
        "wal_stream": {"peak_rss_kib": 130_000},
    }


def _by_key(with_pgbackrest: bool) -> dict[str, Any]:
    return {row.key: row for row in physical.summarize(_measured(with_pgbackrest))}


def test_ratios_against_pgbackrest_with_the_issue_targets() -> None:
    rows = _by_key(with_pgbackrest=True)
    backup = rows["backup_vs_pgbackrest"]
    assert backup.target == "<= 0.9" and backup.met is True  # medians: 6.2 / 6.9
    assert round(backup.ratio, 3) == round(6.2 / 6.9, 3)
    assert rows["restore_vs_pgbackrest"].met is False and rows["restore_vs_pgbackrest"].ratio == 2.0
    push = rows["archive_command_per_segment"]
    assert push.ratio == 0.2 / 0.05 and push.met is False and push.ours == "200 ms"
    assert rows["archive_command_per_segment_direct"].ratio == 0.3 / 0.05
    fetch = rows["restore_command_per_segment"]  # against archive-get's asynchronous queue
    assert fetch.ratio == 0.3 / 0.15 and fetch.met is False
    sync = rows["restore_command_per_segment_vs_sync"]
    assert sync.ratio == 0.3 / 0.6 and sync.met is True
    # Backlog: max 5 vs 4 is within one segment, final 2 vs 0 is not.
    assert rows["backlog_vs_pgbackrest"].met is False
    assert rows["pitr_recovery"].ratio == 1.5 and rows["pitr_recovery"].met is False
    assert "201 / 200 segments" in rows["pitr_recovery"].measurement
    assert rows["push_capacity"].met is True  # 4.8 / 1.2 = 4x


def test_without_pgbackrest_every_pgbackrest_row_says_skipped() -> None:
    rows = _by_key(with_pgbackrest=False)
    skipped = [r for r in rows.values() if r.baseline == physical.SKIPPED]
    assert {r.key for r in skipped} == {
        "backup_vs_pgbackrest",
        "restore_vs_pgbackrest",
        "archive_command_per_segment",
        "archive_command_per_segment_direct",
        "restore_command_per_segment",
        "restore_command_per_segment_vs_sync",
        "backlog_vs_pgbackrest",
        "pitr_recovery",
    }
    assert all(r.met is None and r.ratio is None for r in skipped)
    assert rows["backup_vs_pg_basebackup"].met is False  # 6.0 / 2.0, min of runs
