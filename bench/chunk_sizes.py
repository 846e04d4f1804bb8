"""How much of a logical full an incremental stores after the ~1% change, by chunk size.

The question of issue 15's "smaller logical incrementals": can a choice of the content-defined
chunk size alone bring the incremental of a ~29 MB database under 10% of its full? This measures
the content side only, without a repository: one ``pg_dump -Fc --compress=0`` of the realistic
dataset (``bench/dataset.py``), the ~1% change of ``dataset.spread_change`` (600 rows per 29 MB),
a second dump; each dump cut with FastCDC at each average size (min = avg/4, max = avg*4,
normalized chunking 1: the parameters of ``repository/chunker.py``); the share is the bytes of
the second dump's chunks that the first dump does not hold, over the second dump's size. (A real
incremental also stores its manifest and compresses its chunks; both change the share little.)
Sizes are exact and independent of the machine's load.

    .venv/bin/python bench/chunk_sizes.py [--size-mb 25] [--seed 42]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
from pyfastcdc import FastCDC

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import dataset, report  # noqa: E402
from contentflow_backupd.demo.cluster import PgCluster, running_cluster  # noqa: E402

AVG_SIZES = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 1048576)
"""Average chunk sizes measured; the repository's default is 1 MiB, its minimum 64 KiB."""


def chunk_ids(data: bytes, avg: int) -> dict[bytes, int]:
    """Each chunk's content hash and length, cut as ``repository/chunker.py`` cuts at ``avg``."""
    cdc = FastCDC(avg, min_size=avg // 4, max_size=avg * 4, normalized_chunking=1)
    return {blake3.blake3(bytes(c.data)).digest(): len(c.data) for c in cdc.cut_buf(data)}


def dump(pg: PgCluster, db: str) -> bytes:
    argv = [str(pg.bin / "pg_dump"), "-Fc", "--compress=0", "-d", pg.url(db)]
    return subprocess.run(argv, check=True, capture_output=True).stdout


def measure(size_mb: int, seed: int) -> dict[str, Any]:
    with running_cluster(prefix="backupd-bench-chunks-") as pg:
        db = pg.create_database("bench_chunks")
        with pg.connect(db) as conn:
            dataset.build(conn, size_mb, seed=seed)
            conn.execute("CHECKPOINT")
        database_bytes = int(pg.execute("SELECT pg_database_size(%s)", params=(db,))[0][0])
        before = dump(pg, db)
        rows = dataset.change_rows_for(database_bytes)
        with pg.connect(db) as conn:
            changed = dataset.spread_change(conn, rows)
        after = dump(pg, db)
    sizes = []
    for avg in AVG_SIZES:
        old, new = chunk_ids(before, avg), chunk_ids(after, avg)
        fresh = {k: n for k, n in new.items() if k not in old}
        sizes.append(
            {
                "avg_size": avg,
                "chunks": len(new),
                "new_chunks": len(fresh),
                "new_bytes": sum(fresh.values()),
                "share": round(sum(fresh.values()) / len(after), 4),
            }
        )
    return {
        "database_bytes": database_bytes,
        "dump_bytes": [len(before), len(after)],
        "rows_changed": changed,
        "sizes": sizes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=25, help="database size requested, MiB (25: ~30 MiB)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "chunk_sizes.json")
    args = ap.parse_args()
    res = measure(args.size_mb, args.seed)
    print(
        f"database {report.mib(res['database_bytes'])}, dump {report.mib(res['dump_bytes'][0])}; "
        f"changed {sum(res['rows_changed'].values())} rows"
    )
    print("| average chunk | chunks | new chunks | stored / full |")
    print("|---:|---:|---:|---:|")
    for row in res["sizes"]:
        print(
            f"| {row['avg_size'] // 1024} KiB | {row['chunks']} | {row['new_chunks']} | {row['share']:.1%} |"
        )
    report.write_json(args.output, {"when": report.now_iso(), "size_mb": args.size_mb, **res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
