"""``make run``: the daemon in the foreground, on a demo database when none is configured.

Without ``BACKUPD_DATABASE_URL``: start a throwaway PostgreSQL under ``./.demo/pg`` with sample
ContentFlow data, a local repository and SQLite catalog under ``./.demo/`` (the previous demo's,
kept with its runs; ``--fresh``, i.e. ``make run FRESH=1``, removes it first and says so), and a
demo schedule: physical mode, a full backup every 10 minutes (the first one at once), an
incremental every 2 minutes, the WAL job every minute with WAL streamed continuously, retention
every 5 minutes (fulls kept 1 hour, incrementals 30 minutes, WAL 1 hour), verification every 10
minutes and a restore drill every 15 minutes. A little write traffic
keeps WAL and incrementals interesting. Metrics at http://127.0.0.1:9847/metrics, health at
/healthz. Ctrl-C stops the daemon cleanly (it records any running backup as interrupted), then
the demo database.

With ``BACKUPD_DATABASE_URL`` set, this runs ``contentflow-backupd run`` with your settings and
nothing else.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

from contentflow_backupd.demo import datagen
from contentflow_backupd.demo.cluster import (
    PgCluster,
    chown_for_postgres,
    fresh_demo_cluster,
    reopen_demo_cluster,
)

DEMO_DIR = Path(os.environ.get("BACKUPD_DEMO_DIR", ".demo")).resolve()
SIZE_MB = int(os.environ.get("BACKUPD_DEMO_SIZE_MB", "32"))

DEMO_SETTINGS = {
    "BACKUPD_MODE": "physical",
    "BACKUPD_SCHEDULE__FULL": "every 10m",
    "BACKUPD_SCHEDULE__INCREMENTAL": "every 2m",
    "BACKUPD_SCHEDULE__WAL": "every 1m",
    "BACKUPD_SCHEDULE__RETENTION": "every 5m",
    "BACKUPD_SCHEDULE__VERIFY": "every 10m",
    "BACKUPD_SCHEDULE__RESTORE_TEST": "every 15m",
    "BACKUPD_RETENTION__FULL": "1h",
    "BACKUPD_RETENTION__INCREMENTAL": "30m",
    "BACKUPD_RETENTION__WAL": "1h",
    "BACKUPD_RETENTION__GC_GRACE": "10m",
    "BACKUPD_LOG__FORMAT": "console",
}


def _command() -> str:
    here = Path(sys.executable).parent / "contentflow-backupd"
    return str(here) if here.exists() else "contentflow-backupd"


def _traffic(cluster: PgCluster, stop: threading.Event) -> None:
    """A trickle of writes, so that WAL flows and incrementals have something to store."""
    while not stop.wait(20):
        try:
            with cluster.connect("contentflow") as conn:
                datagen.append_heavy_change(conn, 0.002)
        except Exception as exc:  # noqa: BLE001 - the demo database may be stopping
            print(f"(demo traffic paused: {type(exc).__name__})", flush=True)


def main() -> int:
    env = dict(os.environ)
    if env.get("BACKUPD_DATABASE_URL"):
        os.execvpe(_command(), [_command(), "run"], env)  # noqa: S606 - your settings, our daemon
    fresh = "--fresh" in sys.argv[1:]
    passfile = DEMO_DIR / "passphrase"
    cluster = None if fresh else reopen_demo_cluster(DEMO_DIR, keep=("state", "repo", "passphrase"))
    if cluster is not None:
        print(
            f"==> keeping the previous demo under {DEMO_DIR}: its database, repository, catalog and "
            "runs (`make run FRESH=1` starts over)",
            flush=True,
        )
    else:
        if DEMO_DIR.exists() and not fresh:
            print(f"==> the previous demo under {DEMO_DIR} is incomplete: starting over", flush=True)
        cluster = fresh_demo_cluster(DEMO_DIR, SIZE_MB)
        # As root, the daemon runs as postgres, as a service runs as its own user: the WAL it
        # streams, the repository and the drills' scratch servers (which PostgreSQL refuses to
        # run as root) all belong to one user.
        for sub in ("state", "repo"):
            (DEMO_DIR / sub).mkdir(mode=0o700)
            chown_for_postgres(DEMO_DIR / sub)
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        chown_for_postgres(passfile)
    env.update(DEMO_SETTINGS)
    env.update(
        {
            "BACKUPD_DATABASE_URL": cluster.url("contentflow"),
            "BACKUPD_REPOSITORY": f"file://{DEMO_DIR / 'repo'}",
            "BACKUPD_STATE_DIR": str(DEMO_DIR / "state"),
            "BACKUPD_ENCRYPTION__PASSPHRASE_FILE": str(passfile),
        }
    )
    listen = env.get("BACKUPD_HTTP__LISTEN", "127.0.0.1:9847")
    print(
        f"==> starting the daemon (Ctrl-C stops it)\n"
        f"    metrics  http://{listen}/metrics\n"
        f"    health   http://{listen}/healthz\n"
        f"    runs     BACKUPD_STATE_DIR={DEMO_DIR}/state BACKUPD_REPOSITORY=file://{DEMO_DIR}/repo "
        f"{_command()} runs\n",
        flush=True,
    )
    stop = threading.Event()
    traffic = threading.Thread(target=_traffic, args=(cluster, stop), daemon=True)
    traffic.start()
    # The daemon gets its own process group: Ctrl-C reaches it once, through us, and never
    # reaches the demo PostgreSQL, which we stop last.
    user = "postgres" if os.geteuid() == 0 else None
    daemon = subprocess.Popen([_command(), "run"], env=env, start_new_session=True, user=user, group=user)

    def forward(signum: int, _frame: FrameType | None) -> None:
        # os.kill, not Popen.send_signal: that one polls the child under a lock (no lock in a
        # signal handler; see contentflow_backupd.signals).
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        rc = daemon.wait()
    finally:
        stop.set()
        cluster.stop()
    print(f"==> daemon exited ({rc}); the demo repository and catalog stay under {DEMO_DIR}", flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
