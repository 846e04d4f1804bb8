"""Where a logical full backup's wall time goes: CPU of each party per time slice, and idle cores.

Runs ``backup --kind full`` of one database into a fresh repository (passphrase file, as the
README configures it) and samples ``/proc`` every 20 ms: the CPU of our command (all its threads),
of its ``pg_dump`` child, of the cluster's server processes (the postmaster named by
``postmaster.pid`` and its children), the machine's idle time, and the bytes ``pg_dump`` has
written so far (``wchar``). Prints one line per ``--slice`` seconds and the totals. On 2 cores
the dump is CPU-bound: the wall time is at least the three parties' CPU over two, and the idle
column shows what is lost beyond that (start-up, a ``pg_dump`` waiting on a full pipe, the end).

Use it on the cluster that ``backup_ab.py --hold`` prints (its ``base``, ``url`` and the
postmaster's data directory ``<base>/cluster/data``); ``--tool`` runs another build:

    .venv/bin/python bench/timeline.py --url postgresql://... --data-dir /tmp/backupd-ab-x/cluster/data \\
        --passphrase-file /tmp/backupd-ab-x/passphrase --pg-bin /usr/lib/postgresql/15/bin

Not a test; run it as the user that may read the passphrase file and the cluster's processes.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the database to back up")
    p.add_argument("--data-dir", type=Path, required=True, help="the cluster's data directory")
    p.add_argument("--passphrase-file", type=Path, required=True)
    p.add_argument("--pg-bin", type=Path, required=True)
    p.add_argument(
        "--tool",
        default=f"{sys.executable} -m contentflow_backupd",
        help="the command to run (default: this interpreter's contentflow_backupd)",
    )
    p.add_argument("--slice", type=float, default=0.25, help="seconds per printed line (default 0.25)")
    return p.parse_args(argv)


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_of(pid: int) -> float | None:
    """User + system CPU seconds of the process (all its threads), None once it is gone."""
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / TICK


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[1]) == pid:
                out.append(int(entry))
    return out


def written(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def machine_idle() -> float:
    with open("/proc/stat") as f:
        return int(f.readline().split()[4]) / TICK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with open(args.data_dir / "postmaster.pid") as f:
        postmaster = int(f.readline())
    work = Path(tempfile.mkdtemp(prefix="backupd-timeline-"))
    try:
        config = work / "backupd.toml"
        config.write_text(
            f'repository = "file://{work / "repo"}"\nstate_dir = "{work / "state"}"\n'
            f'database_url = "{args.url}"\nmode = "logical"\npg_bin = "{args.pg_bin}"\n'
            f'[encryption]\npassphrase_file = "{args.passphrase_file}"\n'
        )
        tool = shlex.split(args.tool)
        subprocess.run([*tool, "--config", str(config), "init"], check=True, capture_output=True)
        server = {p: cpu_of(p) or 0.0 for p in [postmaster, *children_of(postmaster)]}
        start = dict(server)
        idle0, t0 = machine_idle(), time.monotonic()
        proc = subprocess.Popen(
            [*tool, "--config", str(config), "backup", "--kind", "full"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ours = dump = 0.0
        dump_pid: int | None = None
        dump_bytes = 0
        rows: list[tuple[float, float, float, float, float, int]] = []
        while proc.poll() is None:
            time.sleep(0.02)
            ours = cpu_of(proc.pid) or ours
            if dump_pid is None:  # the dump, not a `pg_dump --version` before it
                dump_pid = next(iter(c for c in children_of(proc.pid) if _is_dump(c)), None)
            if dump_pid is not None:
                dump = cpu_of(dump_pid) or dump
                dump_bytes = written(dump_pid) or dump_bytes
            for pid in [postmaster, *children_of(postmaster)]:
                cpu = cpu_of(pid)
                if cpu is not None:
                    server[pid] = cpu  # a backend that ended keeps its last reading
            server_cpu = sum(v - start.get(p, 0.0) for p, v in server.items())
            rows.append((time.monotonic() - t0, ours, dump, server_cpu, machine_idle() - idle0, dump_bytes))
        wall = time.monotonic() - t0
        print(f"{'t':>6} {'ours':>5} {'dump':>5} {'server':>6} {'idle':>5} {'dumped':>7}")
        prev = (0.0, 0.0, 0.0, 0.0, 0.0, 0)
        edge = args.slice
        for row in rows:
            if row[0] >= edge or row is rows[-1]:
                d = [row[i] - prev[i] for i in range(1, 5)]
                print(f"{row[0]:6.2f} {d[0]:5.2f} {d[1]:5.2f} {d[2]:6.2f} {d[3]:5.2f} {row[5] / 1e6:6.0f}M")
                prev, edge = row, edge + args.slice
        last = rows[-1] if rows else prev
        print(
            f"wall {wall:.2f} s, CPU s: ours {last[1]:.2f}, pg_dump {last[2]:.2f}, server {last[3]:.2f}, "
            f"(sum)/2 {(last[1] + last[2] + last[3]) / 2:.2f}; machine idle {last[4]:.2f} core-s; "
            f"exit {proc.returncode}"
        )
        return 0 if proc.returncode == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _is_dump(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"/pg_dump") and b"--format=custom" in argv


if __name__ == "__main__":
    sys.exit(main())
