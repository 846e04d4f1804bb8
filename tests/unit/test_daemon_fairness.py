"""The fair pool keeps one cluster's trouble its own, in process (docs/design/fleet.md, step 6 and
section 3 "Unit"): a daemon of three clusters with ``max_concurrent_jobs = 3`` (two workers for
backups, one kept for WAL). ``down``'s database probe raises; ``hung``'s dump blocks until its
job is cancelled (it holds one backup worker all along); ``ok`` (physical) ticks its WAL and
takes its scheduled backups all the same, every one of them started while ``hung``'s dump was
blocked, none dropped as queued too long.

Real parts: the settings, ``wiring.Fleet`` and each cluster's ``App``, a SQLite catalog, local
repositories, APScheduler and the fair pool, ``JobRunner``, ``run_backup``. Fakes
(``tests/support/fake_pg.py``) stand for the servers: the sources, a WAL watcher whose tick
records itself, the probes. What is asserted is the order of recorded events, not durations.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from contentflow_backupd.daemon.lifecycle import Daemon
from contentflow_backupd.errors import SourceError
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.scheduling import jobs
from contentflow_backupd.scheduling.pool import QUEUED_TOO_LONG
from contentflow_backupd.settings import load_settings
from contentflow_backupd.wiring.app import App
from contentflow_backupd.wiring.fleet import Fleet
from tests.support.daemon import far_schedule
from tests.support.fake_pg import Content, FakeLogicalSource, FakePhysicalSource

WAIT = 120.0
"""Generous: the machine is shared and loaded; every wait polls and returns once true."""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("BACKUPD_") or name in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET"):
            monkeypatch.delenv(name)
    jobs.install(None)
    yield
    jobs.install(None)


def wait_until(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Events:
    """What the fakes saw, in order: (cluster, what)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []

    def add(self, cluster: str, what: str) -> None:
        with self._lock:
            self.seen.append((cluster, what))

    def of(self, cluster: str, what: str) -> list[int]:
        """Positions of (cluster, what) in ``seen``."""
        with self._lock:
            return [i for i, e in enumerate(self.seen) if e == (cluster, what)]


class BlockingDump(FakeLogicalSource):
    """A dump that starts, then waits for ``released`` (its job's cancel request) and fails as a
    cancelled ``pg_dump`` does."""

    def __init__(self, events: Events, released: threading.Event) -> None:
        super().__init__(Content())
        self.events = events
        self.released = released

    @contextmanager
    def dump(self) -> Iterator[BinaryIO]:
        self.events.add("hung", "dump_started")
        self.released.wait()
        self.events.add("hung", "dump_released")
        raise SourceError("pg_dump of hung failed: canceling statement due to user request")
        yield  # a generator all the same


class RecordingPhysical(FakePhysicalSource):
    @contextmanager
    def basebackup(self, label: str, **kwargs: Any) -> Iterator[Any]:
        self.events.add("ok", "backup_started")
        with super().basebackup(label, **kwargs) as bb:
            yield bb

    events: Events


class TickingWatcher:
    """The WAL watcher's part the daemon uses: each tick archives one fake segment."""

    stream: Any = None
    method = "archive_command"

    def __init__(self, events: Events) -> None:
        self.events = events

    def tick(self, run_id: int) -> dict[str, Any]:
        self.events.add("ok", "wal_tick")
        return {"summary": "ticked"}

    def update_archived_total(self) -> None:
        pass

    def guard(self, state: Any) -> None:
        pass


class Admin:
    """``cancel_queries`` of ``hung``'s drivers: what unblocks its dump (as the server would
    cancel a real one's query)."""

    def __init__(self, released: threading.Event) -> None:
        self.released = released

    def cancel_queries(self, owner: str | None = None) -> int:
        self.released.set()
        return 1


class Drivers:
    def __init__(self, real: Any, admin: Admin) -> None:
        self._real = real
        self.admin = admin

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Cluster:
    """One cluster's ``DaemonApp``: its real ``App`` with the server-facing members replaced."""

    def __init__(self, app: App, events: Events, released: threading.Event) -> None:
        self._app = app
        self._events = events
        self._released = released
        self._physical: RecordingPhysical | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)

    def database_probe(self) -> Callable[[], object]:
        name = self._app.cluster

        def probe() -> object:
            if name == "down":
                self._events.add("down", "probe_raised")
                raise RuntimeError("the probe of down fails")
            return None

        return probe

    def archiver_status(self) -> Callable[[], Any]:
        def status() -> Any:
            raise SourceError("no server in this test")

        return status

    def logical_source(self) -> Any:
        if self._app.cluster == "hung":
            return BlockingDump(self._events, self._released)
        return self._app.logical_source()  # down: a real pg_dump to a port nobody listens on

    def physical_source(self) -> Any:
        if self._physical is None:
            self._physical = RecordingPhysical(Content(), WalArchive(self._app.repository(), "ok"))
            self._physical.events = self._events
        return self._physical

    def wal_watcher(self, repo: Any, metrics: Any, catalog: Any = None) -> TickingWatcher:
        return TickingWatcher(self._events)

    def pg_drivers(self) -> Any:
        if self._app.cluster == "hung":
            return Drivers(self._app.pg_drivers(), Admin(self._released))
        return self._app.pg_drivers()


class FakeFleet:
    """``wiring.Fleet`` whose ``cluster(name)`` is the ``Cluster`` above (one object per name)."""

    def __init__(self, fleet: Fleet, events: Events, released: threading.Event) -> None:
        self._fleet = fleet
        self._clusters = {name: Cluster(fleet.app(name), events, released) for name in fleet.names}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fleet, name)

    def cluster(self, name: str) -> Cluster:
        return self._clusters[name]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    nowhere = "postgresql://app@127.0.0.1:1/{}?connect_timeout=2"
    cfg = tmp_path / "backupd.toml"
    cfg.write_text(
        f'repository = "file://{tmp_path / "repo"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        "max_concurrent_jobs = 3\n"
        'http = { listen = "off" }\n'
        'encryption = { passphrase = "correct horse battery staple" }\n'
        "[chunking]\navg_size = 65536\n"
        '[wal]\nsocket = "off"\n'
        '[jobs]\nstall_timeout = "off"\n'
        '[schedule]\nfull = "every 2s"\nincremental = "off"\nretention = "off"\n'
        'verify = "off"\nrestore_test = "off"\nspread = "0s"\n'
        f'[clusters.down]\ndatabase_url = "{nowhere.format("down")}"\n'
        f'[clusters.hung]\ndatabase_url = "{nowhere.format("hung")}"\n'
        f'[clusters.hung.schedule]\nfull = "{far_schedule()}"\n'  # its first full only
        f'[clusters.ok]\ndatabase_url = "{nowhere.format("ok")}"\nmode = "physical"\n'
        '[clusters.ok.wal]\nmethod = "archive_command"\n'
        '[clusters.ok.schedule]\nfull = "every 3s"\nwal = "every 1s"\n'
    )
    settings, data = load_settings(cfg, secret_dirs=[tmp_path / "no-secrets"])
    fleet = Fleet(settings, data)
    try:
        yield fleet
    finally:
        fleet.close()


def test_a_hung_dump_and_a_raising_probe_do_not_delay_another_clusters_wal_and_backups(
    fleet: Fleet,
) -> None:
    events = Events()
    released = threading.Event()
    daemon = Daemon(FakeFleet(fleet, events, released))  # type: ignore[arg-type]
    try:
        daemon._start()
        wait_until("all running", lambda: all(r.state == "running" for r in daemon.runtimes.values()))
        # hung's first full (no backup yet: it runs at once) holds one of the two backup workers
        wait_until("hung's dump blocked", lambda: events.of("hung", "dump_started"))
        blocked_at = events.of("hung", "dump_started")[0]

        # ok goes on: WAL ticks and backups started after hung blocked, and before it was released
        ok = daemon.runtimes["ok"]
        assert daemon._catalog is not None
        catalog = daemon._catalog

        def ok_went_on() -> bool:
            backups = [i for i in events.of("ok", "backup_started") if i > blocked_at]
            ticks = [i for i in events.of("ok", "wal_tick") if i > blocked_at]
            done = [r for r in catalog.list_runs(ok.scope) if r.job == "full" and r.status == "succeeded"]
            return len(backups) >= 3 and len(ticks) >= 5 and len(done) >= 3

        wait_until("ok's WAL ticks and backups while hung is blocked", ok_went_on)
        wait_until("down's probe raised", lambda: events.of("down", "probe_raised"))
        assert not released.is_set() and not events.of("hung", "dump_released")
        hung = daemon.runtimes["hung"]
        assert [j.job for j in hung.running()] == ["full"]  # still blocked, still its worker

        ok_runs = catalog.list_runs(ok.scope)
        fulls = [r for r in ok_runs if r.job == "full" and r.status == "succeeded"]
        assert len(fulls) >= 3, ok_runs
        assert any(r.job == "wal" and r.status == "succeeded" for r in ok_runs), ok_runs
        assert not [r for r in ok_runs if r.error == QUEUED_TOO_LONG], ok_runs  # none waited too long

        # down: its probe's failure is its health's, and the daemon's, not ok's or hung's
        down = daemon.health("down").to_json()
        database = next(c for c in down["checks"] if c["name"] == "dependency_database")
        assert database["ok"] is False and "RuntimeError" in database["detail"], database
        for name in ("ok", "hung"):
            checks = {c["name"]: c["ok"] for c in daemon.health(name).to_json()["checks"]}
            assert checks["dependency_database"] is True, (name, checks)

        # cancelling hung's job releases its dump: the run ends interrupted, its worker is free
        assert hung.runner is not None and hung.runner.cancel_job("full") is not None
        wait_until("hung's job ended", lambda: not hung.running())
        statuses = [r.status for r in catalog.list_runs(hung.scope) if r.job == "full"]
        assert statuses == ["interrupted"], statuses
    finally:
        released.set()
        daemon._shutdown()
