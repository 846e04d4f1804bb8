"""Turn the raw runs into the results table (and a CPU breakdown table)."""

from __future__ import annotations

import statistics
from typing import Any

from bench.report import Row, best, mib, secs, spread

BACKUP_WALL_MAX = 1.25
CRON_WALL_MAX = 1.0
CRON_SIZE_MAX = 1.0
RSS_MB_MAX = 300
RSS_FLAT_MAX = 1.15
RESTORE_WALL_MAX = 1.25
INCREMENTAL_SHARE_MAX = 0.10

TARGETS: dict[str, Any] = {
    "backup_vs_pg_dump_wall_ratio_max": BACKUP_WALL_MAX,
    "backup_vs_cron_gzip_wall_ratio_below": CRON_WALL_MAX,
    "backup_vs_cron_gzip_size_ratio_below": CRON_SIZE_MAX,
    "backup_peak_rss_mb_max": RSS_MB_MAX,
    "backup_peak_rss_large_over_small_max": RSS_FLAT_MAX,
    "restore_vs_pg_restore_wall_ratio_max": RESTORE_WALL_MAX,
    "incremental_share_of_full_max": INCREMENTAL_SHARE_MAX,
}


def _walls(runs: list[dict[str, Any]]) -> list[float]:
    return [float(r["wall_seconds"]) for r in runs]


def _mb(kib: int) -> float:
    return kib * 1024 / 1_000_000


def _mb_text(kib: int) -> str:
    return f"{_mb(kib):.0f} MB"


def _child_rss(runs: list[dict[str, Any]], name: str) -> int:
    return max((int(r["children"].get(name, {}).get("peak_rss_kib", 0)) for r in runs), default=0)


def _time_row(
    key: str,
    label: str,
    ours_runs: list[dict[str, Any]],
    base_runs: list[dict[str, Any]],
    limit: float,
    strict: bool,
) -> Row:
    ours, base = _walls(ours_runs), _walls(base_runs)
    ratio = best(ours) / best(base)
    met = ratio < limit if strict else ratio <= limit
    target = f"< {limit:g}" if strict else f"<= {limit:g}"
    raw = {
        "ours_seconds": spread(ours),
        "baseline_seconds": spread(base),
        "other_load_cores_in_fastest_runs": [
            _fastest(ours_runs).get("other_load_cores"),
            _fastest(base_runs).get("other_load_cores"),
        ],
    }
    return Row(label, secs(best(ours)), secs(best(base)), ratio, target, met, key, raw)


def _rss_row(key: str, label: str, runs: list[dict[str, Any]]) -> Row:
    kib = max(int(r["peak_rss_kib"]) for r in runs)
    pgd = _child_rss(runs, "pg_dump")
    raw = {
        "ours_peak_rss_kib": kib,
        "pg_dump_peak_rss_kib": pgd,
    }
    ours = _mb_text(kib)
    base = f"(pg_dump {_mb_text(pgd)})"
    return Row(label, ours, base, None, f"<= {RSS_MB_MAX} MB", _mb(kib) <= RSS_MB_MAX, key, raw)


def summarize(measured: dict[str, Any]) -> tuple[list[Row], dict[str, Any]]:
    runs = measured["runs"]
    ds = measured["datasets"]
    rows = [
        _time_row(
            "backup_vs_pg_dump", "full backup wall time vs pg_dump -Fc -Z0 > /dev/null",
            runs["ours_full"], runs["pg_dump_z0"], BACKUP_WALL_MAX, strict=False,
        ),
        _time_row(
            "backup_vs_cron_gzip_time", "full backup wall time vs cron pg_dump | gzip > file",
            runs["ours_full"], runs["pg_dump_gzip"], CRON_WALL_MAX, strict=True,
        ),
    ]  # fmt: skip

    stored = statistics.median(int(r["result"]["stored_bytes"]) for r in runs["ours_full"])
    gz_bytes = statistics.median(int(r["file_bytes"]) for r in runs["pg_dump_gzip"])
    ratio = stored / gz_bytes
    raw = {
        "ours_stored_bytes": stored,
        "baseline_file_bytes": gz_bytes,
        "dump_bytes": runs["ours_full"][-1]["result"]["source_bytes"],
    }
    rows.append(
        Row(
            "full backup size vs cron pg_dump | gzip > file", mib(stored), mib(gz_bytes), ratio,
            f"< {CRON_SIZE_MAX:g}", ratio < CRON_SIZE_MAX, "backup_vs_cron_gzip_size", raw,
        )
    )  # fmt: skip

    main_mb, small_mb = ds["main"]["size_mb_requested"], ds["small"]["size_mb_requested"]
    rows.append(_rss_row("rss_main", f"backup peak RSS, {main_mb} MiB database", runs["ours_full"]))
    rows.append(_rss_row("rss_small", f"backup peak RSS, {small_mb} MiB database", runs["ours_full_small"]))
    big_kib = rows[-2].raw["ours_peak_rss_kib"]
    small_kib = rows[-1].raw["ours_peak_rss_kib"]
    ratio = big_kib / small_kib
    rows.append(
        Row(
            f"backup peak RSS, {main_mb} MiB / {small_mb} MiB database", _mb_text(big_kib),
            _mb_text(small_kib), ratio, f"<= {RSS_FLAT_MAX:g} (flat)", ratio <= RSS_FLAT_MAX,
            "rss_flat", {},
        )
    )  # fmt: skip

    restore = _time_row(
        "restore_vs_pg_restore", "restore wall time vs createdb + pg_restore (local file)",
        runs["ours_restore"], runs["pg_restore"], RESTORE_WALL_MAX, strict=False,
    )  # fmt: skip
    restore.raw["tables_match_source"] = runs["ours_restore"][-1].get("tables_match_source")
    rows.append(restore)

    for key, run in (("incremental_share_small", runs.get("ours_incremental_small")),
                     ("incremental_share", runs["ours_incremental"])):  # fmt: skip
        if run is None:
            continue
        inc, full = run["result"], run["full"]
        ratio = int(inc["stored_bytes"]) / int(full["stored_bytes"])
        label = (
            f"incremental after {run['change_rows']} rows changed (~1%), "
            f"{run['database_bytes'] / 1_000_000:.0f} MB database: stored / full stored"
        )
        rows.append(
            Row(
                label, mib(int(inc["stored_bytes"])), mib(int(full["stored_bytes"])), ratio,
                f"<= {INCREMENTAL_SHARE_MAX:g}", ratio <= INCREMENTAL_SHARE_MAX, key,
                {"incremental": inc, "full": full, "change": run["change"]},
            )
        )  # fmt: skip
    return rows, dict(TARGETS)


def _fastest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda r: float(r["wall_seconds"]))


def cpu_table(runs: dict[str, Any]) -> str:
    """Where the CPU went in the fastest run of each kind.

    ``cores``: CPU of the command, its children and the server over wall time (2 cores fully
    busy = 2.00); ``other``: cores busy with unrelated work on the machine meanwhile (noise).
    """
    picks = [
        ("ours: backup --kind full", _fastest(runs["ours_full"])),
        ("pg_dump -Fc -Z0 > /dev/null", _fastest(runs["pg_dump_z0"])),
        ("pg_dump | gzip > file", _fastest(runs["pg_dump_gzip"])),
        ("ours: restore --create", _fastest(runs["ours_restore"])),
        ("createdb + pg_restore", _fastest(runs["pg_restore"])),
    ]
    cols = ("fastest run", "wall s", "process CPU s", "children CPU s", "server CPU s", "cores", "other")
    body = []
    for label, r in picks:
        kids = ", ".join(f"{n} {c['cpu_seconds']:.1f}" for n, c in r["children"].items())
        total = float(r["cpu_total_seconds"]) + float(r["server_cpu_seconds"])
        body.append(
            (
                label,
                f"{r['wall_seconds']:.1f}",
                f"{r.get('name', '?')[:15]} {r['cpu_self_seconds']:.1f}",
                kids or "-",
                f"{r['server_cpu_seconds']:.1f}",
                f"{total / float(r['wall_seconds']):.2f}",
                f"{r.get('other_load_cores', 0.0):.2f}",
            )
        )
    widths = [max(len(row[i]) for row in [cols, *body]) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in [cols, *body]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
