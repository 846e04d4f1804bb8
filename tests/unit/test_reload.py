"""Reload on SIGHUP (daemon/reload.py, wiring/reload.py): ``plan_reload`` as a table and a
property, and the ``Reloader`` against real TOML and credential files in temp directories, a
real SQLite catalog for the audit trail, and a recording ``ReloadTarget`` (the daemon's part
of applying a plan is the daemon's). No server; threads synchronised by events, no timing."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog
from contentflow_backupd.daemon.parts import DaemonApp
from contentflow_backupd.daemon.reload import (
    ClusterConfig,
    Configuration,
    Reloader,
    ReloadSource,
    plan_reload,
)
from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.ops.audit import record_config
from contentflow_backupd.settings import load_settings
from contentflow_backupd.wiring.fleet import Fleet
from contentflow_backupd.wiring.reload import reload_source

WAIT = 60  # seconds: the failure condition, not a speed claim
SECRET = "orders-s3cret-pw"

BASE = f"""
repository = "file:///srv/backups"
[schedule]
full = "0 3 * * *"
[clusters.orders]
database_url = "postgresql://backup:{SECRET}@orders-db/orders"
[clusters.billing]
database_url = "postgresql://backup@billing-db/billing"
[clusters.shards]
database_url = "postgresql://backup@shards-db/shards"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BACKUPD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SqlCatalog]:
    opened = open_catalog(f"sqlite:///{tmp_path}/catalog/catalog.sqlite")
    yield opened
    opened.close()


class RecordingTarget:
    """A ``ReloadTarget`` that records the calls; ``fail`` names clusters whose calls raise."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.fail = fail or set()

    def _call(self, action: str, name: str, extra: Any) -> None:
        self.calls.append((action, name, extra))
        if name in self.fail:
            raise RuntimeError(f"{name} would not {action}")

    def start_cluster(self, name: str, app: DaemonApp) -> None:
        self._call("start", name, app.cluster)

    def stop_cluster(self, name: str, *, grace_s: float | None = None) -> None:
        self._call("stop", name, grace_s)

    def reschedule_cluster(self, name: str, app: DaemonApp) -> None:
        self._call("reschedule", name, app.job_specs[0].schedule.cron)


class Setup:
    """A config file, the fleet loaded from it (what ``run`` starts with) and a ``Reloader``."""

    def __init__(self, tmp_path: Path, text: str = BASE, *, secrets: Path | None = None) -> None:
        self.path = tmp_path / "backupd.toml"
        self.path.write_text(text)
        self.secrets = [secrets or tmp_path / "no-secrets"]
        settings, file_data = load_settings(self.path, secret_dirs=self.secrets)
        self.fleet = Fleet(settings, file_data)
        self.source = reload_source(self.fleet, self.path, cluster="orders", secret_dirs=self.secrets)
        self.metrics = Metrics("1.0")
        self.stopping = threading.Event()
        self.target = RecordingTarget()
        self.audited: list[dict[str, str]] = []
        self.reloader = Reloader(
            self.source,
            metrics=self.metrics,
            stopping=self.stopping,
            target=self.target,
            audit=lambda view: self.audited.append(dict(view)),
        )

    def write(self, text: str) -> None:
        self.path.write_text(text)

    def reloads(self) -> dict[str, float]:
        body, _ = self.metrics.render()
        return {
            s.labels["result"]: s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
            if s.name == "backupd_config_reloads_total"
        }


def cfg(settings: str, schedule: str = "s") -> ClusterConfig:
    return ClusterConfig(settings, schedule)


# -- plan_reload -------------------------------------------------------------------------------
def test_plan_reload_table() -> None:
    old = {
        "same": cfg("a"),
        "sched": cfg("a", "s1"),
        "mode": cfg("a"),
        "both": cfg("a", "s1"),
        "gone": cfg("a"),
    }
    new = {
        "same": cfg("a"),
        "sched": cfg("a", "s2"),
        "mode": cfg("b"),
        "both": cfg("b", "s2"),
        "new": cfg("a"),
    }
    plan = plan_reload(old, new)
    assert plan.added == ("new",)
    assert plan.removed == ("gone",)
    assert plan.rescheduled == ("sched",)
    assert plan.restarted == ("both", "mode")  # a schedule change with another: a restart
    assert not plan.empty
    assert plan_reload(old, dict(old)).empty
    assert plan_reload({}, {"x": cfg("a")}).added == ("x",)
    assert plan_reload({"x": cfg("a")}, {}).removed == ("x",)


configs = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d", "e"]),
    st.builds(ClusterConfig, st.sampled_from(["s1", "s2"]), st.sampled_from(["t1", "t2"])),
)


@given(configs, configs)
def test_plan_reload_puts_every_changed_cluster_in_exactly_one_list(
    old: dict[str, ClusterConfig], new: dict[str, ClusterConfig]
) -> None:
    plan = plan_reload(old, new)
    lists = [plan.added, plan.removed, plan.rescheduled, plan.restarted]
    named = [n for one in lists for n in one]
    assert len(named) == len(set(named))
    changed = {n for n in old.keys() | new.keys() if old.get(n) != new.get(n)}
    assert set(named) == changed
    assert all(list(one) == sorted(one) for one in lists)


# -- the Reloader ------------------------------------------------------------------------------
def test_a_reload_applies_each_clusters_change_logs_counts_and_audits(
    tmp_path: Path, catalog: SqlCatalog
) -> None:
    s = Setup(tmp_path)
    s.reloader._audit = lambda view: record_config(catalog, view)
    record_config(catalog, s.source.current.audit_view)  # what the daemon records at start
    s.write(
        BASE.replace('[clusters.shards]\ndatabase_url = "postgresql://backup@shards-db/shards"\n', "")
        + '[clusters.orders.schedule]\nfull = "0 5 * * *"\n'  # schedule only: rescheduled
        + '[clusters.billing.retention]\nfull = "7d"\n'  # anything else: restarted
        + '[clusters.eu]\ndatabase_url = "postgresql://backup@eu-db/eu"\n'  # added
    )
    with capture_logs() as logs:
        result = s.reloader.reload()
    assert result.result == "applied"
    assert s.target.calls == [
        ("stop", "shards", None),  # removed first
        ("stop", "billing", None),  # restarted: stopped, then started with the new settings
        ("start", "billing", "billing"),
        ("reschedule", "orders", "0 5 * * *"),
        ("start", "eu", "eu"),
    ]
    done = [e for e in logs if e["event"] == "config_reloaded"]
    assert len(done) == 1
    assert {
        k: done[0][k] for k in ("added", "removed", "rescheduled", "restarted", "failed", "unchanged")
    } == {
        "added": ["eu"],
        "removed": ["shards"],
        "rescheduled": ["orders"],
        "restarted": ["billing"],
        "failed": [],
        "unchanged": 0,
    }
    assert s.reloads() == {"applied": 1, "refused": 0, "failed": 0}
    changes = catalog.list_audit_events(action="config_changed", limit=5, newest_first=True)
    assert len(changes) == 2
    assert any(key.endswith("SCHEDULE__FULL") for key in changes[0].details["changed"])
    assert sorted(s.reloader.current.clusters) == ["billing", "eu", "orders"]  # type: ignore[union-attr]
    assert SECRET not in repr(logs) and SECRET not in repr(changes[0].details)

    s.target.calls.clear()
    applied = s.reloader.current
    assert s.reloader.reload().plan.empty  # the same file again: nothing to do, nothing audited
    assert s.target.calls == []
    assert s.reloader.current is applied  # the running configuration stays
    assert len(catalog.list_audit_events(action="config_changed", limit=5)) == 2
    assert s.reloads()["applied"] == 2


def test_an_invalid_file_is_refused_and_the_old_configuration_kept(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    before = s.reloader.current
    for broken, says in [
        (
            BASE + '[clusters.orders.schedule]\nfull = "every tuesday"\n',
            "BACKUPD_CLUSTERS__ORDERS__SCHEDULE__FULL",
        ),
        (BASE + "[clusters.orders\n", "not valid TOML"),
        (BASE + '[clusters.orders.wal]\nslott = "x"\n', "clusters.orders.wal.slott: unknown setting"),
        (BASE.replace("[clusters.orders]", "[clusters.Orders__x]"), "not a valid cluster name"),
    ]:
        s.write(broken)
        with capture_logs() as logs:
            result = s.reloader.reload()
        assert result.result == "refused"
        refused = [e for e in logs if e["event"] == "config_reload_refused"]
        assert len(refused) == 1 and says in refused[0]["error"], refused
        assert refused[0]["log_level"] == "error"
        assert SECRET not in repr(logs)
        assert s.reloader.current is before
    assert s.target.calls == [] and s.audited == []
    assert s.reloads() == {"applied": 0, "refused": 4, "failed": 0}

    s.write(BASE + '[clusters.orders.schedule]\nfull = "0 5 * * *"\n')  # fixed: compared with the start's
    assert s.reloader.reload().plan.rescheduled == ("orders",)


def test_a_changed_daemon_level_setting_refuses_the_whole_reload(tmp_path: Path) -> None:
    s = Setup(tmp_path, 'max_concurrent_jobs = 4\nhttp = { listen = "127.0.0.1:9847" }\n' + BASE)
    s.write(
        'max_concurrent_jobs = 8\nhttp = { listen = "127.0.0.1:9999" }\n'
        + BASE
        + '[clusters.eu]\ndatabase_url = "postgresql://backup@eu-db/eu"\n'
    )
    with capture_logs() as logs:
        result = s.reloader.reload()
    assert result.result == "refused"
    (refused,) = [e for e in logs if e["event"] == "config_reload_refused"]
    assert (
        refused["error"] == "daemon-level settings changed: BACKUPD_HTTP__LISTEN, BACKUPD_MAX_CONCURRENT_JOBS"
    )
    assert "9999" not in repr(logs)  # names, never values
    assert s.target.calls == []  # not even the added cluster: the whole reload is refused
    assert s.reloads()["refused"] == 1


def test_a_changed_credential_file_restarts_its_cluster(tmp_path: Path) -> None:
    secrets = tmp_path / "creds"
    secrets.mkdir()
    cred = secrets / "BACKUPD_CLUSTERS__BILLING__DATABASE_URL"
    cred.write_text("postgresql://backup:one@billing-db/billing\n")
    text = BASE.replace('database_url = "postgresql://backup@billing-db/billing"\n', "")
    s = Setup(tmp_path, text, secrets=secrets)
    cred.write_text("postgresql://backup:two@billing-db/billing\n")  # the file is read again
    with capture_logs() as logs:
        assert s.reloader.reload().plan.restarted == ("billing",)
    assert "two@" not in repr(logs) and "one@" not in repr(logs)


def test_without_a_target_only_a_reload_that_changes_no_cluster_applies(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.reloader.target = None
    assert s.reloader.reload().result == "applied"  # the same configuration
    s.write(BASE + '[clusters.orders.schedule]\nfull = "0 5 * * *"\n')
    with capture_logs() as logs:
        result = s.reloader.reload()
    assert result.result == "refused"
    assert "without a restart" in next(e["error"] for e in logs if e["event"] == "config_reload_refused")
    assert s.reloads() == {"applied": 1, "refused": 1, "failed": 0}


def test_a_cluster_whose_change_fails_is_planned_again(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.target.fail = {"billing"}
    s.write(BASE.replace("billing-db", "billing-db2").replace("shards-db", "shards-db2"))
    with capture_logs() as logs:
        result = s.reloader.reload()
    assert (result.result, result.failed, result.plan.restarted) == (
        "failed",
        ("billing",),
        ("billing", "shards"),
    )
    (failed,) = [e for e in logs if e["event"] == "config_reload_cluster_failed"]
    assert (failed["cluster"], failed["action"]) == ("billing", "restart")
    assert s.reloads() == {"applied": 0, "refused": 0, "failed": 1}
    s.target.fail = set()
    s.target.calls.clear()
    again = s.reloader.reload()  # the same file: billing only
    assert (again.result, again.plan.restarted) == ("applied", ("billing",))
    assert s.target.calls == [("stop", "billing", None), ("start", "billing", "billing")]


def test_sighups_during_a_reload_coalesce_into_exactly_one_more(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    entered = threading.Semaphore(0)
    gate = threading.Event()
    loads: list[str] = []
    real_load = s.source.load

    def load() -> Configuration:
        loads.append(threading.current_thread().name)
        entered.release()
        assert gate.wait(WAIT)
        return real_load()

    s.reloader._source = ReloadSource(s.source.current, load)
    assert not s.reloader.poll()  # nothing asked
    s.reloader.request()
    assert s.reloader.poll()
    assert entered.acquire(timeout=WAIT)
    for _ in range(3):
        s.reloader.request()
        assert not s.reloader.poll()  # one runs
    gate.set()
    assert s.reloader.join(WAIT)
    assert s.reloader.poll()  # exactly one more
    assert s.reloader.join(WAIT)
    assert not s.reloader.poll()
    assert loads == ["config-reload", "config-reload"]
    assert s.reloads()["applied"] == 2


def test_a_reload_asked_for_while_stopping_is_ignored(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.reloader.request()
    s.stopping.set()
    assert not s.reloader.poll()
    s.reloader.request()
    assert not s.reloader.poll()
    assert s.reloads() == {"applied": 0, "refused": 0, "failed": 0}


def test_a_reloader_without_a_source_does_not_watch_sighup() -> None:
    reloader = Reloader(None, metrics=Metrics("1.0"), stopping=threading.Event())
    assert reloader.on_reload is None
    reloader.request()
    assert not reloader.poll()


def test_an_unexpected_error_while_loading_is_a_refusal_not_a_crash(tmp_path: Path) -> None:
    s = Setup(tmp_path)

    def load() -> Configuration:
        raise RuntimeError("disk on fire")

    s.reloader._source = ReloadSource(s.source.current, load)
    with capture_logs() as logs:
        result = s.reloader.reload()
    assert (result.result, result.reason) == ("refused", "RuntimeError: disk on fire")
    assert [e["event"] for e in logs] == ["config_reload_started", "config_reload_refused"]
    assert s.reloads()["refused"] == 1


def test_a_daemon_serving_some_clusters_compares_only_those(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    path, secrets = s.path, s.secrets
    source = reload_source(s.fleet, path, cluster="orders", only=["orders"], secret_dirs=secrets)
    assert list(source.current.clusters) == ["orders"]
    reloader = Reloader(source, metrics=s.metrics, stopping=s.stopping, target=s.target)
    s.write(
        BASE.replace("billing-db", "billing-db2") + '[clusters.eu]\ndatabase_url = "postgresql://e@eu/eu"\n'
    )
    assert reloader.reload().plan.empty  # another cluster changed, one was added: not served here
    s.write(
        BASE.replace(
            '[clusters.orders]\ndatabase_url = "postgresql://backup:' + SECRET + '@orders-db/orders"\n', ""
        )
    )
    assert reloader.reload().plan.removed == ("orders",)
    assert s.target.calls == [("stop", "orders", None)]


class FleetTarget(RecordingTarget):
    """A target that cannot apply some plans (the daemon on a fleet catalog: schedules only)."""

    def reload_refusal(self, plan: Any) -> str | None:
        return "schedule changes only" if plan.added or plan.removed or plan.restarted else None


def test_a_target_that_refuses_a_plan_refuses_the_whole_reload(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.reloader.target = s.target = FleetTarget()
    s.write(BASE + '[clusters.orders.schedule]\nfull = "0 5 * * *"\n')  # a schedule: applied
    assert s.reloader.reload().result == "applied"
    assert [c[:2] for c in s.target.calls] == [("reschedule", "orders")]
    s.write(BASE.replace("[clusters.shards]", "[clusters.other]"))  # a cluster added and one removed
    with capture_logs() as logs:
        result = s.reloader.reload()
    assert result.result == "refused"
    refused = next(e for e in logs if e["event"] == "config_reload_refused")
    assert refused["error"] == "schedule changes only" and "restart" in refused["hint"]
    assert [c[:2] for c in s.target.calls] == [("reschedule", "orders")]  # nothing more applied
    assert s.reloads() == {"applied": 1, "refused": 1, "failed": 0}
