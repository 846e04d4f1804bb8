"""Physical restore only: contentflow-backupd against pgBackRest, with per-thread CPU figures.

A restore-only cut of ``bench/physical.py`` (its cluster, dataset, configurations and helpers):
one disposable cluster, one generated database, one full backup by each tool, then rounds of
restores that alternate the variants (ours with each ``--process-max`` given, an optional
baseline build of ours, pgBackRest). Every restore runs as postgres, like ``physical.py``'s.

For each of our restores, ``/proc/<pid>/task/*/stat`` is polled every 20 ms: the CPU of the
main thread (the tar consumer when the restore is serial) and of all other threads, which shows
what is serial. See bench/README.md "Restore".

    .venv/bin/python bench/restore.py --size-mb 300 --repeat 3 --process-max 1,2 \\
        [--baseline-tool /path/to/other/contentflow-backupd]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import physical, report  # noqa: E402
from bench.load import wait_for_quiet  # noqa: E402
from bench.procs import POLL_SECONDS, _read, vm_hwm_kib  # noqa: E402
from bench.steps import tool_command  # noqa: E402
from contentflow_backupd.demo.cluster import PgCluster  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=300, help="generated database, MiB (default 300)")
    p.add_argument("--repeat", type=int, default=3, help="rounds of restores (default 3); median counts")
    p.add_argument(
        "--process-max",
        default="",
        help="comma-separated BACKUPD_RESTORE__PROCESS_MAX values of our restores (default: the "
        "setting's default only)",
    )
    p.add_argument(
        "--baseline-tool",
        default=None,
        help="another contentflow-backupd (e.g. main's) restored from the same backup, for a "
        "before/after ratio",
    )
    p.add_argument("--no-pgbackrest", action="store_true", help="skip pgBackRest")
    p.add_argument("--quiet-wait", type=float, default=20.0, help="wait up to S s for < 0.3 busy cores")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the temp directory (repository, config, stopped cluster) for profiling",
    )
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "restore-latest.json")
    args = p.parse_args(argv)
    if args.size_mb < 16 or args.repeat < 1:
        p.error("--size-mb at least 16, --repeat at least 1")
    return args


def _thread_ticks(pid: int) -> dict[int, tuple[int, int]]:
    """User and system CPU ticks of each thread of ``pid``."""
    out: dict[int, tuple[int, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/stat")
        if text:
            f = text[text.rindex(")") + 2 :].split()
            out[int(tid)] = (int(f[11]), int(f[12]))
    return out


def run_threads(argv: list[str], env: dict[str, str], workdir: Path, quiet: float) -> dict[str, Any]:
    """Run ``argv``; wall time, peak RSS, CPU of the main thread and of the other threads (last
    poll of each thread, so up to 20 ms short per thread), and the exact CPU of the command and
    its reaped descendants (pgBackRest's work is in child processes)."""
    if quiet > 0:
        wait_for_quiet(quiet)
    out_path = workdir / f"restore-{time.monotonic_ns()}.out"
    ticks: dict[int, tuple[int, int]] = {}
    peak = 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out_path, "wb") as out:
        started_at = time.time()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, env=env, start_new_session=True)
        while proc.poll() is None:
            peak = max(peak, vm_hwm_kib(proc.pid) or 0)
            ticks.update(_thread_ticks(proc.pid))
            time.sleep(POLL_SECONDS)
        wall = time.monotonic() - t0
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {err[-2000:]}")
    startup = _startup_seconds(err, started_at)
    main_user, main_sys = ticks.pop(proc.pid, (0, 0))
    main = main_user + main_sys
    others = sorted((u + s for u, s in ticks.values()), reverse=True)
    return {
        "wall_seconds": round(wall, 3),
        "peak_rss_kib": peak,
        "cpu_main_thread_seconds": round(main / _TICKS, 2),
        "cpu_main_thread_system_seconds": round(main_sys / _TICKS, 2),
        "cpu_other_threads_seconds": round(sum(others) / _TICKS, 2),
        "cpu_busiest_other_threads_seconds": [round(t / _TICKS, 2) for t in others[:4]],
        "threads_seen": len(others) + 1,
        "cpu_total_seconds": round(total, 2),
        "startup_seconds": startup,
        "stdout": out_path.read_text(),
    }


def _startup_seconds(stderr: str, started_at: float) -> float | None:
    """Seconds from the command's start to our ``restore_started`` log event (JSON logs: the
    settings, imports, key derivation, the choice of the backup and every check before the first
    byte is written); None for pgBackRest."""
    for line in stderr.splitlines():
        if line.startswith("{") and '"restore_started"' in line:
            stamp = json.loads(line).get("timestamp", "")
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            return round(when - started_at, 3)
    return None


def measure(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="backupd-restorebench-"))
    state["base"] = base
    base.chmod(0o755)
    physical.chown_pg(base)
    tool = tool_command()
    passphrase = physical.write_pg(base / "passphrase", base64.b64encode(os.urandom(32)) + b"\n")
    pg = PgCluster(base / "cluster")
    state["pg"] = pg
    s = physical.Setup(base=base, pg=pg, tool=tool, passphrase_file=passphrase, env=physical.base_env())
    state["setup"] = s
    cfg = s.new_repo("ours")
    pg.extra_conf = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"'{s.archive_command(cfg)}'",
        "max_wal_senders": "10",
        "max_wal_size": "1GB",
    }
    pg.init().start()
    version = str(pg.execute("SHOW server_version")[0][0])
    machine = report.machine(pg.bin, version, tool)
    br = None if args.no_pgbackrest else shutil.which("pgbackrest")
    data = physical.generate(pg, args.size_mb, args.seed)
    s.drain(900)
    physical.say("our full backup (untimed)")
    subprocess.run(
        physical.as_pg(
            [tool, "--config", str(cfg), "backup", "--mode", "physical", "--kind", "full", "--json"]
        ),
        env=s.pg_env(),
        check=True,
        capture_output=True,
        cwd="/",
    )
    br_conf = None
    if br:
        br_conf = physical.pgbackrest_conf(s)
        physical.say("pgBackRest full backup (untimed)")
        subprocess.run(physical.br_argv(br_conf, "--type=full", "backup"), env=s.env, check=True, cwd="/")
    pg.stop()
    variants: list[tuple[str, list[str], dict[str, str]]] = []
    pmax = [v for v in args.process_max.split(",") if v.strip()]
    for v in pmax or [""]:
        env = {**s.env, "BACKUPD_RESTORE__PROCESS_MAX": v} if v else s.env
        variants.append((f"ours_pmax{v}" if v else "ours", [tool], env))
    if args.baseline_tool:
        variants.append(("baseline", [args.baseline_tool], s.env))
    if br_conf is not None:
        variants.append(("pgbackrest", [], s.env))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    parent = physical.mkdir_pg(base / "restores")
    for i in range(args.repeat):
        order = variants if i % 2 == 0 else list(reversed(variants))
        for name, cmd, env in order:
            target = parent / f"{name}-{i}"
            if name == "pgbackrest":
                assert br_conf is not None
                physical.mkdir_pg(target, 0o700)
                argv = physical.br_argv(br_conf, f"--pg1-path={target}", "restore")
            else:
                argv = physical.as_pg(
                    [*cmd, "--config", str(cfg), "restore", "latest", "--pgdata", str(target)]
                )
                argv.append("--json")
            m = run_threads(argv, env, base, args.quiet_wait)
            m.pop("stdout")
            runs[name].append(m)
            rss = m["peak_rss_kib"] / 1024
            main_s, main_sys = m["cpu_main_thread_seconds"], m["cpu_main_thread_system_seconds"]
            startup = "" if m["startup_seconds"] is None else f" (start-up {m['startup_seconds']:.2f}s)"
            physical.say(
                f"  {name}: {m['wall_seconds']:.2f}s{startup}, peak RSS {rss:.0f} MiB, "
                f"CPU main thread {main_s:.2f}s (sys {main_sys:.2f}s) + "
                f"others {m['cpu_other_threads_seconds']:.2f}s "
                f"({m['threads_seen']} threads); CPU with children {m['cpu_total_seconds']:.2f}s"
            )
            shutil.rmtree(target, ignore_errors=True)
            if name != "pgbackrest" and os.path.isdir(f"{target}.recovery"):
                shutil.rmtree(f"{target}.recovery", ignore_errors=True)
    return {"machine": machine, "data": data, "runs": runs}


def summarize(measured: dict[str, Any]) -> list[str]:
    runs = measured["runs"]
    med = {name: statistics.median(r["wall_seconds"] for r in rs) for name, rs in runs.items() if rs}
    lines = [
        f"{'variant':<14} {'median s':>9} {'start-up s':>10} {'peak RSS MiB':>13} {'CPU main/others s':>18} "
        f"{'CPU all s':>9}"
    ]
    for name, rs in runs.items():
        cpu_m = statistics.median(r["cpu_main_thread_seconds"] for r in rs)
        cpu_o = statistics.median(r["cpu_other_threads_seconds"] for r in rs)
        cpu_all = statistics.median(r["cpu_total_seconds"] for r in rs)
        rss = max(r["peak_rss_kib"] for r in rs) / 1024
        starts = [r["startup_seconds"] for r in rs if r.get("startup_seconds") is not None]
        start = f"{statistics.median(starts):>10.2f}" if starts else f"{'-':>10}"
        lines.append(
            f"{name:<14} {med[name]:>9.2f} {start} {rss:>13.0f} {cpu_m:>8.2f}/{cpu_o:<9.2f} {cpu_all:>9.2f}"
        )
    for ref in ("pgbackrest", "baseline"):
        if ref in med:
            for name in med:
                if name not in ("pgbackrest", "baseline"):
                    lines.append(f"ratio {name} / {ref}: {med[name] / med[ref]:.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, physical._on_term)
    started = report.now_iso()
    state: dict[str, Any] = {}
    os.chdir("/")
    try:
        measured = measure(args, state)
    except KeyboardInterrupt:
        print("\ninterrupted: cluster and temp dirs removed, no results written", file=sys.stderr)
        return 130
    finally:
        prev = signal.signal(signal.SIGINT, signal.SIG_IGN)
        if args.keep and "base" in state:
            print(f"kept {state['base']}", file=sys.stderr)
            state.pop("base")
        physical.cleanup(state)
        signal.signal(signal.SIGINT, prev)
    lines = summarize(measured)
    doc = {
        "date": started,
        "finished": report.now_iso(),
        "command": [sys.executable, *sys.argv],
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "loadavg_at_end": os.getloadavg(),
        **measured,
        "summary": lines,
    }
    report.write_json(args.output, doc)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
