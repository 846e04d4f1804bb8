"""``run_wal_stream`` without PostgreSQL: a scripted ``WalReceiver`` (tests/support/fake_pg.py)
writes into a real spool directory; the archive is a real Repository on MemoryStorage. The
end-to-end tests with pg_receivewal are in tests/e2e/test_wal_stream.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from contentflow_backupd.backoff import Backoff
from contentflow_backupd.errors import LockedError
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.ops.wal.stream import run_wal_stream
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.storage.memory import MemoryStorage
from contentflow_backupd.wal import Segment, classify
from tests.support.fake_pg import SEGMENT_SIZE, FakeWalReceiver, wal_segment

PASS = KekSecret("passphrase", b"wal stream unit tests", "test")


def seg(n: int) -> str:
    return Segment(1, n).name(SEGMENT_SIZE)


@pytest.fixture
def archive() -> WalArchive:
    return WalArchive(
        Repository.init(MemoryStorage(), PASS, chunker=ChunkerParams(avg_size=64 * 1024)), "main"
    )


def run_until(archive: WalArchive, receiver: FakeWalReceiver, done: Callable[[], bool]) -> None:
    """Run the stream on a thread until ``done()``, then stop it and wait for it to return."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            run_wal_stream(
                archive,
                receiver,
                slot="s",
                stop=stop,
                poll_interval=0.01,
                restart_backoff=Backoff(first=0.01, cap=0.05),
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    while not done() and thread.is_alive():
        stop.wait(0.01)
    stop.set()
    thread.join()
    if errors:
        raise errors[0]


def test_completed_segments_are_archived_and_a_partial_never_is(archive: WalArchive, tmp_path: Path) -> None:
    receiver = FakeWalReceiver(tmp_path / "spool", [([1, 2, 3], None)])
    run_until(archive, receiver, lambda: archive.exists(seg(3)))
    assert [n for n in archive.names() if classify(n) == "segment"] == [seg(1), seg(2), seg(3)]
    assert archive.fetch(seg(2)) == wal_segment(1, 2, fill=2)
    left = sorted(p.name for p in (tmp_path / "spool").iterdir())
    # the partial is never pushed; it is the resume point, so segment 3 is not kept for that
    assert left == [seg(4) + ".partial"]
    assert receiver.stops == 1 and not receiver.entered


def test_an_exited_receiver_is_restarted_and_resumes_without_a_gap(
    archive: WalArchive, tmp_path: Path
) -> None:
    receiver = FakeWalReceiver(tmp_path / "spool", [([1, 2], 1), ([3], 1), ([4, 5], None)])
    run_until(archive, receiver, lambda: archive.exists(seg(5)))
    assert receiver.starts == 3
    assert [n for n in archive.names() if classify(n) == "segment"] == [seg(n) for n in range(1, 6)]


def test_a_receiver_that_cannot_start_is_retried(archive: WalArchive, tmp_path: Path) -> None:
    receiver = FakeWalReceiver(tmp_path / "spool", [])
    run_until(archive, receiver, lambda: receiver.starts >= 3)
    assert receiver.starts >= 3
    assert list(archive.names()) == []


def test_two_streams_into_one_spool_are_refused(archive: WalArchive, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    receiver = FakeWalReceiver(spool, [([1], None)])
    with exclusive(tmp_path, "spool.wal-stream", what="another wal-stream"), pytest.raises(LockedError):
        run_wal_stream(archive, receiver, slot="s", stop=threading.Event())
    assert receiver.starts == 0
