"""The daemon in physical mode: a scheduled physical backup, WAL streamed by the supervised
``wal-stream``, the WAL job forcing a switch on a quiet database, WAL metrics, a clean stop; its
``pg_receivewal`` does not outlive a ``kill -9`` of the daemon."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from contentflow_backupd.procs import process_alive
from tests.e2e.physical import physical_setup
from tests.support.cli import Cli
from tests.support.daemon import Daemon

pytestmark = pytest.mark.pg


def test_physical_daemon_streams_wal_and_keeps_the_rpo() -> None:
    with physical_setup(archive=False) as setup:
        env = {
            "BACKUPD_CONFIG": str(setup.config),
            "BACKUPD_SCHEDULE__FULL": "every 1h",  # the first one runs at once: no full yet
            "BACKUPD_SCHEDULE__INCREMENTAL": "off",
            "BACKUPD_SCHEDULE__WAL": "every 3s",
            "BACKUPD_SCHEDULE__RETENTION": "off",
            "BACKUPD_SCHEDULE__VERIFY": "off",
            "BACKUPD_SCHEDULE__RESTORE_TEST": "off",
            "BACKUPD_SHUTDOWN_GRACE": "10s",
        }
        with Daemon(env) as d:
            d.wait_for("READY=1", lambda: "READY=1" in d.notifications)
            assert d.events("wal_stream_supervised")
            d.wait_for(
                "a physical full backup",
                lambda: (d.metric("backupd_backup_runs_total", kind="full", result="success") or 0) >= 1,
                timeout=120,
            )
            d.wait_for(
                "WAL archived",
                lambda: (d.metric("backupd_wal_last_archived_timestamp_seconds") or 0) > 0,
                timeout=60,
            )
            before = d.metric("backupd_wal_archived_segments_total") or 0
            # a little WAL, far less than a segment: only a forced switch gets it archived soon
            setup.cluster.execute("create table t (x int); insert into t select generate_series(1, 100)")
            d.wait_for("a forced WAL switch", lambda: d.events("wal_switch_forced"), timeout=60)
            d.wait_for(
                "the switched segment archived",
                lambda: (d.metric("backupd_wal_archived_segments_total") or 0) > before,
                timeout=60,
            )
            d.wait_for("healthz 200", lambda: d.get("/healthz")[0] == 200, timeout=60)
            assert d.events("wal_checked")
            completed = d.events("backup_completed")
            assert completed and {"run_id", "job", "backup_id"} <= set(completed[0])
            d.signal(signal.SIGTERM)
            assert d.wait(60) == 0, d.stderr()[-3000:]
        cli = Cli(env=env)
        runs = cli.run("runs", "--json", check=True).json()
        assert any(r["job"] == "wal" and r["status"] == "succeeded" for r in runs)
        assert not [r for r in runs if r["status"] == "running"], runs  # stopped with the WAL job on
        assert any(r["job"] == "full" and r["status"] == "succeeded" for r in runs)
        assert cli.run("wal", "verify", "--json").returncode == 0


CHILD_ENDS = 30.0  # seconds: the orphaned pg_receivewal must be gone by then; not a speed claim


def _program(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("user", ["root", "postgres"])
def test_pg_receivewal_does_not_outlive_a_daemon_killed_with_sigkill(user: str) -> None:
    """``kill -9`` runs no clean-up: only the parent-death signal (``setpriv --pdeathsig``) ends
    the streaming child, which would otherwise hold the slot's walsender with nobody reading."""
    if os.geteuid() != 0:
        pytest.skip("runs the daemon as root and as postgres")
    with physical_setup(archive=False) as setup:
        env = {
            "BACKUPD_CONFIG": str(setup.config),
            "BACKUPD_SCHEDULE__FULL": "off",
            "BACKUPD_SCHEDULE__INCREMENTAL": "off",
            "BACKUPD_SCHEDULE__WAL": "every 1h",  # the WAL watcher, hence the stream, is on
            "BACKUPD_SCHEDULE__RETENTION": "off",
            "BACKUPD_SCHEDULE__VERIFY": "off",
            "BACKUPD_SCHEDULE__RESTORE_TEST": "off",
            "BACKUPD_WAL__METHOD": "stream",
        }
        receiver: int | None = None
        with Daemon(env, user=None if user == "root" else user) as d:
            try:
                started = d.wait_for("pg_receivewal started", lambda: d.events("pg_receivewal_started"))
                receiver = int(started[0]["pid"])
                assert d.proc is not None
                assert _parent_of(receiver) == d.proc.pid
                # setpriv has set the signal once it has exec'd pg_receivewal (same pid)
                d.wait_for("pg_receivewal exec'd", lambda: _program(receiver).endswith(b"pg_receivewal"))
                assert not d.events("child_pdeathsig_unavailable"), d.stderr()[-2000:]

                os.kill(d.proc.pid, signal.SIGKILL)
                assert d.wait(60) == -signal.SIGKILL

                deadline = time.monotonic() + CHILD_ENDS
                while process_alive(receiver) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert not process_alive(receiver), "pg_receivewal outlived the daemon killed with -9"
            finally:
                if receiver is not None and process_alive(receiver):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(receiver, signal.SIGKILL)
