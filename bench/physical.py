"""Physical backups and WAL archiving: contentflow-backupd against pg_basebackup and pgBackRest.

One disposable PostgreSQL cluster (archive_mode on, archive_command = our ``wal-push``), one
generated database, one invocation: every ratio compares figures measured on the same cluster in
the same run. See bench/PHYSICAL.md. Not a test: missed targets are reported, never fatal.

    /opt/venv-sys/bin/python bench/physical.py [--size-mb N] [--pgbench-seconds S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.procs import Measured, run_measured  # noqa: E402
from bench.steps import postmaster_pid, tool_command  # noqa: E402
from contentflow_backupd.demo import datagen  # noqa: E402
from contentflow_backupd.demo.cluster import PgCluster  # noqa: E402

SEG = 16 * 1024 * 1024
STANZA = "bench"
SLOT = "contentflow_backupd"
_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1024, help="generated database, MiB (default 1024)")
    p.add_argument(
        "--pgbench-seconds", type=int, default=60, help="pgbench run for WAL archiving (default 60)"
    )
    p.add_argument("--pgbench-scale", type=int, default=50, help="pgbench -i -s (default 50)")
    p.add_argument(
        "--repeat", type=int, default=2, help="rounds of backup and restore; min counts (default 2)"
    )
    p.add_argument("--push-count", type=int, default=20, help="sequential wal-push calls timed (default 20)")
    p.add_argument("--stream-seconds", type=int, default=20, help="wal-stream run length (default 20)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each timed backup/restore, wait up to this many seconds for < 0.3 busy cores",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "physical-latest.json")
    args = p.parse_args(argv)
    if args.size_mb < 16 or args.repeat < 1 or args.push_count < 1:
        p.error("--size-mb at least 16, --repeat and --push-count at least 1")
    return args


# -- running things as the postgres OS user ---------------------------------------------------
def _pg_ids() -> tuple[int, int]:
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def chown_pg(path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, *_pg_ids())


def as_pg(argv: list[str]) -> list[str]:
    """``setpriv`` execs the command in place, so the measured pid is the command itself."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUPD_", "PG")) and k != "PYTHONPATH"}
    env["BACKUPD_LOG__FORMAT"] = "json"
    return env


def mkdir_pg(path: Path, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    chown_pg(path)
    return path


def write_pg(path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)
    chown_pg(path)
    return path


@dataclass
class Setup:
    base: Path
    pg: PgCluster
    tool: str
    key_file: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    """Background processes this benchmark started (stopped at exit)."""

    @property
    def work(self) -> Path:
        return self.base

    def new_repo(self, name: str) -> Path:
        """A local repository with its own state dir and config file, initialised as postgres."""
        root = mkdir_pg(self.base / name)
        cfg = write_pg(
            root / "backupd.toml",
            f'repository = "file://{root / "repo"}"\n'
            f'state_dir = "{root / "state"}"\n'
            f'database_url = "{self.pg.url("postgres")}"\n'
            'mode = "physical"\n'
            f'pg_bin = "{self.pg.bin}"\n'
            f'[encryption]\nkey_file = "{self.key_file}"\n'
            "[wal]\narchive_timeout = 300\n",
        )
        subprocess.run(
            as_pg([self.tool, "--config", str(cfg), "init"]),
            env=self.env,
            check=True,
            capture_output=True,
            cwd="/",
        )
        return cfg

    def archive_command(self, cfg: Path) -> str:
        return f"{self.tool} --config {cfg} wal-push %p"

    def point_archive(self, cfg: Path) -> None:
        """Make the server archive into ``cfg``'s repository (the commit rule needs its WAL there)."""
        self.pg.execute(f"ALTER SYSTEM SET archive_command = '{self.archive_command(cfg)}'")
        self.pg.execute("SELECT pg_reload_conf()")
        time.sleep(1.0)

    def backlog(self) -> int:
        status = self.pg.datadir / "pg_wal" / "archive_status"
        return sum(1 for n in os.listdir(status) if n.endswith(".ready"))

    def drain(self, timeout: float = 300) -> float:
        """Wait until the archiver has no backlog; returns the seconds waited."""
        t0 = time.monotonic()
        while self.backlog() > 0:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"archive backlog still {self.backlog()} after {timeout:.0f}s")
            time.sleep(0.5)
        return time.monotonic() - t0

    def pg_env(self) -> dict[str, str]:
        return {**self.env, "PGPASSWORD": self.pg.password}

    def pgbench_argv(self, *extra: str) -> list[str]:
        return [
            str(self.pg.bin / "pgbench"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.pg.port),
            "-U",
            "postgres",
            *extra,
            "pgbench",
        ]

    def measure(self, argv: list[str], quiet: float = 0.0, check: bool = True) -> Measured:
        return run_measured(
            argv,
            env=self.pg_env(),
            workdir=self.base,
            postmaster_pid=postmaster_pid(self.pg),
            check=check,
            quiet_seconds=quiet,
        )


# -- 1 and 2: backups and restores -------------------------------------------------------------
def pgbackrest_conf(s: Setup) -> Path:
    root = mkdir_pg(s.base / "pgbackrest")
    for d in ("repo", "log", "lock", "spool"):
        mkdir_pg(root / d, 0o750)
    return write_pg(
        root / "pgbackrest.conf",
        "[global]\n"
        f"repo1-path={root / 'repo'}\n"
        "repo1-type=posix\n"
        "repo1-retention-full=1\n"
        "compress-type=zst\n"
        "process-max=2\n"
        "start-fast=y\n"
        "archive-check=n\n"
        "log-level-console=warn\n"
        "log-level-file=off\n"
        f"log-path={root / 'log'}\n"
        f"lock-path={root / 'lock'}\n"
        f"spool-path={root / 'spool'}\n"
        f"[{STANZA}]\n"
        f"pg1-path={s.pg.datadir}\n"
        f"pg1-port={s.pg.port}\n"
        f"pg1-socket-path={s.pg.sockdir}\n"
        "pg1-user=postgres\n",
    )


def generate(pg: PgCluster, size_mb: int, seed: int) -> dict[str, Any]:
    db = pg.create_database(f"bench_{size_mb}mb")
    t0 = time.monotonic()
    with pg.connect(db) as conn:
        datagen.create_schema(conn)
        rows = datagen.populate(conn, size_mb, seed=seed)
        conn.execute("CHECKPOINT")
    size = int(pg.execute("SELECT pg_database_size(%s)", params=(db,))[0][0])
    cluster = int(pg.execute("SELECT sum(pg_database_size(datname)) FROM pg_database")[0][0])
    say(
        f"generated {db}: {size / report.MiB:.0f} MiB ({cluster / report.MiB:.0f} MiB cluster) "
        f"in {time.monotonic() - t0:.0f}s"
    )
    return {
        "db": db,
        "database_bytes": size,
        "cluster_bytes": cluster,
        "rows": rows,
        "seconds": round(time.monotonic() - t0, 1),
    }


def basebackup_argv(s: Setup) -> list[str]:
    cmd = [
        str(s.pg.bin / "pg_basebackup"),
        "-h",
        "127.0.0.1",
        "-p",
        str(s.pg.port),
        "-U",
        "postgres",
        "--no-password",
        "-Ft",
        "-D",
        "-",
        "-X",
        "none",
        "--checkpoint=fast",
    ]
    return ["bash", "-c", f"set -o pipefail; {shlex.join(cmd)} > /dev/null"]


def backups(s: Setup, args: argparse.Namespace, br_conf: Path | None, runs: dict[str, Any]) -> Path:
    """Alternating rounds; ours goes to a fresh repository each round (no dedup against the last)."""
    last_cfg: Path | None = None
    say("warm-up pg_basebackup (untimed)")
    s.measure(basebackup_argv(s))
    s.drain()
    for i in range(args.repeat):
        order = ["base", "ours", "pgbackrest"] if i % 2 == 0 else ["pgbackrest", "ours", "base"]
        for step in order:
            if step == "ours":
                cfg = s.new_repo(f"ours-{i}")
                s.point_archive(cfg)
                s.drain()
                argv = as_pg(
                    [s.tool, "--config", str(cfg), "backup", "--mode", "physical", "--kind", "full", "--json"]
                )
                m = s.measure(argv, args.quiet_wait)
                out = json.loads(m.stdout)
                runs["ours_backup"].append({**m.to_json(), "result": out})
                say(
                    f"  ours physical full: {m.wall_seconds:.1f}s, peak RSS {m.peak_rss_kib / 1024:.0f} MiB, "
                    f"stored {report.mib(out.get('stored_bytes', 0))}"
                )
                last_cfg = cfg
            elif step == "base":
                s.drain()
                m = s.measure(basebackup_argv(s), args.quiet_wait)
                runs["pg_basebackup"].append(m.to_json())
                say(f"  pg_basebackup -Ft -D - -X none > /dev/null: {m.wall_seconds:.1f}s")
            elif br_conf is not None:
                s.drain()
                argv = as_pg(
                    ["pgbackrest", f"--config={br_conf}", f"--stanza={STANZA}", "--type=full", "backup"]
                )
                m = s.measure(argv, args.quiet_wait)
                runs["pgbackrest_backup"].append(m.to_json())
                say(f"  pgbackrest full backup: {m.wall_seconds:.1f}s")
    assert last_cfg is not None
    return last_cfg


def restores(
    s: Setup, args: argparse.Namespace, cfg: Path, br_conf: Path | None, runs: dict[str, Any]
) -> None:
    parent = mkdir_pg(s.base / "restores")
    for i in range(args.repeat):
        order = ["ours", "pgbackrest"] if i % 2 == 0 else ["pgbackrest", "ours"]
        for step in order:
            target = parent / f"{step}-{i}"
            if step == "ours":
                argv = as_pg(
                    [s.tool, "--config", str(cfg), "restore", "latest", "--pgdata", str(target), "--json"]
                )
                m = s.measure(argv, args.quiet_wait)
                runs["ours_restore"].append({**m.to_json(), "result": json.loads(m.stdout)})
                rss = m.peak_rss_kib / 1024
                say(f"  ours restore --pgdata: {m.wall_seconds:.1f}s, peak RSS {rss:.0f} MiB")
            elif br_conf is not None:
                mkdir_pg(target, 0o700)
                argv = as_pg(
                    [
                        "pgbackrest",
                        f"--config={br_conf}",
                        f"--stanza={STANZA}",
                        f"--pg1-path={target}",
                        "restore",
                    ]
                )
                m = s.measure(argv, args.quiet_wait)
                runs["pgbackrest_restore"].append(m.to_json())
                say(f"  pgbackrest restore: {m.wall_seconds:.1f}s")
            else:
                continue
            runs[f"{step}_restore_bytes"] = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
            shutil.rmtree(target, ignore_errors=True)


# -- 3: WAL archiving under pgbench ------------------------------------------------------------
def lsn(pg: PgCluster) -> str:
    return str(pg.execute("SELECT pg_current_wal_lsn()")[0][0])


def archived_count(pg: PgCluster) -> tuple[int, int]:
    row = pg.execute("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
    return int(row[0]), int(row[1])


def wal_archiving(s: Setup, args: argparse.Namespace) -> dict[str, Any]:
    s.pg.create_database("pgbench")
    say(f"pgbench -i -s {args.pgbench_scale}")
    t0 = time.monotonic()
    subprocess.run(
        s.pgbench_argv("-i", "-q", "-s", str(args.pgbench_scale)),
        env=s.pg_env(),
        check=True,
        capture_output=True,
    )
    s.pg.execute("CHECKPOINT")
    init_s = time.monotonic() - t0
    say(f"  init {init_s:.0f}s; draining the archive backlog ({s.backlog()} .ready)")
    drain0 = s.drain(600)
    lsn0, (arch0, fail0), backlog0 = lsn(s.pg), archived_count(s.pg), s.backlog()
    say(f"pgbench -c 4 -j 2 -T {args.pgbench_seconds}, sampling the backlog every second")
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(
        s.pgbench_argv("-c", "4", "-j", "2", "-T", str(args.pgbench_seconds)),
        env=s.pg_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    s.procs.append(proc)
    while proc.poll() is None:
        time.sleep(1.0)
        samples.append(
            {
                "t": round(time.monotonic() - t0, 1),
                "ready": s.backlog(),
                "archived": archived_count(s.pg)[0] - arch0,
            }
        )
    elapsed = time.monotonic() - t0
    lsn1, (arch1, fail1), backlog1 = lsn(s.pg), archived_count(s.pg), s.backlog()
    out, _err = proc.communicate()
    s.procs.remove(proc)
    wal_bytes = int(s.pg.execute("SELECT pg_wal_lsn_diff(%s, %s)", params=(lsn1, lsn0))[0][0])
    tps = next((ln for ln in out.decode().splitlines() if ln.startswith("tps")), "?")
    t1 = time.monotonic()
    with contextlib.suppress(RuntimeError):
        s.drain(300)
    drain_after = time.monotonic() - t1
    ready = [int(x["ready"]) for x in samples]
    half = max(1, len(ready) // 2)
    first_half, second_half = ready[:half], ready[half:] or ready[-1:]
    grew = (
        backlog1 > backlog0 + 2
        and sum(second_half) / len(second_half) > sum(first_half) / len(first_half) + 1
    )
    res = {
        "init_seconds": round(init_s, 1),
        "drain_before_seconds": round(drain0, 1),
        "pgbench_seconds": round(elapsed, 1),
        "pgbench_tps_line": tps,
        "lsn_before": lsn0,
        "lsn_after": lsn1,
        "wal_bytes": wal_bytes,
        "wal_mb_per_s": round(wal_bytes / report.MB / elapsed, 2),
        "wal_segments_per_s": round(wal_bytes / SEG / elapsed, 3),
        "archived_segments": arch1 - arch0,
        "archive_failures": fail1 - fail0,
        "archived_segments_per_s": round((arch1 - arch0) / elapsed, 3),
        "backlog_before": backlog0,
        "backlog_max": max(ready, default=0),
        "backlog_final": backlog1,
        "backlog_grew": grew,
        "drain_after_seconds": round(drain_after, 1),
        "samples": samples,
    }
    say(
        f"  WAL {res['wal_mb_per_s']} MB/s = {res['wal_segments_per_s']} seg/s; archived "
        f"{res['archived_segments_per_s']} seg/s; backlog max {res['backlog_max']}, final {backlog1}; "
        f"drained in {drain_after:.0f}s"
    )
    return res


def push_capacity(s: Setup, args: argparse.Namespace) -> dict[str, Any]:
    """N sequential wal-push calls of copies of real segments into a fresh repository."""
    src = mkdir_pg(s.base / "segments")
    wal = s.pg.datadir / "pg_wal"
    real = sorted(p for p in wal.iterdir() if p.is_file() and len(p.name) == 24 and p.stat().st_size == SEG)
    if not real:
        raise RuntimeError("no WAL segment in pg_wal to copy")
    copies: list[Path] = []
    for i in range(args.push_count):
        dst = src / real[i % len(real)].name if i < len(real) else src / f"{0x7F:08X}{0:08X}{i:08X}"
        shutil.copyfile(real[i % len(real)], dst)
        chown_pg(dst)
        copies.append(dst)
    cfg = s.new_repo("push-capacity")
    say(f"wal-push capacity: {len(copies)} sequential calls ({len(real)} distinct real segments)")
    walls: list[float] = []
    t0 = time.monotonic()
    for p in copies:
        t = time.monotonic()
        subprocess.run(
            as_pg([s.tool, "--config", str(cfg), "wal-push", str(p)]),
            env=s.env,
            check=True,
            capture_output=True,
            cwd="/",
        )
        walls.append(time.monotonic() - t)
    total = time.monotonic() - t0
    # One more call, measured for peak RSS (a new name: a duplicate would skip the upload).
    extra = src / f"{0x7E:08X}{0:08X}{0:08X}"
    shutil.copyfile(copies[0], extra)
    chown_pg(extra)
    m = s.measure(as_pg([s.tool, "--config", str(cfg), "wal-push", str(extra)]))
    res = {
        "calls": len(copies),
        "distinct_sources": min(len(real), len(copies)),
        "total_seconds": round(total, 2),
        "segments_per_s": round(len(copies) / total, 3),
        "per_call_seconds": report.spread(walls),
        "rss_run": m.to_json(),
    }
    say(
        f"  {res['segments_per_s']} seg/s ({total / len(copies):.2f}s per call); one call: peak RSS "
        f"{m.peak_rss_kib / 1024:.0f} MiB"
    )
    return res


# -- 4: wal-stream -------------------------------------------------------------------------------
def wal_stream(s: Setup, args: argparse.Namespace) -> dict[str, Any]:
    cfg = s.new_repo("wal-stream")
    say(f"wal-stream for {args.stream_seconds}s with pgbench generating WAL, then SIGTERM")
    load = subprocess.Popen(
        s.pgbench_argv("-c", "2", "-j", "1", "-T", str(args.stream_seconds)),
        env=s.pg_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    s.procs.append(load)
    argv = [
        "timeout",
        "--foreground",
        "-s",
        "TERM",
        "-k",
        "60",
        str(args.stream_seconds),
        *as_pg([s.tool, "--config", str(cfg), "wal-stream"]),
    ]
    try:
        m = s.measure(argv, check=False)
    finally:
        load.wait()
        s.procs.remove(load)
    tool = [c for name, c in m.children.items() if name.startswith("contentflow")]
    peak = max((c.peak_rss_kib for c in tool), default=0)
    repo = cfg.parent / "repo"
    stored = [p.name for p in repo.rglob("*") if p.is_file() and "/wal/" in str(p)]
    slot = s.pg.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", params=(SLOT,))[0][
        0
    ]
    s.pg.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
        params=(SLOT,),
    )
    res = {
        "run": m.to_json(),
        "peak_rss_kib": peak,
        "archived_files": len(stored),
        "slot_created": bool(slot),
        "slot_dropped": True,
    }
    say(f"  wal-stream: peak RSS {peak / 1024:.0f} MiB, {len(stored)} files archived, exit {m.returncode}")
    return res


# -- report --------------------------------------------------------------------------------------
def summarize(d: dict[str, Any]) -> list[report.Row]:
    runs = d["runs"]
    rows: list[report.Row] = []

    def best(key: str) -> float | None:
        vals = [r["wall_seconds"] for r in runs.get(key, [])]
        return min(vals) if vals else None

    ours_b, base_b, br_b = best("ours_backup"), best("pg_basebackup"), best("pgbackrest_backup")
    ours_r, br_r = best("ours_restore"), best("pgbackrest_restore")
    assert ours_b is not None and base_b is not None and ours_r is not None
    ratio = ours_b / base_b
    rows.append(
        report.Row(
            "physical full backup (min of runs)",
            report.secs(ours_b),
            f"pg_basebackup {report.secs(base_b)}",
            ratio,
            "<= 1.25",
            ratio <= 1.25,
            "backup_vs_pg_basebackup",
            {"ours_s": ours_b, "baseline_s": base_b},
        )
    )
    if br_b is not None:
        rows.append(
            report.Row(
                "physical full backup vs pgBackRest",
                report.secs(ours_b),
                f"pgbackrest {report.secs(br_b)}",
                ours_b / br_b,
                "(reported)",
                None,
                "backup_vs_pgbackrest",
                {"ours_s": ours_b, "baseline_s": br_b},
            )
        )
    if br_r is not None:
        rows.append(
            report.Row(
                "restore --pgdata vs pgBackRest restore",
                report.secs(ours_r),
                f"pgbackrest {report.secs(br_r)}",
                ours_r / br_r,
                "(reported)",
                None,
                "restore_vs_pgbackrest",
                {"ours_s": ours_r, "baseline_s": br_r},
            )
        )
    else:
        rows.append(
            report.Row(
                "restore --pgdata",
                report.secs(ours_r),
                "pgBackRest not installed",
                None,
                "(reported)",
                None,
                "restore",
                {"ours_s": ours_r},
            )
        )
    w = d["wal_archiving"]
    rows.append(
        report.Row(
            "pgbench WAL rate (4 clients)",
            f"{w['wal_mb_per_s']} MB/s",
            f"{w['wal_segments_per_s']} seg/s",
            None,
            "",
            None,
            "pgbench_wal_rate",
            {"wal_mb_per_s": w["wal_mb_per_s"], "wal_segments_per_s": w["wal_segments_per_s"]},
        )
    )
    arch_ratio = w["archived_segments_per_s"] / w["wal_segments_per_s"] if w["wal_segments_per_s"] else None
    rows.append(
        report.Row(
            "archive_command wal-push during pgbench",
            f"{w['archived_segments_per_s']} seg/s",
            f"produced {w['wal_segments_per_s']} seg/s",
            arch_ratio,
            "backlog does not grow",
            not w["backlog_grew"],
            "archiving_keeps_up",
            {k: w[k] for k in ("archived_segments_per_s", "backlog_grew")},
        )
    )
    rows.append(
        report.Row(
            ".ready backlog (max / final)",
            f"{w['backlog_max']} / {w['backlog_final']}",
            f"before {w['backlog_before']}",
            None,
            "",
            None,
            "backlog",
            {k: w[k] for k in ("backlog_max", "backlog_final", "backlog_before")},
        )
    )
    p = d["push_capacity"]
    cap_ratio = p["segments_per_s"] / w["wal_segments_per_s"] if w["wal_segments_per_s"] else None
    rows.append(
        report.Row(
            f"wal-push capacity ({p['calls']} sequential)",
            f"{p['segments_per_s']} seg/s",
            f"pgbench {w['wal_segments_per_s']} seg/s",
            cap_ratio,
            ">= 3.0",
            None if cap_ratio is None else cap_ratio >= 3.0,
            "push_capacity",
            {"segments_per_s": p["segments_per_s"]},
        )
    )
    rss_push = p["rss_run"]["peak_rss_kib"]
    rss_stream = d["wal_stream"]["peak_rss_kib"]
    rss_backup = max(r["peak_rss_kib"] for r in runs["ours_backup"])
    for label, kib, key in (
        ("peak RSS wal-push (one call)", rss_push, "rss_wal_push"),
        ("peak RSS wal-stream (own process)", rss_stream, "rss_wal_stream"),
        ("peak RSS physical backup (own process)", rss_backup, "rss_backup"),
    ):
        rows.append(
            report.Row(label, f"{kib / 1024:.0f} MiB", "", None, "", None, key, {"peak_rss_kib": kib})
        )
    return rows


def measure(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="backupd-physbench-"))
    state["base"] = base
    base.chmod(0o755)  # the postgres user works here
    chown_pg(base)
    tool = tool_command()
    key_file = write_pg(base / "key", os.urandom(32))
    pg = PgCluster(base / "cluster")
    state["pg"] = pg
    s = Setup(base=base, pg=pg, tool=tool, key_file=key_file, env=base_env())
    state["setup"] = s
    cfg0 = s.new_repo("ours-initial")
    pg.extra_conf = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"'{s.archive_command(cfg0)}'",
        "max_wal_senders": "10",
        "max_wal_size": "1GB",
    }
    pg.init().start()
    version = str(pg.execute("SHOW server_version")[0][0])
    machine = report.machine(pg.bin, version, tool)
    br = shutil.which("pgbackrest")
    if br:
        machine["pgbackrest"] = subprocess.run([br, "version"], capture_output=True, text=True).stdout.strip()
    say(
        f"cluster up: PostgreSQL {version}; {machine['nproc']} CPUs, {machine['memory_mib']} MiB RAM; "
        f"pgBackRest: {machine.get('pgbackrest', 'not installed')}"
    )
    data = generate(pg, args.size_mb, args.seed)
    say("draining the archive backlog of the data load")
    s.drain(900)
    br_conf: Path | None = None
    if br:
        br_conf = pgbackrest_conf(s)
        subprocess.run(
            as_pg([br, f"--config={br_conf}", f"--stanza={STANZA}", "stanza-create"]),
            env=s.env,
            check=True,
            capture_output=True,
            cwd="/",
        )
    runs: dict[str, Any] = {
        k: []
        for k in ("pg_basebackup", "ours_backup", "pgbackrest_backup", "ours_restore", "pgbackrest_restore")
    }
    say(f"full backups, {args.repeat} rounds")
    cfg = backups(s, args, br_conf, runs)
    say(f"restores, {args.repeat} rounds")
    restores(s, args, cfg, br_conf, runs)
    wal = wal_archiving(s, args)
    push = push_capacity(s, args)
    stream = wal_stream(s, args)
    return {
        "machine": machine,
        "dataset": data,
        "pgbackrest_conf": br_conf.read_text() if br_conf else None,
        "runs": runs,
        "wal_archiving": wal,
        "push_capacity": push,
        "wal_stream": stream,
    }


def cleanup(state: dict[str, Any]) -> None:
    s: Setup | None = state.get("setup")
    if s is not None:
        for proc in s.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    pg: PgCluster | None = state.get("pg")
    if pg is not None:
        with contextlib.suppress(Exception):
            pg.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
        pg.destroy()
    base: Path | None = state.get("base")
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


def _on_term(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    started = report.now_iso()
    say(f"physical bench: {args.size_mb} MiB, {args.repeat} rounds, pgbench {args.pgbench_seconds}s")
    state: dict[str, Any] = {}
    os.chdir("/")  # commands run as postgres, who may not reach the caller's directory
    try:
        measured = measure(args, state)
    except KeyboardInterrupt:
        print("\ninterrupted: cluster, slots and temp dirs removed, no results written", file=sys.stderr)
        return 130
    finally:
        # Ignore further Ctrl-C while cleaning up, so the cleanup itself is not cut short.
        prev = signal.signal(signal.SIGINT, signal.SIG_IGN)
        cleanup(state)
        signal.signal(signal.SIGINT, prev)
    rows = summarize(measured)
    doc = {
        "date": started,
        "finished": report.now_iso(),
        "command": [sys.executable, *sys.argv],
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "method": {
            "compared_figure": "minimum wall time over the repeats (all raw runs are below)",
            "our_backup": "backup --mode physical --kind full --json, as postgres, each round into a fresh"
            " local repository that archive_command also archives into (commit rule)",
            "pg_basebackup": "pg_basebackup -Ft -D - -X none --checkpoint=fast > /dev/null",
            "pgbackrest": "pgbackrest --type=full backup / restore, as postgres; config in pgbackrest_conf",
            "archive_mode": "on for every backup; archive_command = our wal-push",
            "peak_rss": "VmHWM of the process itself, polled every 20 ms (children listed apart)",
            "loadavg_at_start": os.getloadavg(),
        },
        **measured,
        "summary": [r.to_json() for r in rows],
    }
    report.write_json(args.output, doc)
    print()
    print(report.table(rows))
    print(f"\nresults: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
