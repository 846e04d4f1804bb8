"""The prefetch helper's rules (ops/wal/prefetch.py) on a real repository in memory and a real
spool directory: which segments it fetches, the bound, a missing segment, the end."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import contentflow_backupd
from contentflow_backupd.ops.wal.prefetch import next_segments, run_prefetch
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.storage.memory import MemoryStorage
from contentflow_backupd.walspool import WalSpool
from tests.unit.test_lean_imports import SEGMENT_SIZE, wal_segment

MIB = 1024 * 1024
TOKEN = "0123456789abcdef"


@pytest.mark.parametrize(
    ("want", "expected"),
    [
        ("000000010000000000000001", ["000000010000000000000002", "000000010000000000000003"]),
        ("0000000200000000000000FF", ["000000020000000100000000", "000000020000000100000001"]),
        ("00000002.history", []),
        ("000000010000000000000001.partial", []),
    ],
)
def test_the_segments_after_a_request(want: str, expected: list[str]) -> None:
    assert next_segments(want, 2, 16 * MIB) == expected


def test_next_segments_follow_the_segment_size() -> None:
    assert next_segments("000000010000000000000FFF", 1, SEGMENT_SIZE) == ["000000010000000100000000"]


@pytest.fixture
def archive(tmp_path: Path) -> WalArchive:
    repo = Repository.init(
        MemoryStorage(), KekSecret("passphrase", b"x", "t"), chunker=ChunkerParams(avg_size=64 * 1024)
    )
    arch = WalArchive(repo, "main")
    base = wal_segment(tmp_path / "seg").read_bytes()
    for n in range(1, 13):
        data = bytearray(base)
        data[-1] = n
        arch.push(f"0000000100000000000000{n:02X}", bytes(data))
    return arch


def run_in_thread(
    archive: WalArchive, spool: WalSpool, **kw: object
) -> tuple[threading.Thread, dict[str, int]]:
    out: dict[str, int] = {}
    stop = kw.pop("stop", threading.Event())
    assert isinstance(stop, threading.Event)

    def target() -> None:
        out.update(run_prefetch(archive, spool, token=TOKEN, stop=stop, **kw))  # type: ignore[arg-type]

    t = threading.Thread(target=target)
    t.start()
    return t, out


def wait_for(check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_it_keeps_the_next_segments_only_and_never_more(tmp_path: Path, archive: WalArchive) -> None:
    spool = WalSpool(str(tmp_path / "spool"))
    spool.create()
    spool.want("000000010000000000000001")
    stop = threading.Event()
    t, _ = run_in_thread(archive, spool, depth=3, idle_s=60, concurrency=2, stop=stop)
    try:
        wait_for(lambda: spool.names() == {f"0000000100000000000000{n:02X}" for n in (2, 3, 4)})
        dest = tmp_path / "RECOVERYXLOG"
        assert not spool.serve("000000010000000000000002", str(dest), token=None)  # no helper mark
        assert not spool.serve("000000010000000000000002", str(dest), token="another helper")
        assert spool.names() >= {"000000010000000000000003"}  # only the refused one was dropped
        wait_for(lambda: "000000010000000000000002" in spool.names())  # fetched again
        assert spool.serve("000000010000000000000002", str(dest), token=TOKEN)
        assert dest.read_bytes() == archive.fetch("000000010000000000000002")  # what the archive holds
        spool.want("00000002.history")  # a history file keeps the segments' place
        time.sleep(0.2)
        spool.want("000000010000000000000005")  # recovery skipped ahead: 3 and 4 go
        wait_for(lambda: spool.names() == {f"0000000100000000000000{n:02X}" for n in (6, 7, 8)})
        assert len([e for e in os.listdir(spool.path) if not e.startswith(".")]) <= 3 * 3 + 2
    finally:
        stop.set()
        t.join(60)
    assert sorted(os.listdir(spool.path)) == []  # emptied at the end


def test_a_missing_segment_stops_the_prefetch_there(tmp_path: Path, archive: WalArchive) -> None:
    spool = WalSpool(str(tmp_path / "spool"))
    spool.create()
    spool.want("00000001000000000000000A")
    t, counts = run_in_thread(archive, spool, depth=5, idle_s=1.0, concurrency=2)
    t.join(120)
    assert not t.is_alive()  # idle: it ended by itself
    assert counts["fetched"] == 2 and counts["missing"] >= 1  # 0B, 0C; 0D is not archived
    assert os.listdir(spool.path) == []


def test_a_segment_served_from_the_spool_imports_nothing_heavy(tmp_path: Path, archive: WalArchive) -> None:
    """``wal fetch`` from the spool, in a fresh interpreter, while a helper holds the lock (this
    test): the segment is served and no heavy module is imported."""
    import fcntl
    import json
    import subprocess
    import sys

    from tests.unit.test_wal_socket import DRIVER, STARTUP_COSTLY

    state = tmp_path / "state"
    spool = WalSpool(str(state / "wal-prefetch" / "main"))
    spool.create()
    name = "000000010000000000000003"
    spool.put(name, archive.fetch(name), TOKEN)
    lock = os.open(os.path.join(spool.path, "helper.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    spool.write_token(lock, TOKEN)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPD_")}
        env.update({"BACKUPD_REPOSITORY": f"file://{tmp_path / 'nowhere'}", "BACKUPD_STATE_DIR": str(state)})
        dest = tmp_path / "RECOVERYXLOG"
        # -S: no site, so nothing but the interpreter's own start is loaded before the driver
        # (the dev environment's editable-install hook imports __future__ and more at start-up);
        # the package is found through PYTHONPATH, its dependencies not at all.
        env["PYTHONPATH"] = str(Path(contentflow_backupd.__file__).parent.parent)
        proc = subprocess.run(
            [sys.executable, "-S", "-c", DRIVER, "wal", "fetch", name, str(dest)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        os.close(lock)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, proc.stderr
    assert dest.read_bytes() == archive.fetch(name)
    heavy = ("pydantic", "structlog", "cryptography", "zstandard", "argparse", "contentflow_backupd.cli")
    assert [m for m in report["modules"] if m.split(".")[0] in heavy or m.startswith(heavy)] == []
    assert [m for m in report["added"] if m.split(".")[0] in STARTUP_COSTLY] == []
    # Each module is a fraction of a millisecond of every restore_command: exactly these, and
    # neither the push side (walsocket, _socket) nor __future__ nor a subpackage's __init__.
    fast_path = {"contentflow_backupd", "contentflow_backupd.entry", "contentflow_backupd.walconf"}
    fast_path |= {"contentflow_backupd.walspool", "fcntl"}
    fast_path |= {"os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc"}  # site's
    assert set(report["added"]) <= fast_path, sorted(set(report["added"]) - fast_path)
    assert spool.wanted() is not None and spool.wanted()[0] == name  # type: ignore[index]


def test_only_the_very_file_the_running_helper_wrote_is_served(tmp_path: Path) -> None:
    spool = WalSpool(str(tmp_path / "spool"))
    spool.create()
    name = "000000010000000000000007"
    dest = tmp_path / "RECOVERYXLOG"
    spool.put(name, b"x" * 1000, TOKEN)
    path = Path(spool.path) / name
    path.write_bytes(b"y" * 1000)  # changed in the spool: another time (and here inode kept)
    os.utime(path, ns=(1, 1))
    assert not spool.serve(name, str(dest), TOKEN) and not path.exists()  # dropped
    spool.put(name, b"x" * 1000, TOKEN)
    replaced = Path(spool.path) / "other"
    replaced.write_bytes(b"x" * 1000)
    os.replace(replaced, path)  # same bytes, another file
    assert not spool.serve(name, str(dest), TOKEN)
    spool.put(name, b"x" * 1000, "an earlier helper")  # left by a crash: its data may be torn
    assert not spool.serve(name, str(dest), TOKEN)
    spool.put(name, b"x" * 1000, TOKEN)
    assert spool.serve(name, str(dest), TOKEN) and dest.read_bytes() == b"x" * 1000
    assert sorted(os.listdir(spool.path)) == []  # served: nothing of it left


# -- requests: wal fetch asks the helper instead of running the full command ------------------
def ask(spool: WalSpool, name: str, dest: Path, nonce: str) -> str:
    spool.want(name, nonce)
    return spool.await_answer(name, str(dest), TOKEN, nonce, 60, alive=lambda: True)


def test_a_request_is_answered_from_the_archive_served_or_not_archived(
    tmp_path: Path, archive: WalArchive
) -> None:
    from contentflow_backupd.walspool import NOT_ARCHIVED, SERVED

    archive.push("00000002.history", b"1\t0/3000000\tno recovery target specified\n")
    spool = WalSpool(str(tmp_path / "spool"))
    spool.create()
    spool.want("000000010000000000000001")
    stop = threading.Event()
    t, counts = run_in_thread(archive, spool, depth=2, idle_s=60, concurrency=2, stop=stop)
    dest = tmp_path / "RECOVERYXLOG"
    try:
        # Not prefetched (a history file; a segment behind the others): fetched for the request.
        assert ask(spool, "00000002.history", dest, "n1") == SERVED
        assert dest.read_bytes() == archive.fetch("00000002.history")
        assert ask(spool, "000000010000000000000001", dest, "n2") == SERVED
        assert dest.read_bytes() == archive.fetch("000000010000000000000001")
        # Not archived: answered for this request only, and the answer is consumed.
        assert ask(spool, "00000003.history", dest, "n3") == NOT_ARCHIVED
        assert ask(spool, "00000001000000000000000D", dest, "n4") == NOT_ARCHIVED
        assert not (Path(spool.path) / "00000001000000000000000D.missing").exists()
        # Archived since: the next request is served at once (the retry delay of a missing
        # segment does not apply to a request: each is checked after it was made).
        archive.push("00000001000000000000000D", archive.fetch("00000001000000000000000C")[:-1] + b"\x0d")
        assert ask(spool, "00000001000000000000000D", dest, "n5") == SERVED
        assert dest.read_bytes() == archive.fetch("00000001000000000000000D")
    finally:
        stop.set()
        t.join(60)
    assert counts["missing"] >= 2
    assert sorted(os.listdir(spool.path)) == []


def test_only_the_answer_to_this_request_counts(tmp_path: Path, archive: WalArchive) -> None:
    """An answer left for another nonce (an earlier request, another helper's token) is never
    taken for this one: without a helper answering, the caller falls back to the full command."""
    from contentflow_backupd.walspool import FALLBACK

    spool = WalSpool(str(tmp_path / "spool"))
    spool.create()
    name = "00000001000000000000000D"
    spool.answer(name, TOKEN, "earlier", "missing")
    spool.want(name, "now")
    assert spool.await_answer(name, str(tmp_path / "d"), TOKEN, "now", 0.3, alive=lambda: True) == FALLBACK
    spool.answer(name, "another helper", "now", "missing")
    assert spool.await_answer(name, str(tmp_path / "d"), TOKEN, "now", 0.3, alive=lambda: True) == FALLBACK
    spool.answer(name, TOKEN, "now", "failed")  # the full command fetches it and reports
    assert spool.await_answer(name, str(tmp_path / "d"), TOKEN, "now", 30, alive=lambda: True) == FALLBACK
    assert spool.await_answer(name, str(tmp_path / "d"), TOKEN, "later", 30, alive=lambda: False) == FALLBACK


def test_a_miss_answered_by_the_helper_imports_nothing_heavy(tmp_path: Path, archive: WalArchive) -> None:
    """``wal fetch`` of a file that is not archived (every end of recovery asks for one), in a
    fresh interpreter, with a helper running: exit 1 from the helper's answer, with the same
    few modules as a served segment, not the full command."""
    import fcntl
    import json
    import subprocess
    import sys

    from tests.unit.test_wal_socket import DRIVER

    state = tmp_path / "state"
    spool = WalSpool(str(state / "wal-prefetch" / "main"))
    spool.create()
    spool.want("00000001000000000000000C")
    lock = os.open(os.path.join(spool.path, "helper.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    spool.write_token(lock, TOKEN)
    stop = threading.Event()
    t, _ = run_in_thread(archive, spool, depth=2, idle_s=60, concurrency=2, stop=stop)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPD_")}
        env.update({"BACKUPD_REPOSITORY": f"file://{tmp_path / 'nowhere'}", "BACKUPD_STATE_DIR": str(state)})
        env["PYTHONPATH"] = str(Path(contentflow_backupd.__file__).parent.parent)
        dest = tmp_path / "RECOVERYXLOG"
        proc = subprocess.run(
            [sys.executable, "-S", "-c", DRIVER, "wal", "fetch", "00000001000000000000000D", str(dest)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        stop.set()
        t.join(60)
        os.close(lock)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rc"] == 1, proc.stderr
    assert not dest.exists()
    fast_path = {"contentflow_backupd", "contentflow_backupd.entry", "contentflow_backupd.walconf"}
    fast_path |= {"contentflow_backupd.walspool", "fcntl"}
    fast_path |= {"os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc"}  # site's
    assert set(report["added"]) <= fast_path, sorted(set(report["added"]) - fast_path)


def test_a_helper_of_an_older_version_is_asked_nothing(tmp_path: Path) -> None:
    """An older helper writes ``<pid> <token>`` (no ``answers``): ``wal fetch`` still serves what
    it wrote, but does not wait for answers it would never give."""
    from contentflow_backupd.walspool import read_token

    spool = WalSpool(str(tmp_path / "spool"))
    spool.create()
    fd = os.open(os.path.join(spool.path, "helper.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, f"{os.getpid()} {TOKEN}\n".encode(), 0)
        assert read_token(fd) == (TOKEN, False)
        spool.write_token(fd, TOKEN)
        assert read_token(fd) == (TOKEN, True)
        os.ftruncate(fd, 0)
        assert read_token(fd) is None  # not written yet
    finally:
        os.close(fd)
