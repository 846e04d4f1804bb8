"""The stall watchdog (``daemon/stall.py``): the decision as a table on a fake clock, the watch
thread calling its verdict once, the ``jobs`` settings it reads, how a job's cancel event tells
a stall (failed) from a stop (interrupted) and how the job runner records each, and that the
backup pipeline moves the progress tracker every few MiB (no false stall of a long, healthy
dump). No server; a local repository and SQLite catalog."""

from __future__ import annotations

import io
import math
import os
import random
import threading
from pathlib import Path

import pytest

from contentflow_backupd import __version__
from contentflow_backupd.daemon.runtime import JobRunner
from contentflow_backupd.daemon.stall import Position, Stalled, StallRule, check_interval, watching
from contentflow_backupd.errors import ConfigError, SourceError
from contentflow_backupd.model import JobCancel, cancel_failure
from contentflow_backupd.observability import progress
from contentflow_backupd.observability.metrics import Metrics
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.pipeline import PROGRESS_STEP, ChunkWriter
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.settings import Settings, load_settings
from contentflow_backupd.storage.local import LocalStorage
from contentflow_backupd.wiring import App
from tests.conftest import PASSPHRASE

T = 60.0


def pos(phase: str = "dumping", done: int = 0, started: float = 0.0, quiet: float | None = None) -> Position:
    return (phase, started, done, quiet)


# -- the decision ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("steps", "stalled_at"),
    [
        # (clock, position) pairs; stalled_at: the index of the first verdict, None: never
        ([(0, pos()), (30, pos()), (59, pos())], None),
        ([(0, pos()), (30, pos()), (60, pos())], 2),
        ([(0, pos(done=1)), (50, pos(done=2)), (100, pos(done=2)), (110, pos(done=2))], 3),
        ([(0, pos()), (50, pos("uploading")), (100, pos("uploading")), (111, pos("uploading"))], 3),
        # the same phase name entered again is a move (its start changed)
        ([(0, pos()), (50, pos(started=50)), (100, pos(started=50))], None),
        # a quiet phase (a bounded wait) counts only past its bound
        ([(0, pos(quiet=100)), (90, pos(quiet=100)), (150, pos(quiet=100)), (160, pos(quiet=100))], 3),
        ([(0, pos(quiet=math.inf)), (1e6, pos(quiet=math.inf)), (1e9, pos(quiet=math.inf))], None),
        # the timeout runs from the bound, not from the phase's start
        ([(0, pos(quiet=10)), (61, pos(quiet=10)), (69, pos(quiet=10)), (70, pos(quiet=10))], 3),
    ],
)
def test_a_job_is_stalled_once_its_position_has_not_moved_for_the_timeout(
    steps: list[tuple[float, Position]], stalled_at: int | None
) -> None:
    rule = StallRule(T, now=0.0)
    verdicts = [rule.check(position, now) for now, position in steps]
    first = next((i for i, v in enumerate(verdicts) if v is not None), None)
    assert first == stalled_at, verdicts


def test_the_verdict_names_the_phase_the_time_and_the_setting() -> None:
    rule = StallRule(5.0, now=0.0)
    assert rule.check(pos("dumping", done=7), 0.0) is None
    stalled = rule.check(pos("dumping", done=7), 12.0)
    assert stalled == Stalled(12.0, "dumping")
    reason = stalled.reason(5.0)
    assert reason.startswith("stalled: no progress for 12s in phase 'dumping'")
    assert "BACKUPD_JOBS__STALL_TIMEOUT is 5s" in reason


def test_a_zero_timeout_is_refused_and_the_interval_is_bounded() -> None:
    with pytest.raises(ValueError):
        StallRule(0.0, now=0.0)
    assert check_interval(5.0) == 0.5
    assert check_interval(60.0) == 6.0
    assert check_interval(1800.0) == 15.0


# -- the watch thread --------------------------------------------------------------------------
def test_the_watch_calls_its_verdict_once_and_not_when_the_job_moves() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 10.0  # every look is 10 s later
        return now[0]

    verdicts: list[Stalled] = []
    called = threading.Event()

    def on_stall(stalled: Stalled) -> None:
        verdicts.append(stalled)
        called.set()

    with watching(lambda: pos("dumping", 3), 5.0, on_stall, clock=clock):
        assert called.wait(60), "the watchdog gave no verdict"
    assert len(verdicts) == 1 and verdicts[0].phase == "dumping"

    moved: list[Stalled] = []
    counter = iter(range(10**9))
    looks = threading.Event()

    def moving() -> Position:
        n = next(counter)
        if n >= 3:
            looks.set()
        return pos("dumping", n)

    with watching(moving, 5.0, moved.append, clock=clock):
        assert looks.wait(60)
    assert moved == []


def test_no_timeout_no_watch() -> None:
    with watching(lambda: pos(), None, lambda s: None):
        assert not [t for t in threading.enumerate() if t.name == "stall-watchdog"]


# -- a job's cancel event ----------------------------------------------------------------------
def test_a_stall_fails_the_job_and_a_stop_interrupts_it() -> None:
    stop, stall, plain = JobCancel(), JobCancel(), threading.Event()
    assert cancel_failure(stop) is None and cancel_failure(None) is None
    stop.set()
    plain.set()
    assert cancel_failure(stop) is None and cancel_failure(plain) is None  # interrupted
    stall.fail("stalled: no progress for 30s")
    assert stall.is_set() and cancel_failure(stall) == "stalled: no progress for 30s"


# -- the settings ------------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BACKUPD_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_jobs_settings_defaults_env_off_and_per_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    assert (settings.jobs.lock_wait_timeout, settings.jobs.stall_timeout) == ("10m", "30m")
    assert App(settings).stall_timeout_s == 1800.0
    for off in ("0", "off", "OFF"):
        assert App(Settings(jobs={"stall_timeout": off})).stall_timeout_s is None
    monkeypatch.setenv("BACKUPD_JOBS__LOCK_WAIT_TIMEOUT", "2s")
    monkeypatch.setenv("BACKUPD_JOBS__STALL_TIMEOUT", "5m")
    cfg = tmp_path / "backupd.toml"
    cfg.write_text(
        'repository = "file:///srv/backups"\n'
        "[clusters.orders]\n"
        "[clusters.billing.jobs]\n"
        'stall_timeout = "off"\n'
    )
    loaded, _ = load_settings(cfg, secret_dirs=[tmp_path / "none"])
    orders, billing = loaded.for_cluster("orders"), loaded.for_cluster("billing")
    assert (orders.jobs.lock_wait_timeout, orders.jobs.stall_timeout) == ("2s", "5m")
    assert (billing.jobs.lock_wait_timeout, billing.jobs.stall_timeout) == ("2s", "off")
    monkeypatch.setenv("BACKUPD_JOBS__STALL_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="BACKUPD_JOBS__STALL_TIMEOUT"):
        load_settings(cfg, secret_dirs=[tmp_path / "none"])
    monkeypatch.setenv("BACKUPD_JOBS__STALL_TIMEOUT", "30m")
    monkeypatch.setenv("BACKUPD_JOBS__LOCK_WAIT_TIMEOUT", "0")
    with pytest.raises(ConfigError, match="BACKUPD_JOBS__LOCK_WAIT_TIMEOUT"):
        load_settings(cfg, secret_dirs=[tmp_path / "none"])


# -- no false stall: the pipeline moves the tracker every few MiB ------------------------------
@pytest.mark.parametrize("chunk_size", [None, 4096], ids=["chunks", "packs"])
def test_a_long_stream_advances_the_tracker_every_few_mib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_size: int | None
) -> None:
    """What a dump or a base backup goes through (``ChunkWriter.write_stream``): the tracker
    advances at least every ``max(max chunk, PROGRESS_STEP + a chunk)`` bytes, so a dump that
    moves data is never quiet for long, whatever its size."""
    params = ChunkerParams(avg_size=256 * 1024)
    repo = Repository.init(
        LocalStorage(tmp_path / "repo"),
        KekSecret("passphrase", b"stall test passphrase", "test"),
        chunker=params,
    )
    data = random.Random(7).randbytes(12 * 1024 * 1024)
    steps: list[int] = []
    advance = progress.Tracker.advance

    def recording(self: progress.Tracker, n: int) -> None:
        steps.append(n)
        advance(self, n)

    monkeypatch.setattr(progress.Tracker, "advance", recording)
    with progress.tracking("full"):
        ChunkWriter(repo, "main", "g1", {}, concurrency=2).write_stream(
            "dump", "t", io.BytesIO(data), chunk_size=chunk_size
        )
    bound = max(params.max_size, PROGRESS_STEP + (chunk_size or 0) * 4)
    assert sum(steps) == len(data)
    assert max(steps) <= bound, max(steps)
    assert len(steps) >= len(data) // bound


# -- how the job runner records a stalled job --------------------------------------------------
@pytest.mark.usefixtures("clean_env")
def test_a_stalled_job_is_recorded_failed_with_the_reason_and_a_stopped_one_interrupted(
    tmp_path: Path,
) -> None:
    """``JobRunner._simple_run`` (verify, retention, drills, the WAL job): the job's failure
    after ``JobCancel.fail`` is a ``failed`` run whose error starts with the stall's reason;
    after a plain stop it is ``interrupted``. A real local repository and SQLite catalog."""
    settings = Settings(
        repository=f"file://{tmp_path / 'repo'}",
        state_dir=tmp_path / "state",
        encryption={"passphrase": PASSPHRASE},
    )
    app = App(settings)
    repo = app.init_repository()
    catalog = app.open_catalog()
    try:
        runner = JobRunner(app, repo, catalog, Metrics(__version__).add_cluster(app.cluster), app.notifier())
        for how in ("stall", "stop"):
            cancel = JobCancel()

            def body(run_id: int, how: str = how, cancel: JobCancel = cancel) -> str:
                if how == "stall":
                    cancel.fail("stalled: no progress for 5s in phase 'reading objects'")
                else:
                    cancel.set()
                raise SourceError("pg_dump was stopped")

            runner._simple_run("verify", "manual", cancel, body)
        runs = catalog.list_runs(runner.scope, limit=10)
        assert sorted((r.status, r.error) for r in runs) == [
            ("failed", "stalled: no progress for 5s in phase 'reading objects': pg_dump was stopped"),
            ("interrupted", "pg_dump was stopped"),
        ]
    finally:
        catalog.close()
        app.close()
