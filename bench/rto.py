"""Restore throughput and the recovery time objective, for ``make bench`` (bench/run.py).

- **Logical**: no new run. The timed ``restore latest --to-database --create`` rounds of the
  benchmark restore the main database; throughput = its size on disk (``pg_database_size``) over
  the fastest round's wall time, next to the ``createdb + pg_restore`` baseline of the same rounds.
- **Physical**: on the same cluster, once the logical steps are done: archiving is turned on
  (``archive_command`` = our ``wal-push``, a restart), one physical full backup is taken
  (untimed), then each round times a real recovery: ``restore latest --pgdata DIR`` (every chunk
  fetched, authenticated and written, fsynced) plus ``pg_ctl start`` until the server has replayed
  the WAL to the end of the archive, promoted and answers a query. That is the RTO of the
  cluster's size (``sum(pg_database_size)``), from which the throughput follows.

The largest database restorable within the RTO objective (2 h, ``BACKUPD_DRILL__RTO_OBJECTIVE``'s
default) is ``ops.health.objectives.max_database_bytes`` at that throughput: the same rule ``status`` and
``/healthz`` apply to the drills' measured throughput. GB and GB per minute are decimal (10^9).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import report
from bench.physical import as_pg, base_env, mkdir_pg, write_pg
from bench.procs import run_measured
from bench.report import Row, best
from contentflow_backupd.ops.health.objectives import RTO_OBJECTIVE_S, max_database_bytes
from tests.support.pg import PgCluster, free_port

GB = 1_000_000_000


def gb_per_min(n_bytes: float, seconds: float) -> float:
    return n_bytes / GB / (seconds / 60.0)


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / GB:.1f} GB"


def _as_postgres() -> dict[str, Any]:
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


# -- physical: measured on the benchmark's own cluster --------------------------------------------
def physical(pg: PgCluster, tool: str, repeat: int, quiet: float, say: Any) -> dict[str, Any]:
    """Archive into a fresh repository, take one physical full backup, then ``repeat`` timed
    recoveries (restore + start + WAL replay + promotion). Leaves the cluster archiving; its own
    temp directory (reachable by the postgres user) is removed."""
    base = Path(tempfile.mkdtemp(prefix="backupd-bench-rto-"))
    try:
        base.chmod(0o755)  # the postgres user works here
        return _physical(pg, base, tool, repeat, quiet, say)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _physical(pg: PgCluster, base: Path, tool: str, repeat: int, quiet: float, say: Any) -> dict[str, Any]:
    root = mkdir_pg(base / "physical-rto")
    key = write_pg(root / "key", os.urandom(32))
    cfg = write_pg(
        root / "backupd.toml",
        f'repository = "file://{root / "repo"}"\n'
        f'state_dir = "{root / "state"}"\n'
        f'database_url = "{pg.url("postgres")}"\n'
        'mode = "physical"\n'
        f'pg_bin = "{pg.bin}"\n'
        f'[encryption]\nkey_file = "{key}"\n'
        "[wal]\narchive_timeout = 300\n",
    )
    env = base_env()
    subprocess.run(
        as_pg([tool, "--config", str(cfg), "init"]), env=env, check=True, capture_output=True, cwd="/"
    )
    pg.execute("ALTER SYSTEM SET archive_mode = on")
    pg.execute(f"ALTER SYSTEM SET archive_command = '{tool} --config {cfg} wal-push %p'")
    pg.stop()
    pg.start()
    cluster_bytes = int(pg.execute("SELECT sum(pg_database_size(datname)) FROM pg_database")[0][0])
    backup = run_measured(
        as_pg([tool, "--config", str(cfg), "backup", "--mode", "physical", "--kind", "full", "--json"]),
        env=env,
        workdir=base,
    )
    say(f"  physical full backup (untimed): {backup.wall_seconds:.1f}s, {_gb(cluster_bytes)} cluster")
    runs = []
    for i in range(repeat):
        runs.append(_recovery(pg, base, root / f"restored-{i}", tool, cfg, quiet))
        r = runs[-1]
        say(
            f"  physical recovery: restore {r['restore_seconds']:.1f}s + start/replay/promote "
            f"{r['start_seconds']:.1f}s = RTO {r['rto_seconds']:.1f}s"
        )
    return {"cluster_bytes": cluster_bytes, "backup": json.loads(backup.stdout), "runs": runs}


def _recovery(pg: PgCluster, work: Path, pgdata: Path, tool: str, cfg: Path, quiet: float) -> dict[str, Any]:
    argv = as_pg([tool, "--config", str(cfg), "restore", "latest", "--pgdata", str(pgdata), "--json"])
    restore = run_measured(argv, env=base_env(), workdir=work, quiet_seconds=quiet)
    port = free_port()
    with open(pgdata / "postgresql.auto.conf", "a") as f:  # the source still runs on its port
        f.write(f"port = {port}\nunix_socket_directories = ''\n")
    log = pgdata.with_name(pgdata.name + ".log")
    t0 = time.monotonic()
    try:
        subprocess.run(
            [str(pg.bin / "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-W", "start"],
            check=True,
            capture_output=True,
            **_as_postgres(),
        )
        url = f"postgresql://postgres:{pg.password}@127.0.0.1:{port}/postgres"
        wait_promoted(url, pgdata, log)
        start_s = time.monotonic() - t0
    finally:
        subprocess.run(
            [str(pg.bin / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            check=False,
            **_as_postgres(),
        )
        shutil.rmtree(pgdata, ignore_errors=True)
        log.unlink(missing_ok=True)
    return {
        "restore": {**restore.to_json(), "result": json.loads(restore.stdout)},
        "restore_seconds": round(restore.wall_seconds, 3),
        "start_seconds": round(start_s, 3),
        "rto_seconds": round(restore.wall_seconds + start_s, 3),
    }


def wait_promoted(url: str, pgdata: Path, log: Path, timeout: float = 1800) -> None:
    """Poll until the server answers and is out of recovery; fail when its postmaster is gone."""
    t0 = time.monotonic()
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("select not pg_is_in_recovery()").fetchone()
                if row is not None and row[0]:
                    return
        except psycopg.OperationalError:
            pass
        waited = time.monotonic() - t0
        if waited > timeout or (waited > 5 and not (pgdata / "postmaster.pid").exists()):
            text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"the restored cluster did not come up:\n{text}")
        time.sleep(0.05)


# -- the table rows ----------------------------------------------------------------------------
def rows(measured: dict[str, Any]) -> list[Row]:
    """Throughput and largest-database rows for the logical restores (always) and the physical
    recovery (when it ran)."""
    runs = measured["runs"]
    out: list[Row] = []
    size = int(measured["datasets"]["main"]["database_bytes"])
    ours = best([float(r["wall_seconds"]) for r in runs["ours_restore"]])
    base = best([float(r["wall_seconds"]) for r in runs["pg_restore"]])
    rate, base_rate = gb_per_min(size, ours), gb_per_min(size, base)
    out.append(
        Row(
            f"logical restore throughput ({_gb(size)} database / fastest restore)", f"{rate:.2f} GB/min",
            f"{base_rate:.2f} GB/min", rate / base_rate, "report", None, "restore_throughput_logical",
            {"database_bytes": size, "ours_seconds": ours, "baseline_seconds": base,
             "ours_gb_per_min": round(rate, 3), "baseline_gb_per_min": round(base_rate, 3)},
        )
    )  # fmt: skip
    out.append(_largest("logical", size / ours))
    phys = runs.get("physical_rto")
    if not phys or not phys.get("runs"):
        return out
    cluster = int(phys["cluster_bytes"])
    fastest = min(phys["runs"], key=lambda r: float(r["rto_seconds"]))
    rto = float(fastest["rto_seconds"])
    out.append(
        Row(
            f"physical RTO: restore --pgdata + start + WAL replay + promote, {_gb(cluster)} cluster",
            report.secs(rto), f"(restore {fastest['restore_seconds']:.1f} s)", None, "report", None,
            "physical_rto",
            {"cluster_bytes": cluster, "rto_seconds": [r["rto_seconds"] for r in phys["runs"]],
             "restore_seconds": [r["restore_seconds"] for r in phys["runs"]],
             "start_seconds": [r["start_seconds"] for r in phys["runs"]]},
        )
    )  # fmt: skip
    rate = gb_per_min(cluster, rto)
    out.append(
        Row(
            "physical recovery throughput (cluster / RTO)", f"{rate:.2f} GB/min", "", None, "report", None,
            "restore_throughput_physical", {"gb_per_min": round(rate, 3)},
        )
    )  # fmt: skip
    out.append(_largest("physical", cluster / rto))
    return out


def _largest(mode: str, bytes_per_s: float) -> Row:
    largest = max_database_bytes(bytes_per_s, RTO_OBJECTIVE_S)
    hours = RTO_OBJECTIVE_S / 3600
    return Row(
        f"largest {mode} database restorable within a {hours:g} h RTO at that throughput",
        _gb(largest), "", None, "report", None, f"rto_max_database_{mode}",
        {"bytes": largest, "rto_objective_seconds": RTO_OBJECTIVE_S},
    )  # fmt: skip
