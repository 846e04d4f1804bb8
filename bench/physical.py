"""Physical backups and WAL archiving: contentflow-backupd against pg_basebackup and pgBackRest.

One disposable PostgreSQL cluster (archive_mode on, archive_command = our ``wal-push``), one
generated database, one invocation: every ratio compares figures measured on the same cluster in
the same run. See bench/PHYSICAL.md. Not a test: missed targets are reported, never fatal.

    /opt/venv-sys/bin/python bench/physical.py [--size-mb N] [--pgbench-seconds S]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pwd
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import dataset, report  # noqa: E402
from bench.load import wait_for_quiet  # noqa: E402
from bench.procs import Measured, run_measured  # noqa: E402
from bench.steps import installed_tool, postmaster_pid  # noqa: E402
from contentflow_backupd.demo.cluster import PgCluster, free_port  # noqa: E402

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
        "--repeat",
        type=int,
        default=3,
        help="rounds of backup and restore (default 3): min vs pg_basebackup, median vs pgBackRest",
    )
    p.add_argument(
        "--push-count",
        type=int,
        default=16,
        help="real WAL segments pushed and fetched by each tool, alternating (default 16; >= 12)",
    )
    p.add_argument(
        "--pitr-segments",
        type=int,
        default=200,
        help="WAL segments a PITR recovery replays (default 200; 0 skips the PITR step)",
    )
    p.add_argument("--pitr-repeat", type=int, default=1, help="PITR recoveries of each tool (default 1)")
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
    if args.size_mb < 16 or args.repeat < 1 or args.push_count < 1 or args.pitr_repeat < 1:
        p.error("--size-mb at least 16, --repeat, --push-count and --pitr-repeat at least 1")
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
    passphrase_file: Path
    """The README's setup: a random base64 passphrase in a file (``[encryption] passphrase_file``)."""
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
            f'[encryption]\npassphrase_file = "{self.passphrase_file}"\n'
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

    @contextlib.contextmanager
    def daemon(self, cfg: Path) -> Iterator[None]:
        """The daemon of ``cfg``'s repository (``run``, as postgres, every job off): ``wal push``
        hands segments to it over its socket, and it pushes ahead of the archiver. Up once its
        WAL socket is there; stopped (SIGTERM) when the block ends."""
        sock = cfg.parent / "state" / "wal.sock"
        env = {
            **self.env,
            "BACKUPD_HTTP__LISTEN": "off",
            "BACKUPD_WAL__METHOD": "archive_command",
            **{
                f"BACKUPD_SCHEDULE__{j}": "off"
                for j in ("FULL", "INCREMENTAL", "WAL", "RETENTION", "VERIFY", "RESTORE_TEST")
            },
        }
        proc = subprocess.Popen(
            as_pg([self.tool, "--config", str(cfg), "run"]),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
        )
        self.procs.append(proc)
        try:
            deadline = time.monotonic() + 120
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon of {cfg} did not start (exit {proc.poll()})")
                time.sleep(0.1)
            yield
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(90)
            self.procs.remove(proc)

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
def pgbackrest_conf(s: Setup, name: str = "pgbackrest") -> Path:
    """A local pgBackRest repository configured as issue 15 says (zstd, 2 processes, AES-256-CBC)
    and its stanza, created (untimed). Archiving is synchronous; ``async_get_conf`` derives the
    configuration the PITR recovery's ``restore_command`` uses (``archive-get`` asynchronous)."""
    root = mkdir_pg(s.base / name)
    for d in ("repo", "log", "lock", "spool"):
        mkdir_pg(root / d, 0o750)
    conf = write_pg(
        root / "pgbackrest.conf",
        "[global]\n"
        f"repo1-path={root / 'repo'}\n"
        "repo1-type=posix\n"
        "repo1-retention-full=1\n"
        "repo1-cipher-type=aes-256-cbc\n"
        f"repo1-cipher-pass={base64.b64encode(os.urandom(48)).decode()}\n"
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
    subprocess.run(
        as_pg(["pgbackrest", f"--config={conf}", f"--stanza={STANZA}", "stanza-create"]),
        env=s.env,
        check=True,
        capture_output=True,
        cwd="/",
    )
    return conf


def async_get_conf(conf: Path) -> Path:
    """``conf`` plus ``archive-async=y`` for ``archive-get`` only (its queue prefetches segments
    with ``process-max`` processes into the spool path)."""
    return write_pg(
        conf.with_name("pgbackrest-async-get.conf"),
        conf.read_text() + "[global:archive-get]\narchive-async=y\n",
    )


def br_argv(conf: Path, *cmd: str) -> list[str]:
    return as_pg(["pgbackrest", f"--config={conf}", f"--stanza={STANZA}", *cmd])


def generate(pg: PgCluster, size_mb: int, seed: int) -> dict[str, Any]:
    db = pg.create_database(f"bench_{size_mb}mb")
    t0 = time.monotonic()
    with pg.connect(db) as conn:
        rows = dataset.build(conn, size_mb, seed=seed)
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


def pgbench_init(s: Setup, args: argparse.Namespace) -> float:
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
    return time.monotonic() - t0


def set_archive_command(s: Setup, command: str) -> None:
    """Switch the server's archive_command (reload), after the backlog of the previous one drained."""
    s.drain(900)
    s.pg.execute(f"ALTER SYSTEM SET archive_command = '{command}'")
    s.pg.execute("SELECT pg_reload_conf()")
    time.sleep(1.0)


def wal_archiving(s: Setup, args: argparse.Namespace, label: str, init_s: float) -> dict[str, Any]:
    say(f"sustained archiving with {label}: draining the archive backlog ({s.backlog()} .ready)")
    drain0 = s.drain(900)
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
        "archive_command": label,
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


def real_segments(s: Setup, count: int) -> list[Path]:
    """Up to ``count`` 16 MiB segments of this cluster whose content matches their name (archived
    ones: ``.done``), the newest ones, copied to a directory the postgres user owns."""
    wal = s.pg.datadir / "pg_wal"
    done = {n[: -len(".done")] for n in os.listdir(wal / "archive_status") if n.endswith(".done")}
    names = sorted((n for n in done if len(n) == 24 and (wal / n).is_file()), reverse=True)[:count]
    src = mkdir_pg(s.base / "segments")
    copies = []
    for name in sorted(names):
        with contextlib.suppress(FileNotFoundError):  # recycled meanwhile
            shutil.copyfile(wal / name, src / name)
            chown_pg(src / name)
            copies.append(src / name)
    return copies


def segment_costs(s: Setup, args: argparse.Namespace, br: bool) -> dict[str, Any]:
    """``archive_command`` and ``restore_command`` cost per real 16 MiB segment: each segment is
    pushed by ours (``wal-push``) and by pgBackRest (sync ``archive-push``) into a fresh repository
    of each, then fetched back (``wal-fetch`` vs sync ``archive-get``), alternating which tool goes
    first. The calls are sequential, so ours' per-call times also give its push capacity."""
    copies = real_segments(s, args.push_count)
    if not copies:
        raise RuntimeError("no archived WAL segment in pg_wal to copy")
    if len(copies) < min(12, args.push_count):
        say(f"NOTE: only {len(copies)} archived segments in pg_wal (the issue's figure is a median of >= 12)")
    cfg = s.new_repo("push-cost")
    conf = pgbackrest_conf(s, "pgbackrest-push-cost") if br else None
    say(f"archive_command / restore_command per segment: {len(copies)} real segments, alternating")
    fetched = mkdir_pg(s.base / "fetched")
    direct = s.new_repo("push-cost-direct")
    async_conf = async_get_conf(conf) if conf is not None else None
    runs: dict[str, list[dict[str, Any]]] = {
        k: []
        for k in ("ours_push", "ours_direct_push", "br_push", "ours_fetch", "br_fetch", "br_async_fetch")
    }
    with s.daemon(cfg):
        _segment_rounds(s, copies, cfg, direct, conf, async_conf, fetched, runs)
    walls = {k: [float(r["wall_seconds"]) for r in v] for k, v in runs.items()}
    res: dict[str, Any] = {
        "segments": [p.name for p in copies],
        "runs": runs,
        **{f"{k}_seconds": report.spread(v) for k, v in walls.items() if v},
        "ours_push_segments_per_s": round(len(copies) / sum(walls["ours_push"]), 3),
        "rss_wal_push_kib": max(int(r["peak_rss_kib"]) for r in runs["ours_push"]),
    }
    for key, value in walls.items():
        if value:
            say(f"  {key}: median {statistics.median(value) * 1000:.0f} ms")
    return res


def _segment_rounds(
    s: Setup,
    copies: list[Path],
    cfg: Path,
    direct: Path,
    conf: Path | None,
    async_conf: Path | None,
    fetched: Path,
    runs: dict[str, list[dict[str, Any]]],
) -> None:
    """Each segment pushed by ours through the daemon, ours without one (its own repository, no
    daemon), pgBackRest's sync archive-push; then fetched back in order by ours (``wal fetch``: its
    helper prefetches the next ones), pgBackRest's sync archive-get and its async one (queue),
    alternating which tool goes first."""

    def push(who: str, seg: Path) -> list[str] | None:
        if who == "ours":
            return as_pg([s.tool, "--config", str(cfg), "wal-push", str(seg)])
        if who == "ours_direct":
            return as_pg([s.tool, "--config", str(direct), "wal-push", str(seg)])
        return br_argv(conf, "archive-push", str(seg)) if conf else None

    def fetch(who: str, seg: Path, dest: Path) -> list[str] | None:
        if who == "ours":
            return as_pg([s.tool, "--config", str(cfg), "wal-fetch", seg.name, str(dest)])
        use = conf if who == "br" else async_conf
        return br_argv(use, "archive-get", seg.name, str(dest)) if use else None

    pushers, fetchers = ["ours", "ours_direct", "br"], ["ours", "br", "br_async"]
    for i, seg in enumerate(copies):
        for who in pushers if i % 2 == 0 else pushers[::-1]:
            argv = push(who, seg)
            if argv is not None:
                runs[f"{who}_push"].append({**s.measure(argv).to_json(), "segment": seg.name})
    for i, seg in enumerate(copies):
        for who in fetchers if i % 2 == 0 else fetchers[::-1]:
            dest = fetched / f"{who}-{seg.name}"
            argv = fetch(who, seg, dest)
            if argv is None:
                continue
            m = s.measure(argv)
            if dest.read_bytes() != seg.read_bytes():
                raise RuntimeError(f"{who} fetched {seg.name} with different content")
            dest.unlink(missing_ok=True)
            runs[f"{who}_fetch"].append({**m.to_json(), "segment": seg.name})


# -- PITR: a recovery that replays many segments ------------------------------------------------
def generate_wal(s: Setup, segments: int) -> dict[str, Any]:
    """pgbench -c 4 until the server has written ``segments`` more WAL segments, then a switch."""
    lsn0 = lsn(s.pg)
    proc = subprocess.Popen(
        s.pgbench_argv("-c", "4", "-j", "2", "-T", "7200"),
        env=s.pg_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    s.procs.append(proc)
    t0 = time.monotonic()
    try:
        while True:
            done = int(s.pg.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", params=(lsn0,))[0][0])
            if done >= segments * SEG or proc.poll() is not None:
                break
            time.sleep(1.0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
        s.procs.remove(proc)
    s.pg.execute("SELECT pg_switch_wal()")
    lsn1 = lsn(s.pg)
    return {"lsn_before": lsn0, "lsn_after": lsn1, "seconds": round(time.monotonic() - t0, 1)}


def wal_segments_between(pg: PgCluster, a: str, b: str) -> float:
    return round(int(pg.execute("SELECT pg_wal_lsn_diff(%s, %s)", params=(b, a))[0][0]) / SEG, 1)


def timed_recovery(s: Setup, pgdata: Path) -> dict[str, Any]:
    """``pg_ctl start`` of a restored data directory until the server has promoted (answers
    ``NOT pg_is_in_recovery()``); the restored server runs on another port, archives nothing."""
    port = free_port()
    auto = (pgdata / "postgresql.auto.conf").read_text()
    restore_command = [ln for ln in auto.splitlines() if ln.startswith("restore_command")]
    with open(pgdata / "postgresql.auto.conf", "a") as f:
        f.write(f"port = {port}\nunix_socket_directories = ''\narchive_mode = 'off'\n")
    log = pgdata.with_name(pgdata.name + ".log")
    pg_ctl = str(s.pg.bin / "pg_ctl")
    t0 = time.monotonic()
    try:
        subprocess.run(
            as_pg([pg_ctl, "-D", str(pgdata), "-l", str(log), "-W", "start"]), check=True, capture_output=True
        )
        url = f"postgresql://postgres:{s.pg.password}@127.0.0.1:{port}/postgres"
        from bench.rto import wait_promoted  # bench.rto imports this module

        wait_promoted(url, pgdata, log)
        seconds = time.monotonic() - t0
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT timeline_id, redo_lsn::text FROM pg_control_checkpoint()").fetchone()
        restored = {"timeline": row[0] if row else None, "checkpoint_redo": row[1] if row else None}
    finally:
        subprocess.run(
            as_pg([pg_ctl, "-D", str(pgdata), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            check=False,
        )
        fetched = log.read_text(errors="replace").count("restored log file") if log.exists() else 0
        log.unlink(missing_ok=True)
    return {
        "start_to_promoted_seconds": round(seconds, 3),
        "segments_restored_logged": fetched,
        "restore_command": restore_command[-1:],
        **restored,
    }


def _pitr_archive(
    s: Setup, args: argparse.Namespace, cfg: Path, conf: Path | None, command: str
) -> dict[str, Any]:
    """The archiving phase of ``pitr``: both backups, then ``--pitr-segments`` of WAL, archived."""
    set_archive_command(s, command)
    res: dict[str, Any] = {"archive_command": command, "runs": []}
    res["ours_backup_lsn"] = lsn(s.pg)
    subprocess.run(
        as_pg([s.tool, "--config", str(cfg), "backup", "--mode", "physical", "--kind", "full", "--json"]),
        env=s.env,
        check=True,
        capture_output=True,
        cwd="/",
    )
    if conf is not None:
        res["pgbackrest_backup_lsn"] = lsn(s.pg)
        subprocess.run(
            br_argv(conf, "--type=full", "backup"), env=s.env, check=True, capture_output=True, cwd="/"
        )
    say(f"  backups taken; pgbench writes {args.pitr_segments} segments of WAL")
    res["wal"] = generate_wal(s, args.pitr_segments)
    drain = s.drain(3600)
    say(f"  {res['wal']['seconds']:.0f}s of pgbench, archive drained {drain:.0f}s later")
    end = res["wal"]["lsn_after"]
    res["ours_segments_to_replay"] = wal_segments_between(s.pg, res["ours_backup_lsn"], end)
    if conf is not None:
        res["pgbackrest_segments_to_replay"] = wal_segments_between(s.pg, res["pgbackrest_backup_lsn"], end)
    return res


def pitr(s: Setup, args: argparse.Namespace, br: bool) -> dict[str, Any]:
    """Both tools archive every segment (``archive_command`` = ours ``&&`` pgBackRest); each takes
    a full backup; pgbench writes ``--pitr-segments`` segments; then each recovery is timed from
    ``pg_ctl start`` to promotion (ours: ``wal-fetch``; pgBackRest: ``archive-get`` with
    ``archive-async=y``). Only the start is timed, not the restore of the files."""
    cfg = s.new_repo("pitr")
    conf = pgbackrest_conf(s, "pgbackrest-pitr") if br else None
    command = s.archive_command(cfg)
    if conf is not None:
        command += f" && pgbackrest --config={conf} --stanza={STANZA} archive-push %p"
    say(f"PITR: both tools archive ({command}); ours with its daemon up")
    with s.daemon(cfg):
        res = _pitr_archive(s, args, cfg, conf, command)
    if conf is not None:
        async_conf = async_get_conf(conf)
    parent = mkdir_pg(s.base / "pitr-restores")
    for i in range(args.pitr_repeat):
        for who in ("ours", "pgbackrest") if i % 2 == 0 else ("pgbackrest", "ours"):
            target = parent / f"{who}-{i}"
            if who == "ours":
                argv = as_pg(
                    [s.tool, "--config", str(cfg), "restore", "latest", "--pgdata", str(target), "--json"]
                )
            elif conf is not None:
                mkdir_pg(target, 0o700)
                get = f"pgbackrest --config={async_conf} --stanza={STANZA} --pg1-path={target}"
                get += ' archive-get %f "%p"'
                argv = br_argv(
                    conf, f"--pg1-path={target}", f"--recovery-option=restore_command={get}", "restore"
                )
            else:
                continue
            subprocess.run(argv, env=s.env, check=True, capture_output=True, cwd="/")
            if args.quiet_wait > 0:
                wait_for_quiet(args.quiet_wait)
            try:
                r = {"tool": who, **timed_recovery(s, target)}
                if who == "pgbackrest" and conf is not None:
                    # archive-get's asynchronous queue works in the spool path's archive/<stanza>/in.
                    r["async_spool_used"] = (conf.parent / "spool" / "archive" / STANZA / "in").is_dir()
            finally:
                shutil.rmtree(target, ignore_errors=True)
                shutil.rmtree(target.with_name(target.name + ".recovery"), ignore_errors=True)
            res["runs"].append(r)
            say(f"  {who}: pg_ctl start -> promoted {r['start_to_promoted_seconds']:.1f}s")
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
SKIPPED = "pgBackRest not installed: skipped"


def _versus(
    label: str, ours: float | None, theirs: float | None, target: float, key: str, unit: str = "s"
) -> report.Row:
    """A row against pgBackRest: ratio ours/theirs, met when at or below ``target``."""

    def fmt(v: float) -> str:
        return f"{v * 1000:.0f} ms" if unit == "ms" else report.secs(v)

    if ours is None:
        return report.Row(label, "not measured", "", None, f"<= {target}", None, key, {})
    if theirs is None:
        return report.Row(label, fmt(ours), SKIPPED, None, f"<= {target}", None, key, {"ours_s": ours})
    ratio = ours / theirs
    return report.Row(
        label, fmt(ours), f"pgbackrest {fmt(theirs)}", ratio, f"<= {target}", ratio <= target, key,
        {"ours_s": ours, "baseline_s": theirs},
    )  # fmt: skip


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(d: dict[str, Any]) -> list[report.Row]:
    runs = d["runs"]
    rows: list[report.Row] = []

    def walls(key: str) -> list[float]:
        return [float(r["wall_seconds"]) for r in runs.get(key, [])]

    ours_b, base_b = min(walls("ours_backup")), min(walls("pg_basebackup"))
    ratio = ours_b / base_b
    rows.append(
        report.Row(
            "physical full backup vs pg_basebackup -Ft -X none > /dev/null (min of runs)",
            report.secs(ours_b),
            f"pg_basebackup {report.secs(base_b)}",
            ratio,
            "<= 1.25",
            ratio <= 1.25,
            "backup_vs_pg_basebackup",
            {"ours_s": ours_b, "baseline_s": base_b},
        )
    )
    rows.append(
        _versus(
            "physical full backup vs pgBackRest (median of runs)",
            _median(walls("ours_backup")), _median(walls("pgbackrest_backup")), 0.9, "backup_vs_pgbackrest",
        )
    )  # fmt: skip
    rows.append(
        _versus(
            "restore, files only (restore --pgdata vs pgbackrest restore, median)",
            _median(walls("ours_restore")), _median(walls("pgbackrest_restore")), 1.0,
            "restore_vs_pgbackrest",
        )
    )  # fmt: skip
    c = d["segment_costs"]
    n = len(c["segments"])

    def med(key: str) -> float | None:
        spread = c.get(f"{key}_seconds")
        return None if spread is None else float(spread["median"])

    rows.append(
        _versus(
            f"archive_command per 16 MiB segment (wal-push, daemon up, vs sync archive-push, median of {n})",
            med("ours_push"), med("br_push"), 1.0, "archive_command_per_segment", "ms",
        )
    )  # fmt: skip
    rows.append(
        _versus(
            f"archive_command per segment without a daemon (wal-push vs sync archive-push, median of {n})",
            med("ours_direct_push"), med("br_push"), 1.0, "archive_command_per_segment_direct", "ms",
        )
    )  # fmt: skip
    rows.append(
        _versus(
            f"restore_command per segment (wal-fetch, prefetch, vs async archive-get, median of {n})",
            med("ours_fetch"), med("br_async_fetch"), 1.0, "restore_command_per_segment", "ms",
        )
    )  # fmt: skip
    rows.append(
        _versus(
            f"restore_command per segment (wal-fetch, prefetch, vs sync archive-get, median of {n})",
            med("ours_fetch"), med("br_fetch"), 1.0, "restore_command_per_segment_vs_sync", "ms",
        )
    )  # fmt: skip
    wal = d["wal_archiving"]
    for who, w in wal.items():
        rows.append(
            report.Row(
                f"pgbench -c 4 WAL rate, archive_command = {w['archive_command']}",
                f"{w['wal_mb_per_s']} MB/s",
                f"{w['wal_segments_per_s']} seg/s produced, {w['archived_segments_per_s']} archived",
                None,
                "backlog does not grow",
                not w["backlog_grew"],
                f"archiving_keeps_up_{who}",
                {k: w[k] for k in ("wal_segments_per_s", "archived_segments_per_s", "backlog_grew")},
            )
        )
    w = wal["ours"]
    theirs = wal.get("pgbackrest")
    ours_txt = f"max {w['backlog_max']} / final {w['backlog_final']}"
    if theirs is None:
        rows.append(
            report.Row(
                "sustained archiving under pgbench -c 4: .ready backlog", ours_txt, SKIPPED, None,
                "<= pgBackRest's (+1)", None, "backlog_vs_pgbackrest",
                {k: w[k] for k in ("backlog_max", "backlog_final", "backlog_before")},
            )
        )  # fmt: skip
    else:
        met = (
            w["backlog_max"] <= theirs["backlog_max"] + 1
            and w["backlog_final"] <= theirs["backlog_final"] + 1
        )
        rows.append(
            report.Row(
                "sustained archiving under pgbench -c 4: .ready backlog", ours_txt,
                f"pgbackrest max {theirs['backlog_max']} / final {theirs['backlog_final']}",
                w["backlog_max"] / theirs["backlog_max"] if theirs["backlog_max"] else None,
                "<= pgBackRest's (+1)", met, "backlog_vs_pgbackrest",
                {"ours": {k: w[k] for k in ("backlog_max", "backlog_final", "backlog_before")},
                 "pgbackrest": {k: theirs[k] for k in ("backlog_max", "backlog_final", "backlog_before")}},
            )
        )  # fmt: skip
    cap = float(c["ours_push_segments_per_s"])
    cap_ratio = cap / w["wal_segments_per_s"] if w["wal_segments_per_s"] else None
    rows.append(
        report.Row(
            f"wal-push capacity ({n} sequential calls above)",
            f"{cap} seg/s",
            f"pgbench {w['wal_segments_per_s']} seg/s",
            cap_ratio,
            ">= 3.0",
            None if cap_ratio is None else cap_ratio >= 3.0,
            "push_capacity",
            {"segments_per_s": cap},
        )
    )
    p = d.get("pitr")
    if p is not None:
        ours_p = [float(r["start_to_promoted_seconds"]) for r in p["runs"] if r["tool"] == "ours"]
        br_p = [float(r["start_to_promoted_seconds"]) for r in p["runs"] if r["tool"] == "pgbackrest"]
        segs = f"{p['ours_segments_to_replay']:.0f}"
        if "pgbackrest_segments_to_replay" in p:
            segs += f" / {p['pgbackrest_segments_to_replay']:.0f}"
        rows.append(
            _versus(
                f"PITR recovery, pg_ctl start to promotion, {segs} segments (vs archive-get async)",
                _median(ours_p), _median(br_p), 1.0, "pitr_recovery",
            )
        )  # fmt: skip
    rss_stream = d["wal_stream"]["peak_rss_kib"]
    rss_backup = max(r["peak_rss_kib"] for r in runs["ours_backup"])
    for label, kib, key in (
        ("peak RSS wal-push (largest call)", c["rss_wal_push_kib"], "rss_wal_push"),
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
    say("installing this checkout as users install it (not editable)")
    tool = installed_tool(base)
    passphrase = write_pg(base / "passphrase", base64.b64encode(os.urandom(32)) + b"\n")
    pg = PgCluster(base / "cluster")
    state["pg"] = pg
    s = Setup(base=base, pg=pg, tool=tool, passphrase_file=passphrase, env=base_env())
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
    br_conf = pgbackrest_conf(s) if br else None
    if br_conf is None:
        say(f"NOTE: {NOTE_NO_PGBACKREST}")
    runs: dict[str, Any] = {
        k: []
        for k in ("pg_basebackup", "ours_backup", "pgbackrest_backup", "ours_restore", "pgbackrest_restore")
    }
    say(f"full backups, {args.repeat} rounds")
    cfg = backups(s, args, br_conf, runs)
    say(f"restores, {args.repeat} rounds")
    restores(s, args, cfg, br_conf, runs)
    init_s = pgbench_init(s, args)
    with s.daemon(cfg):
        wal = {"ours": wal_archiving(s, args, "wal-push (daemon up)", init_s)}
    if br_conf is not None:
        set_archive_command(s, f"pgbackrest --config={br_conf} --stanza={STANZA} archive-push %p")
        wal["pgbackrest"] = wal_archiving(s, args, "pgbackrest archive-push (sync)", init_s)
        set_archive_command(s, s.archive_command(cfg))
    costs = segment_costs(s, args, br_conf is not None)
    stream = wal_stream(s, args)
    recovery = pitr(s, args, br_conf is not None) if args.pitr_segments > 0 else None
    conf_text = br_conf.read_text() if br_conf else None
    return {
        "machine": machine,
        "dataset": data,
        "pgbackrest": NOTE_NO_PGBACKREST if br_conf is None else "compared",
        "pgbackrest_conf": None if conf_text is None else _redact(conf_text),
        "runs": runs,
        "wal_archiving": wal,
        "segment_costs": costs,
        "wal_stream": stream,
        "pitr": recovery,
    }


NOTE_NO_PGBACKREST = (
    "pgBackRest is not installed: its column is skipped (make bench installs it with apt-get when it"
    " can; or: apt-get install pgbackrest)"
)


def _redact(conf: str) -> str:
    return "\n".join(
        "repo1-cipher-pass=(random, not recorded)" if ln.startswith("repo1-cipher-pass=") else ln
        for ln in conf.splitlines()
    )


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
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # Started in the background (`... &`), SIGINT arrives ignored, and every child inherits
        # that: pgbench would not stop on the SIGINT that ends its WAL generation.
        signal.signal(signal.SIGINT, signal.default_int_handler)
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
    if measured["pgbackrest_conf"] is None:
        print(f"\nNOTE: {NOTE_NO_PGBACKREST}")
    print(f"\nresults: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
