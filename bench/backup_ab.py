"""Full backups only, two builds of contentflow-backupd against pgBackRest and pg_dump, alternating.

A focused companion of ``physical.py`` (step 2) and ``run.py`` (the full-backup row) for work on
the backup pipeline: one disposable cluster and the realistic dataset (``dataset.py``), then
``--repeat`` rounds in which every contender runs once, the order rotating each round:

- physical: ours (each build) ``backup --mode physical --kind full`` into a fresh repository
  configured as the README says (passphrase file), pgBackRest ``--type=full backup`` configured as
  issue 15 says (``physical.pgbackrest_conf``), ``pg_basebackup -Ft -D - -X none > /dev/null``;
- logical: ours (each build) ``backup --mode logical --kind full`` into a fresh repository, and
  ``pg_dump -Fc -Z0 --no-sync -f /dev/null``.

``--base-tool`` names a second build (e.g. a wrapper that runs main's tree with PYTHONPATH); the
default compares only this tree's ``contentflow-backupd``. Medians and minimums are printed and
written to ``--output``. Not a test; wall times on a shared machine are noisy.

    .venv/bin/python bench/backup_ab.py --size-mb 300 --repeat 3 --base-tool /tmp/base/contentflow-backupd
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import physical, report  # noqa: E402
from bench.physical import Setup, as_pg, basebackup_argv, mkdir_pg, write_pg  # noqa: E402
from bench.steps import tool_command  # noqa: E402
from contentflow_backupd.demo.cluster import PgCluster  # noqa: E402


def say(msg: str) -> None:
    physical.say(msg)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--mode", choices=["physical", "logical", "both"], default="both")
    p.add_argument("--base-tool", default=None, help="a second contentflow-backupd to compare ('before')")
    p.add_argument("--no-pgbackrest", action="store_true")
    p.add_argument("--no-basebackup", action="store_true")
    p.add_argument("--quiet-wait", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--hold",
        action="store_true",
        help="after the data load, print the configuration and wait for Ctrl-C (for profiling)",
    )
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "backup-ab-latest.json")
    return p.parse_args(argv)


def logical_cfg(s: Setup, name: str, db: str) -> Path:
    root = mkdir_pg(s.base / name)
    cfg = write_pg(
        root / "backupd.toml",
        f'repository = "file://{root / "repo"}"\n'
        f'state_dir = "{root / "state"}"\n'
        f'database_url = "{s.pg.url(db)}"\n'
        'mode = "logical"\n'
        f'pg_bin = "{s.pg.bin}"\n'
        f'[encryption]\npassphrase_file = "{s.passphrase_file}"\n',
    )
    subprocess.run(as_pg([s.tool, "--config", str(cfg), "init"]), env=s.env, check=True, capture_output=True)
    return cfg


def run(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="backupd-ab-"))
    state["base"] = base
    base.chmod(0o755)
    physical.chown_pg(base)
    tools = {"ours": tool_command()}
    if args.base_tool:
        tools = {"before": args.base_tool, **tools}
    passphrase = write_pg(base / "passphrase", base64.b64encode(os.urandom(32)) + b"\n")
    pg = PgCluster(base / "cluster")
    state["pg"] = pg
    s = Setup(base=base, pg=pg, tool=tools["ours"], passphrase_file=passphrase, env=physical.base_env())
    cfg0 = s.new_repo("ours-initial")
    pg.extra_conf = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"'{s.archive_command(cfg0)}'",
        "max_wal_senders": "10",
        "max_wal_size": "1GB",
    }
    pg.init().start()
    data = physical.generate(pg, args.size_mb, args.seed)
    s.drain(900)
    br = None if args.no_pgbackrest or not shutil.which("pgbackrest") else physical.pgbackrest_conf(s)
    if args.hold:
        print(
            json.dumps(
                {
                    "base": str(base),
                    "port": pg.port,
                    "db": data["db"],
                    "cfg0": str(cfg0),
                    "pgbackrest_conf": str(br) if br else None,
                    "url": pg.url(data["db"]),
                }
            )
        )
        sys.stdout.flush()
        while True:
            time.sleep(3600)
    runs: dict[str, list[dict[str, Any]]] = {}
    s.measure(basebackup_argv(s))  # warm-up, untimed
    s.drain()
    n = 0
    for i in range(args.repeat):
        contenders: list[tuple[str, list[str] | None, str]] = []
        if args.mode in ("physical", "both"):
            contenders += [(f"physical/{t}", None, t) for t in tools]
            if br is not None:
                contenders.append(("physical/pgbackrest", physical.br_argv(br, "--type=full", "backup"), ""))
            if not args.no_basebackup:
                contenders.append(("physical/pg_basebackup", basebackup_argv(s), ""))
        if args.mode in ("logical", "both"):
            contenders += [(f"logical/{t}", None, t) for t in tools]
            dump = [str(pg.bin / "pg_dump"), "--no-password", "-Fc", "-Z0", "--no-sync", "-f", "/dev/null",
                    "--dbname", pg.url_without_password(data["db"])]  # fmt: skip
            contenders.append(("logical/pg_dump -Fc -Z0", dump, ""))
        k = i % len(contenders)
        order = contenders[k:] + contenders[:k]
        if i % 2:
            order.reverse()
        for name, argv, tool in order:
            n += 1
            if tool:
                mode = name.split("/")[0]
                if mode == "physical":
                    cfg = s.new_repo(f"p{n}")
                    s.point_archive(cfg)
                else:
                    cfg = logical_cfg(s, f"l{n}", data["db"])
                argv = as_pg(
                    [tools[tool], "--config", str(cfg), "backup", "--mode", mode, "--kind", "full", "--json"]
                )
            s.drain()
            assert argv is not None
            m = s.measure(argv, args.quiet_wait)
            row = m.to_json()
            if tool:
                out = json.loads(m.stdout)
                row["stored_bytes"] = out.get("stored_bytes")
                row["source_bytes"] = out.get("source_bytes")
            runs.setdefault(name, []).append(row)
            say(
                f"  {name}: {m.wall_seconds:.2f}s (cpu {row['cpu_total_seconds']}, server "
                f"{row['server_cpu_seconds']}, other load {row['other_load_cores']})"
            )
    summary = {
        name: {
            "walls": [r["wall_seconds"] for r in rows],
            "median": statistics.median(r["wall_seconds"] for r in rows),
            "min": min(r["wall_seconds"] for r in rows),
        }
        for name, rows in runs.items()
    }
    return {"dataset": data, "tools": tools, "runs": runs, "summary": summary}


def cleanup(state: dict[str, Any]) -> None:
    pg: PgCluster | None = state.get("pg")
    if pg is not None:
        pg.destroy()
    b: Path | None = state.get("base")
    if b is not None:
        shutil.rmtree(b, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output = args.output.resolve()  # before the chdir below
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    os.chdir("/")
    state: dict[str, Any] = {}
    started = report.now_iso()
    try:
        result = run(args, state)
    except KeyboardInterrupt:
        print("\ninterrupted: cluster and temp dirs removed", file=sys.stderr)
        return 130
    finally:
        prev = signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(Exception):
            cleanup(state)
        signal.signal(signal.SIGINT, prev)
    doc = {
        "date": started,
        "finished": report.now_iso(),
        "command": [sys.executable, *sys.argv],
        "options": {k: str(v) for k, v in vars(args).items()},
        "loadavg_end": os.getloadavg(),
        **result,
    }
    report.write_json(args.output, doc)
    print()
    for name, s in result["summary"].items():
        print(f"{name:32s} median {s['median']:6.2f}s  min {s['min']:6.2f}s  runs {s['walls']}")
    for mode, ref in (("physical", "physical/pgbackrest"), ("logical", "logical/pg_dump -Fc -Z0")):
        if ref in result["summary"]:
            for t in result["tools"]:
                key = f"{mode}/{t}"
                if key in result["summary"]:
                    r = result["summary"][key]["median"] / result["summary"][ref]["median"]
                    print(f"{key} / {ref}: {r:.2f} (medians)")
    print(f"\nresults: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
