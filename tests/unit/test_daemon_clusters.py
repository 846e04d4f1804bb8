"""One daemon, several clusters, in process (docs/design/fleet.md, step 5): each cluster starts on
its own thread and a failing one is retried while the others run; ``stop_cluster`` of one while
another keeps running its jobs; ``reschedule_cluster`` keeps unchanged fire times;
``start_cluster`` serves a cluster again; the implicit cluster keeps its bare job ids.

Real parts: the settings, ``wiring.Fleet``, a SQLite catalog, local repositories, APScheduler,
``JobRunner``. No PostgreSQL: every cluster's server is an address nobody listens on, so each
scheduled full backup fails at once and is recorded ``failed``, which is what the tests count.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.backoff import Backoff
from contentflow_backupd.daemon import control
from contentflow_backupd.daemon.lifecycle import Daemon
from contentflow_backupd.model import Scope
from contentflow_backupd.scheduling import jobs
from contentflow_backupd.settings import load_settings
from contentflow_backupd.wiring.fleet import Fleet

WAIT = 120.0
"""Generous: the machine is shared and loaded; every wait polls and returns once true."""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("BACKUPD_") or name in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET"):
            monkeypatch.delenv(name)
    # retry a failed start soon (the policy's own delays are tested in test_backoff.py)
    monkeypatch.setattr(control, "CLUSTER_START_BACKOFF", Backoff(first=0.2, cap=0.5))
    jobs.install(None)
    yield
    jobs.install(None)


def wait_until(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def config(
    tmp_path: Path, *, b_full: str = "every 2s", clusters: bool = True, a_url: str | None = None
) -> Fleet:
    """Clusters a and b in one repository, c in a location that holds a stray file and no
    repository (its start fails until the file goes). Full backups every 2 s (each fails at
    once: nobody listens on port 1), verify hourly, everything else off."""
    nowhere = "postgresql://app@127.0.0.1:1/{}?connect_timeout=2"
    text = (
        ("" if clusters else f'database_url = "{nowhere.format("main")}"\n')
        + f'repository = "file://{tmp_path / "repo"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        'http = { listen = "off" }\n'
        'encryption = { passphrase = "correct horse battery staple" }\n'
        '[wal]\nsocket = "off"\n'
        '[schedule]\nfull = "every 2s"\nincremental = "off"\nretention = "off"\n'
        'verify = "every 1h"\nrestore_test = "off"\nspread = "0s"\n'
    )
    if clusters:
        text += (
            f'[clusters.a]\ndatabase_url = "{a_url or nowhere.format("a")}"\n'
            f'[clusters.b]\ndatabase_url = "{nowhere.format("b")}"\n'
            f'[clusters.b.schedule]\nfull = "{b_full}"\n'
            f'[clusters.c]\ndatabase_url = "{nowhere.format("c")}"\n'
            f'repository = "file://{tmp_path / "c-repo"}"\n'
        )
    cfg = tmp_path / f"backupd-{b_full.replace(' ', '')}-{clusters}.toml"
    cfg.write_text(text)
    settings, data = load_settings(cfg, secret_dirs=[tmp_path / "no-secrets"])
    return Fleet(settings, data)


def runs_of(daemon: Daemon, name: str) -> list[Any]:
    assert daemon._catalog is not None
    runtime = daemon.runtimes.get(name)
    scope = runtime.scope if runtime is not None else None
    if scope is None:
        raise AssertionError(f"{name} is not served")
    return [r for r in daemon._catalog.list_runs(scope) if r.job == "full" and r.status != "running"]


def series_clusters(daemon: Daemon) -> set[str]:
    text = daemon.all_metrics.render()[0].decode()
    found = set()
    for line in text.splitlines():
        if 'cluster="' in line and not line.startswith("#"):
            found.add(line.split('cluster="', 1)[1].split('"', 1)[0])
    return found


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Daemon]:
    (tmp_path / "c-repo").mkdir()
    (tmp_path / "c-repo" / "stray").write_text("not a repository")
    fleet = config(tmp_path)
    daemon = Daemon(fleet)
    try:
        daemon._start()
        yield daemon
    finally:
        daemon._shutdown()
        fleet.close()


def test_clusters_start_on_their_own_and_a_failing_one_is_retried(started: Daemon, tmp_path: Path) -> None:
    daemon = started
    assert daemon.started and daemon.ready()  # READY does not wait for c
    wait_until("a and b running", lambda: all(daemon.runtimes[n].state == "running" for n in "ab"))
    c = daemon.runtimes["c"]
    assert c.state == "starting" and c.start_error is not None and "no repo.json" in c.start_error
    assert sorted(daemon._scheduler.clusters()) == ["a", "b"]
    assert daemon._scheduler.next_runs("a")["full"] is not None

    whole = daemon.health().to_json()
    assert whole["ok"] is False
    assert [c["name"] for c in whole["checks"]] == ["dependency_catalog"]
    assert [x["cluster"] for x in whole["clusters"]] == ["a", "b", "c"]
    one = daemon.health("c").to_json()
    assert one["cluster"] == "c" and [x["name"] for x in one["checks"]] == ["cluster_start"]
    assert "no repo.json" in one["checks"][0]["detail"]
    a = daemon.health("a").to_json()
    database = next(x for x in a["checks"] if x["name"] == "dependency_database")
    assert database["ok"] is False and "127.0.0.1:1" in database["detail"]
    assert {"a", "b", "c"} <= series_clusters(daemon)

    # a and b run their jobs (each fails: no server); c is still retried
    wait_until("runs of a and b", lambda: runs_of(daemon, "a") and runs_of(daemon, "b"))
    assert all(r.status == "failed" for r in runs_of(daemon, "a"))
    assert daemon.runtimes["c"].state == "starting"

    (tmp_path / "c-repo" / "stray").unlink()  # the trouble goes: the retry starts it
    wait_until("c running", lambda: daemon.runtimes["c"].state == "running")
    assert sorted(daemon._scheduler.clusters()) == ["a", "b", "c"]
    assert [x["name"] for x in daemon.health("c").to_json()["checks"]] != ["cluster_start"]
    assert "serving 3 clusters" in daemon._status_text()


def test_stop_cluster_leaves_the_others_running_their_jobs(started: Daemon) -> None:
    daemon = started
    wait_until("a and b running", lambda: all(daemon.runtimes[n].state == "running" for n in "ab"))
    wait_until("runs of a", lambda: runs_of(daemon, "a"))
    scope_a = daemon.runtimes["a"].scope

    daemon.stop_cluster("a", grace_s=30)

    assert "a" not in daemon.runtimes and "a" not in daemon._scheduler.clusters()
    assert "a" not in series_clusters(daemon) and "b" in series_clusters(daemon)
    assert daemon.cluster_names() == ["b", "c"]
    assert daemon._catalog is not None
    stopped_runs = [r.id for r in daemon._catalog.list_runs(Scope(scope_a.repository_id, "a"))]
    assert stopped_runs  # its runs stay
    before_b = len(runs_of(daemon, "b"))
    wait_until("two more runs of b", lambda: len(runs_of(daemon, "b")) >= before_b + 2)
    after = [r.id for r in daemon._catalog.list_runs(Scope(scope_a.repository_id, "a"))]
    assert after == stopped_runs  # nothing of a ran since
    daemon.stop_cluster("a")  # not served: logged, nothing else

    # served again: its job store comes back (its rows were kept)
    daemon.start_cluster("a", daemon.fleet.cluster("a"))
    wait_until("a running again", lambda: daemon.runtimes["a"].state == "running")
    assert "a" in daemon._scheduler.clusters() and "a" in series_clusters(daemon)


def test_reschedule_cluster_moves_changed_jobs_only(started: Daemon, tmp_path: Path) -> None:
    daemon = started
    wait_until("a and b running", lambda: all(daemon.runtimes[n].state == "running" for n in "ab"))
    before = daemon._scheduler.next_runs("b")
    assert before["verify"] is not None

    changed = config(tmp_path, b_full="0 3 * * *")
    try:
        daemon.reschedule_cluster("b", changed.cluster("b"))
        after = daemon._scheduler.next_runs("b")
        assert after["verify"] == before["verify"]  # unchanged trigger: same fire time
        assert after["full"] is not None and after["full"].hour == 3 and after["full"].minute == 0
        assert daemon._scheduler.next_runs("a")["full"] is not None  # another cluster untouched
    finally:
        changed.close()


def test_the_implicit_cluster_keeps_bare_job_ids(tmp_path: Path) -> None:
    fleet = config(tmp_path, clusters=False)
    daemon = Daemon(fleet)
    try:
        daemon._start()
        wait_until("main running", lambda: daemon.runtimes["main"].state == "running")
        stored = {job.id for job in daemon._scheduler._sched.get_jobs(jobstore="main")}
        assert stored == {"full", "verify"}
        wait_until("a run of main", lambda: runs_of(daemon, "main"))
        doc = daemon.health().to_json()
        assert [x["cluster"] for x in doc["clusters"]] == ["main"]
        assert doc["checks"] == doc["clusters"][0]["checks"]  # today's list, as it was
        assert daemon._status_text().startswith("next: ")
    finally:
        daemon._shutdown()
        fleet.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a connection attempt to it waits
    for its ``connect_timeout``, so a job there is still running when the test stops it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_stop_cluster_lets_the_running_job_finish_within_the_grace(
    tmp_path: Path, silent_server: int
) -> None:
    (tmp_path / "c-repo").mkdir()
    fleet = config(tmp_path, a_url=f"postgresql://app@127.0.0.1:{silent_server}/a?connect_timeout=3")
    daemon = Daemon(fleet)
    try:
        daemon._start()
        a = wait_until(
            "a running", lambda: daemon.runtimes.get("a") if daemon.runtimes["a"].state == "running" else None
        )
        wait_until("a job of a running", a.running)
        daemon.stop_cluster("a", grace_s=60)
        assert a.running() == [] and a.state == "stopped"
        assert daemon._catalog is not None
        statuses = {r.status for r in daemon._catalog.list_runs(a.scope)}
        assert statuses and "running" not in statuses  # its run was finished, and recorded
        before_b = len(runs_of(daemon, "b"))
        wait_until("b runs on", lambda: len(runs_of(daemon, "b")) > before_b)
    finally:
        daemon._shutdown()
        fleet.close()
