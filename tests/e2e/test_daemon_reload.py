"""SIGHUP to a running daemon (``contentflow-backupd run``, a subprocess with a real PostgreSQL
and a TOML file): the configuration is read again, an unchanged one is applied, an invalid one
and a changed daemon-level setting are refused with the old configuration kept running, and
SIGHUP never stops the daemon nor counts towards the two-signal stop.

Applying a change of a cluster is the step-5 daemon's (``ReloadTarget``): tested in
tests/unit/test_reload.py with a recording target. No timing is asserted."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, daemon_env
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

ENDS = 120  # seconds: the failure condition, not a speed claim


def test_sighup_reloads_refuses_and_never_stops(tmp_path: Path, pg: PgCluster, pg_db: str) -> None:
    config = tmp_path / "backupd.toml"
    config.write_text('[retention]\nfull = "30d"\n')
    env = daemon_env(tmp_path, pg, pg_db, BACKUPD_CONFIG=str(config))
    with Daemon(env) as d:
        d.wait_for("READY=1", lambda: "READY=1" in d.notifications)

        d.signal(signal.SIGHUP)  # the same file: applied, nothing to do
        d.wait_for("config_reloaded", lambda: d.events("config_reloaded"))
        (done,) = d.events("config_reloaded")
        assert (done["added"], done["removed"], done["rescheduled"], done["restarted"]) == ([], [], [], [])
        assert d.metric("backupd_config_reloads_total", result="applied") == 1

        config.write_text("[retention\n")  # not TOML
        d.signal(signal.SIGHUP)
        d.wait_for("config_reload_refused", lambda: d.events("config_reload_refused"))
        assert "is not valid TOML" in d.events("config_reload_refused")[0]["error"]

        config.write_text('max_concurrent_jobs = 6\n[retention]\nfull = "30d"\n')  # daemon-level
        d.signal(signal.SIGHUP)
        d.wait_for("a second refusal", lambda: len(d.events("config_reload_refused")) == 2)
        assert "BACKUPD_MAX_CONCURRENT_JOBS" in d.events("config_reload_refused")[1]["error"]
        assert d.metric("backupd_config_reloads_total", result="refused") == 2
        assert d.get("/readyz")[0] == 200  # the old configuration keeps running

        d.signal(signal.SIGTERM)  # the first stop signal, after three SIGHUPs: a graceful stop
        assert d.wait(ENDS) == 0, d.stderr()[-3000:]
        assert len(d.events("daemon_stopping")) == 1 and not d.events("daemon_stopping_now")
