"""``make run``: show the whole cycle on a disposable database in about a minute.

Without ``BACKUPD_DATABASE_URL``: start a throwaway PostgreSQL under ``./.demo/`` and fill it with
sample ContentFlow data. Then, with a local repository and SQLite catalog under ``./.demo/``:
initialise the repository, take a full backup, change about 1% of the rows, take an incremental,
verify everything, restore the latest backup into a new database, compare it table by table with
the source, and print a summary with sizes and timings.

With ``BACKUPD_DATABASE_URL`` set, that database is the source (it is only read); the restore goes
into a new database ``<name>_backupd_check`` on the same server, which is dropped afterwards.
Every step runs the installed ``contentflow-backupd`` command, as a user would.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from contentflow_backupd.demo import datagen
from contentflow_backupd.demo.cluster import PgCluster, fresh_demo_cluster
from contentflow_backupd.source.conninfo import ConnInfo

DEMO_DIR = Path(os.environ.get("BACKUPD_DEMO_DIR", ".demo")).resolve()
SIZE_MB = int(os.environ.get("BACKUPD_DEMO_SIZE_MB", "64"))


def _command() -> str:
    here = Path(sys.executable).parent / "contentflow-backupd"
    return str(here) if here.exists() else "contentflow-backupd"


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


class Demo:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.steps: list[tuple[str, float, str]] = []

    def run(self, title: str, *args: str, detail: str = "") -> Any:
        t0 = time.monotonic()
        shown = " ".join(
            ConnInfo.parse(a).display() if "password=" in a or ("://" in a and "@" in a) else a for a in args
        )
        print(f"==> {title}: contentflow-backupd {shown}", flush=True)
        proc = subprocess.run([_command(), *args, "--json"], env=self.env, capture_output=True, text=True)
        elapsed = time.monotonic() - t0
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"demo step failed: {title} (exit {proc.returncode})")
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        self.steps.append((title, elapsed, detail))
        return out


def _checksums(url: str) -> dict[str, tuple[int, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return datagen.table_checksums(conn)


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def main() -> int:
    cluster: PgCluster | None = None
    source_url = os.environ.get("BACKUPD_DATABASE_URL")
    if not source_url:
        cluster = fresh_demo_cluster(DEMO_DIR, SIZE_MB)
        source_url = cluster.url("contentflow")
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    info = ConnInfo.parse(source_url)
    target_name = f"{info.dbname or 'postgres'}_backupd_check"
    target_url = ConnInfo(params={**info.params, "dbname": target_name}, password=info.password).full()
    admin_url = ConnInfo(params={**info.params, "dbname": "postgres"}, password=info.password).full()

    passfile = DEMO_DIR / "passphrase"
    if not passfile.exists():
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    env = dict(os.environ)
    env.setdefault("BACKUPD_REPOSITORY", f"file://{DEMO_DIR / 'repo'}")
    env.setdefault("BACKUPD_STATE_DIR", str(DEMO_DIR / "state"))
    if not any(k.startswith("BACKUPD_ENCRYPTION__") for k in env):
        env["BACKUPD_ENCRYPTION__PASSPHRASE_FILE"] = str(passfile)
    env["BACKUPD_DATABASE_URL"] = source_url
    env.setdefault("BACKUPD_LOG__FORMAT", "console")
    env.setdefault("BACKUPD_LOG__LEVEL", "warning")

    demo = Demo(env)
    try:
        if not (DEMO_DIR / "repo" / "repo.json").exists() and env["BACKUPD_REPOSITORY"].startswith(
            "file://" + str(DEMO_DIR)
        ):
            repo = demo.run("initialise the encrypted repository", "init")
            print(f"    repository {repo['repository_id']} at {repo['url']}")
        full = demo.run("full backup", "backup", "--kind", "full")
        with psycopg.connect(source_url, autocommit=True) as conn:
            if cluster is not None:
                change = datagen.append_heavy_change(conn, 0.01)
                print(f"==> changed rows: {change}", flush=True)
        incr = demo.run("incremental backup", "backup", "--kind", "incremental")
        demo.run("verify every backup (read back, authenticate, hash)", "verify", "--all")
        _drop_database(admin_url, target_name)
        restored = demo.run(
            "restore the latest backup into a new database",
            "restore",
            "latest",
            "--to-database",
            target_url,
            "--create",
        )
        t0 = time.monotonic()
        same = _checksums(source_url) == _checksums(target_url)
        demo.steps.append(("compare source and restored, table by table", time.monotonic() - t0, ""))
        _drop_database(admin_url, target_name)
    finally:
        if cluster is not None:
            cluster.stop()

    print()
    print("Summary")
    print(f"  database dump size      {_mib(full['source_bytes'])}")
    print(
        f"  full backup             {_mib(full['stored_bytes'])} stored, {full['chunks_total']} chunks, "
        f"{full['duration_seconds']:.1f}s"
    )
    share = incr["stored_bytes"] / max(1, full["stored_bytes"])
    print(
        f"  incremental backup      {_mib(incr['stored_bytes'])} stored ({share:.1%} of the full), "
        f"{incr['chunks_new']}/{incr['chunks_total']} chunks new, {incr['duration_seconds']:.1f}s"
    )
    print(f"  restore of {restored['backup_id']}: {restored['duration_seconds']:.1f}s")
    print(f"  restored database equals the source: {'yes' if same else 'NO'}")
    print("  steps:")
    for title, elapsed, _ in demo.steps:
        print(f"    {elapsed:6.1f}s  {title}")
    print(
        f"\nEverything is under {DEMO_DIR}: repository in repo/, catalog in state/, passphrase in passphrase."
    )
    print(
        f"Try: BACKUPD_REPOSITORY=file://{DEMO_DIR}/repo BACKUPD_STATE_DIR={DEMO_DIR}/state "
        f"BACKUPD_ENCRYPTION__PASSPHRASE_FILE={passfile} contentflow-backupd backup list"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
