"""The daemon in physical mode: a scheduled physical backup, WAL streamed by the supervised
``wal-stream``, the WAL job forcing a switch on a quiet database, WAL metrics, a clean stop."""

from __future__ import annotations

import signal

import pytest

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
