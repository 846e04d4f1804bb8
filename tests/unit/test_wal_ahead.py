"""Pushing ahead of PostgreSQL's archiver (daemon/walahead.py), on a real directory laid out like
``pg_wal``, with a push function of our own that records what it is given."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from contentflow_backupd.daemon.walahead import PushAhead
from contentflow_backupd.errors import StorageUnavailable

NAMES = [f"0000000100000000000000{i:02X}" for i in range(1, 7)]


class Recorder:
    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.fail = fail or set()
        self.lock = threading.Lock()

    def __call__(self, name: str, data: bytes) -> str:
        with self.lock:
            self.calls.append((name, data))
        if name in self.fail:
            raise StorageUnavailable("the store is down")
        return "stored"


@pytest.fixture
def pg_wal(tmp_path: Path) -> Path:
    wal = tmp_path / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    for i, name in enumerate(NAMES):
        (wal / name).write_bytes(bytes([i]) * 4096)
        (wal / "archive_status" / f"{name}.ready").touch()
    return wal


def settle(ahead: PushAhead, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with ahead._lock:
            if not ahead._running and ahead._ahead == 0:
                return
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_it_pushes_the_ready_files_of_the_archivers_pg_wal(pg_wal: Path) -> None:
    push = Recorder()
    ahead = PushAhead(push, limit=2)
    ahead.saw(str(pg_wal / NAMES[0]))
    settle(ahead)
    assert sorted(n for n, _ in push.calls) == NAMES  # chained until no ready file is left
    assert all(data == (pg_wal / n).read_bytes() for n, data in push.calls)
    fd = os.open(pg_wal / NAMES[3], os.O_RDONLY)
    try:
        assert ahead.pushed(NAMES[3], fd) == "stored"
    finally:
        os.close(fd)
    ahead.kick()
    settle(ahead)
    assert len(push.calls) == len(NAMES)  # nothing pushed twice


def test_the_answer_comes_from_memory_only_for_the_very_file_pushed(pg_wal: Path, tmp_path: Path) -> None:
    ahead = PushAhead(Recorder(), limit=2)
    ahead.saw(str(pg_wal / NAMES[0]))
    settle(ahead)
    path = pg_wal / NAMES[2]
    path.write_bytes(b"changed" * 100)  # another size and time: not the file that was pushed
    fd = os.open(path, os.O_RDONLY)
    try:
        assert ahead.pushed(NAMES[2], fd) is None
    finally:
        os.close(fd)
    copy = tmp_path / NAMES[4]
    copy.write_bytes((pg_wal / NAMES[4]).read_bytes())  # same bytes, another file
    fd = os.open(copy, os.O_RDONLY)
    try:
        assert ahead.pushed(NAMES[4], fd) is None
    finally:
        os.close(fd)


def test_a_failed_push_ahead_is_not_remembered(pg_wal: Path) -> None:
    ahead = PushAhead(Recorder(fail={NAMES[1]}), limit=1)
    ahead.saw(str(pg_wal / NAMES[0]))
    settle(ahead)
    fd = os.open(pg_wal / NAMES[1], os.O_RDONLY)
    try:
        assert ahead.pushed(NAMES[1], fd) is None  # the archiver's call pushes it and reports
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", ["not-pg-wal", "relative", "no-status-dir", "off"])
def test_it_pushes_nothing_outside_a_pg_wal_or_when_off(tmp_path: Path, pg_wal: Path, where: str) -> None:
    push = Recorder()
    ahead = PushAhead(push, limit=0 if where == "off" else 2)
    if where == "not-pg-wal":
        other = tmp_path / "elsewhere"
        (other / "archive_status").mkdir(parents=True)
        (other / "archive_status" / f"{NAMES[0]}.ready").touch()
        (other / NAMES[0]).write_bytes(b"x")
        ahead.saw(str(other / NAMES[0]))
    elif where == "relative":
        ahead.saw(f"pg_wal/{NAMES[0]}")
    elif where == "no-status-dir":
        bare = tmp_path / "x" / "pg_wal"
        bare.mkdir(parents=True)
        ahead.saw(str(bare / NAMES[0]))
    else:
        ahead.saw(str(pg_wal / NAMES[0]))
    settle(ahead)
    assert push.calls == []


def test_a_name_the_archiver_claimed_is_not_pushed_ahead(pg_wal: Path) -> None:
    push = Recorder()
    ahead = PushAhead(push, limit=4)
    claim = ahead.claim(NAMES[0])
    assert claim is not None
    ahead.saw(str(pg_wal / NAMES[0]))
    settle_except = time.monotonic() + 60
    while len(push.calls) < len(NAMES) - 1:
        assert time.monotonic() < settle_except
        time.sleep(0.01)
    ahead.release(NAMES[0], claim)
    settle(ahead)
    assert NAMES[0] not in [n for n, _ in push.calls]
