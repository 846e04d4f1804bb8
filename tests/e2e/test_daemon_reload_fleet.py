"""SIGHUP to a daemon of named clusters (step 5's daemon as the ReloadTarget): a removed
cluster stops, an added one starts, a schedule change re-registers, a changed database URL
restarts. One real PostgreSQL, a database per cluster; no timing asserted."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE
from tests.support.daemon import Daemon
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

WAIT = 180.0


def config_text(base: Path, clusters: dict[str, str], alpha_full: str = "off") -> str:
    text = (
        f'repository = "file://{base / "repo"}"\n'
        f'state_dir = "{base / "state"}"\n'
        'shutdown_grace = "5s"\n'
        "[chunking]\navg_size = 65536\n"
        f'[encryption]\npassphrase = "{PASSPHRASE}"\n'
        '[schedule]\nfull = "off"\nincremental = "off"\nwal = "off"\nretention = "off"\n'
        'verify = "off"\nrestore_test = "off"\n'
    )
    for name, url in clusters.items():
        text += f'[clusters.{name}]\ndatabase_url = "{url}"\n'
        if name == "alpha":
            text += f'[clusters.alpha.schedule]\nfull = "{alpha_full}"\n'
    return text


def test_sighup_applies_each_clusters_change(tmp_path: Path, pg: PgCluster) -> None:
    dbs = {name: pg.create_database() for name in ("alpha", "beta", "gamma", "delta")}
    url = {name: pg.url(db) for name, db in dbs.items()}
    config = tmp_path / "backupd.toml"
    config.write_text(config_text(tmp_path, {n: url[n] for n in ("alpha", "beta", "delta")}))
    try:
        with Daemon({"BACKUPD_CONFIG": str(config)}) as d:
            d.wait_for("READY=1", lambda: "READY=1" in d.notifications, timeout=WAIT)
            for name in ("alpha", "beta", "delta"):
                d.wait_for(f"{name} leads", lambda n=name: d.metric("backupd_leader", cluster=n) == 1)
            config.write_text(
                config_text(
                    tmp_path,
                    {
                        "alpha": url["alpha"],
                        "gamma": url["gamma"],
                        "delta": url["delta"] + "?connect_timeout=7",
                    },
                    alpha_full="0 3 * * *",
                )
            )
            d.signal(signal.SIGHUP)
            d.wait_for("config_reloaded", lambda: d.events("config_reloaded"), timeout=WAIT)
            (done,) = d.events("config_reloaded")
            assert (
                done["result"],
                done["added"],
                done["removed"],
                done["rescheduled"],
                done["restarted"],
            ) == (
                "applied",
                ["gamma"],
                ["beta"],
                ["alpha"],
                ["delta"],
            ), done
            d.wait_for("gamma leads", lambda: d.metric("backupd_leader", cluster="gamma") == 1, timeout=WAIT)
            d.wait_for("delta leads", lambda: d.metric("backupd_leader", cluster="delta") == 1, timeout=WAIT)
            assert d.metric("backupd_leader", cluster="beta") is None  # its series are gone
            assert [e["cluster"] for e in d.events("cluster_stopped")] == ["beta", "delta"]
            assert [e["cluster"] for e in d.events("cluster_rescheduled")] == ["alpha"]
            d.wait_for(
                "alpha's full scheduled",
                lambda: d.metric("backupd_scheduler_next_run_timestamp_seconds", cluster="alpha", job="full"),
                timeout=WAIT,
            )
            assert d.metric("backupd_config_reloads_total", result="applied") == 1
            # An invalid file is refused whole: the clusters of the last good one keep running.
            config.write_text(
                config_text(tmp_path, {"alpha": url["alpha"]}) + "[clusters.bad]\nmode = 'sideways'\n"
            )
            d.signal(signal.SIGHUP)
            d.wait_for("config_reload_refused", lambda: d.events("config_reload_refused"), timeout=WAIT)
            refused = d.events("config_reload_refused")[0]
            assert "MODE" in refused["error"].upper() and "BAD" in refused["error"].upper(), refused
            assert d.metric("backupd_config_reloads_total", result="refused") == 1
            for name in ("alpha", "gamma", "delta"):
                assert d.metric("backupd_leader", cluster=name) == 1, name
            assert d.get("/readyz")[0] == 200
            d.signal(signal.SIGTERM)
            assert d.wait(WAIT) == 0, d.stderr()[-3000:]
    finally:
        for db in dbs.values():
            pg.drop_database(db)
