"""``make bench``: contentflow-backupd against pg_dump/pg_restore baselines, in one run.

Everything runs on one disposable PostgreSQL cluster filled with generated ContentFlow-like
data, and every figure is reported as a ratio to a baseline measured in the same invocation on
the same database. See bench/README.md. Not a test: missed targets are reported, never fatal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import dataset, report, rto  # noqa: E402
from bench.procs import Measured  # noqa: E402
from bench.steps import RESTORE_FLAGS, Bench, Repo  # noqa: E402
from bench.summary import cpu_table, summarize  # noqa: E402
from contentflow_backupd.demo import datagen  # noqa: E402
from tests.support.pg import PgCluster, running_cluster  # noqa: E402

_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


def _rss(m: Measured) -> str:
    return f"peak RSS {m.peak_rss_kib / 1024:.0f} MiB"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1024, help="main database, MiB (default 1024)")
    p.add_argument("--small-mb", type=int, default=256, help="second RSS point, MiB (default 256)")
    p.add_argument(
        "--inc-small-mb", type=int, default=25,
        help="the small database of the incremental-share row, MiB requested (default 25: 30 MiB on disk)",
    )  # fmt: skip
    p.add_argument(
        "--repeat", type=int, default=4, help="rounds of each timed step; the minimum counts (default 4)"
    )
    p.add_argument(
        "--gzip-repeat", type=int, default=2, help="rounds of the slow pg_dump | gzip baseline (default 2)"
    )
    p.add_argument(
        "--quiet-wait", type=float, default=60.0,
        help="before each timed step, wait up to this many seconds for other load on the machine"
        " to drop below 0.3 busy cores (default 60; 0 disables)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=42, help="data generator seed (default 42)")
    p.add_argument(
        "--rto-repeat", type=int, default=2,
        help="rounds of the physical recovery-time measurement (default 2; 0 skips it)",
    )  # fmt: skip
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = p.parse_args(argv)
    if min(args.size_mb, args.small_mb, args.inc_small_mb) < 16 or min(args.repeat, args.gzip_repeat) < 1:
        p.error("sizes must be at least 16 MiB and the repeats at least 1")
    return args


def generate(pg: PgCluster, size_mb: int, seed: int) -> dict[str, Any]:
    db = pg.create_database(f"bench_{size_mb}mb")
    t0 = time.monotonic()
    with pg.connect(db) as conn:
        rows = dataset.build(conn, size_mb, seed=seed)
        conn.execute("CHECKPOINT")
    seconds = time.monotonic() - t0
    size = int(pg.execute("SELECT pg_database_size(%s)", params=(db,))[0][0])
    say(f"generated {db}: {size / report.MiB:.0f} MiB on disk in {seconds:.0f}s")
    return {
        "db": db,
        "size_mb_requested": size_mb,
        "database_bytes": size,
        "seconds": round(seconds, 1),
        "rows": rows,
    }


def full_backups(b: Bench, db: str, repeat: int, gzip_repeat: int, runs: dict[str, Any]) -> Repo:
    """Alternate ours and the baselines; returns the repository of the last full backup."""
    last: Repo | None = None
    gz = b.work / "cron.sql.gz"
    for i in range(max(repeat, gzip_repeat)):
        order = ["z0", "ours", "gzip"] if i % 2 == 0 else ["gzip", "ours", "z0"]
        order = [s for s in order if (i < gzip_repeat if s == "gzip" else i < repeat)]
        for step in order:
            if step == "z0":
                m = b.pg_dump_custom(db)
                runs["pg_dump_z0"].append(m.to_json())
                say(f"  pg_dump -Fc -Z0 > /dev/null: {m.wall_seconds:.1f}s")
            elif step == "gzip":
                m = b.pg_dump_gzip(db, gz)
                runs["pg_dump_gzip"].append({**m.to_json(), "file_bytes": gz.stat().st_size})
                say(f"  pg_dump | gzip: {m.wall_seconds:.1f}s, {report.mib(gz.stat().st_size)}")
            else:
                repo = b.new_repo(db)
                m, out = b.ours_backup(repo, db)
                runs["ours_full"].append(
                    {
                        **m.to_json(),
                        "result": out,
                        "repo_bytes_on_disk": repo.stored_bytes_on_disk(),
                    }
                )
                stored = report.mib(out["stored_bytes"])
                say(f"  ours full: {m.wall_seconds:.1f}s, {_rss(m)}, stored {stored}")
                if last is not None:
                    last.remove()
                last = repo
    gz.unlink(missing_ok=True)
    assert last is not None
    return last


def small_rss(b: Bench, db: str, repeat: int) -> list[dict[str, Any]]:
    b.pg_dump_custom(db, timed=False)  # warm the cache for this database too
    out = []
    for _ in range(repeat):
        repo = b.new_repo(db)
        m, res = b.ours_backup(repo, db)
        out.append({**m.to_json(), "result": res})
        say(f"  ours full (small db): {m.wall_seconds:.1f}s, {_rss(m)}")
        repo.remove()
    return out


def restores(b: Bench, repo: Repo, db: str, repeat: int, runs: dict[str, Any]) -> None:
    dump = b.work / "baseline.dump"
    m = b.pg_dump_custom(db, str(dump), timed=False)
    runs["restore_dump_file"] = {**m.to_json(), "file_bytes": dump.stat().st_size}
    source_sums: dict[str, Any] | None = None
    for i in range(repeat):
        for step in ("base", "ours") if i % 2 == 0 else ("ours", "base"):
            target = f"restore_{step}_{i}"
            if step == "base":
                m = b.pg_restore_file(dump, target)
                runs["pg_restore"].append(m.to_json())
                say(f"  createdb + pg_restore --single-transaction: {m.wall_seconds:.1f}s")
            else:
                m, out = b.ours_restore(repo, db, target)
                entry = {**m.to_json(), "result": out}
                if i == repeat - 1:  # sanity: the restored tables equal the source (untimed)
                    if source_sums is None:
                        with b.pg.connect(db) as conn:
                            source_sums = datagen.table_checksums(conn)
                    with b.pg.connect(target) as conn:
                        entry["tables_match_source"] = datagen.table_checksums(conn) == source_sums
                runs["ours_restore"].append(entry)
                say(f"  ours restore: {m.wall_seconds:.1f}s, {_rss(m)}")
            b.pg.drop_database(target)
    dump.unlink()


def incremental(b: Bench, repo: Repo, db: str, full: dict[str, Any]) -> dict[str, Any]:
    """The ~1% change of ``bench.dataset.spread_change`` (600 rows per 29 MB), then an incremental
    backup into the repository of ``full``; the share is its stored bytes over the full's."""
    size = int(b.pg.execute("SELECT pg_database_size(%s)", params=(db,))[0][0])
    rows = dataset.change_rows_for(size)
    t0 = time.monotonic()
    with b.pg.connect(db) as conn:
        change = dataset.spread_change(conn, rows)
    change_s = time.monotonic() - t0
    m, out = b.ours_backup(repo, db, "incremental")
    share = int(out["stored_bytes"]) / int(full["stored_bytes"])
    say(
        f"  ours incremental after {rows} rows changed ({size / report.MB:.0f} MB database): "
        f"stored {report.mib(out['stored_bytes'])} = {share:.1%} of the full"
    )
    return {
        **m.to_json(),
        "result": out,
        "full": full,
        "database_bytes": size,
        "change_rows": rows,
        "change": change,
        "change_seconds": round(change_s, 1),
    }


def small_incremental(b: Bench, db: str) -> dict[str, Any]:
    """The issue's small case: a full backup of a ~29 MB database, then the 600-row change."""
    repo = b.new_repo(db)
    try:
        _m, full = b.ours_backup(repo, db)
        return incremental(b, repo, db, full)
    finally:
        repo.remove()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, Any] = {
        k: [] for k in ("pg_dump_z0", "pg_dump_gzip", "ours_full", "pg_restore", "ours_restore")
    }
    work = Path(tempfile.mkdtemp(prefix="backupd-bench-"))
    try:
        with running_cluster(prefix="backupd-bench-pg-") as pg:
            b = Bench(pg, work, args.quiet_wait)
            server_version = str(pg.execute("SHOW server_version")[0][0])
            machine = report.machine(pg.bin, server_version, b.tool)
            cpus, mem = machine["nproc"], machine["memory_mib"]
            say(f"cluster up: PostgreSQL {server_version}; {cpus} CPUs, {mem} MiB RAM")
            small = generate(pg, args.small_mb, args.seed)
            inc_small = generate(pg, args.inc_small_mb, args.seed)
            main = generate(pg, args.size_mb, args.seed)
            say("warm-up pg_dump of the main database")
            runs["warmup"] = b.pg_dump_custom(main["db"], timed=False).to_json()
            say(f"full backups, {args.repeat} rounds")
            repo = full_backups(b, main["db"], args.repeat, args.gzip_repeat, runs)
            say("peak RSS at the small size")
            runs["ours_full_small"] = small_rss(b, small["db"], args.repeat)
            say(f"restores, {args.repeat} rounds")
            restores(b, repo, main["db"], args.repeat, runs)
            say("~1% change (600 rows per 29 MB) and an incremental backup, main database")
            runs["ours_incremental"] = incremental(b, repo, main["db"], runs["ours_full"][-1]["result"])
            say("the same on the small database")
            runs["ours_incremental_small"] = small_incremental(b, inc_small["db"])
            repo.remove()
            if args.rto_repeat > 0:
                say(f"physical recovery time (restore + WAL replay + promotion), {args.rto_repeat} rounds")
                runs["physical_rto"] = rto.physical(pg, b.tool, args.rto_repeat, args.quiet_wait, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    datasets = {"main": main, "small": small, "incremental_small": inc_small}
    return {"machine": machine, "datasets": datasets, "runs": runs}


def _on_term(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    started = report.now_iso()
    say(f"bench: main {args.size_mb} MiB, small {args.small_mb} MiB, {args.repeat} rounds")
    try:
        measured = measure(args)
    except KeyboardInterrupt:
        print("\ninterrupted: clusters and temp dirs removed, no results written", file=sys.stderr)
        return 130
    rows, targets = summarize(measured)
    rows += rto.rows(measured)
    targets["restore_throughput_and_rto"] = "reported: GB/min and the largest database for a 2 h RTO"
    doc = {
        "date": started,
        "finished": report.now_iso(),
        "command": [sys.executable, *sys.argv],
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "method": {
            "compared_figure": "minimum wall time over the repeats (all raw runs are below)",
            "warm_cache": "one pg_dump of each database before its timed runs",
            "restore_flags_both_sides": RESTORE_FLAGS,
            "baseline_password": "PGPASSWORD in the environment, never argv",
            "quiet_wait": "each timed step first waits (up to --quiet-wait s) for < 0.3 busy cores;"
            " other_cpu_seconds in each run is CPU used meanwhile by unrelated processes (noise)",
            "peak_rss": "VmHWM of the process itself, polled every 20 ms (children listed apart)",
            "loadavg_at_start": os.getloadavg(),
        },
        "targets": targets,
        **measured,
        "summary": [r.to_json() for r in rows],
    }
    report.write_json(args.output, doc)
    print()
    print(report.table(rows))
    print()
    print(cpu_table(measured["runs"]))
    print()
    print("baseline pg_restore runs with the flags our streaming restore uses: " + " ".join(RESTORE_FLAGS))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
