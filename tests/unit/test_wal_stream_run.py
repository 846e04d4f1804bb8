"""``run_wal_stream`` without PostgreSQL: a scripted ``WalReceiver`` (tests/support/fake_pg.py)
writes into a real spool directory; the archive is a real Repository on MemoryStorage. The
end-to-end tests with pg_receivewal are in tests/e2e/test_wal_stream.py."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from contentflow_backupd.backoff import Backoff
from contentflow_backupd.errors import LockedError, StorageError
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.ops.wal.stream import prepare_spool, run_wal_stream, seed_spool
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.storage.local import LocalStorage
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
    waited = 0
    while not done() and thread.is_alive():
        stop.wait(0.01)
        waited += 1
        if waited > 3000:  # a failure condition, not a speed claim
            stop.set()
            thread.join()
            raise AssertionError("the stream never got there")
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


# -- the guard slot and the handover (docs/design/fleet.md, step 8) -------------------------
def end_of(n: int) -> int:
    """The LSN right after fake segment ``n``."""
    return (n + 1) * SEGMENT_SIZE


def segments_in(archive: WalArchive) -> list[str]:
    return [n for n in archive.names() if classify(n) == "segment"]


def test_the_guard_follows_the_stored_segments_and_never_moves_back(
    archive: WalArchive, tmp_path: Path
) -> None:
    receiver = FakeWalReceiver(tmp_path / "spool", [([1, 2], 1), ([3, 4, 5], None)])
    run_until(archive, receiver, lambda: archive.exists(seg(5)) and receiver.guard == end_of(5))
    assert receiver.confirmed, "the guard was never advanced"
    assert receiver.confirmed == sorted(set(receiver.confirmed)), "the guard was asked to move back"
    assert receiver.guard == end_of(5)
    # every position it was moved to is the end of a segment that was stored by then
    assert set(receiver.confirmed) <= {end_of(n) for n in range(1, 6)}


def test_the_guard_stays_behind_while_the_storage_fails(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    archive = WalArchive(Repository.init(storage, PASS, chunker=ChunkerParams(avg_size=64 * 1024)), "main")
    archive.push(seg(1), wal_segment(1, 1, fill=1))
    blocker = tmp_path / "repo" / "main" / "wal" / "00000001"
    stored = blocker.with_name("stored")
    blocker.rename(stored)
    blocker.write_text("not a directory: every WAL put fails")
    spool = prepare_spool(tmp_path / "spool")
    (spool / (seg(2) + ".partial")).write_bytes(b"half a segment")  # this host streamed before
    receiver = FakeWalReceiver(spool, [([2, 3], None)])
    with pytest.raises(StorageError):  # the upload at stop fails too, and says so
        run_until(archive, receiver, lambda: receiver.starts >= 1 and (spool / seg(3)).exists())
    assert receiver.guard == 0 and receiver.confirmed == [], "the guard moved past WAL that is not stored"
    assert {seg(2), seg(3)} <= set(os.listdir(tmp_path / "spool"))

    blocker.unlink()
    stored.rename(blocker)
    again = FakeWalReceiver(tmp_path / "spool", [([], None)])
    run_until(archive, again, lambda: again.guard == end_of(3))
    assert segments_in(archive) == [seg(1), seg(2), seg(3)]
    assert again.confirmed == [end_of(3)]


def test_an_empty_spool_is_seeded_with_the_newest_stored_segment(archive: WalArchive, tmp_path: Path) -> None:
    """A new owner of the cluster (another host: nothing in its spool) resumes right after what
    the repository holds, not at the server's position, and does not push the seed again."""
    for n in (4, 5, 6):
        archive.push(seg(n), wal_segment(1, n, fill=n))
    spool = tmp_path / "spool"
    receiver = FakeWalReceiver(spool, [([7, 8], None)])
    run_until(archive, receiver, lambda: archive.exists(seg(8)) and receiver.guard == end_of(8))
    assert receiver.resumed_at == [7]
    assert segments_in(archive) == [seg(n) for n in (4, 5, 6, 7, 8)]
    assert receiver.confirmed == [end_of(8)]
    assert os.listdir(spool) == [seg(9) + ".partial"]  # the seed went once a newer segment came


def test_a_spool_with_wal_is_not_seeded_and_an_empty_repository_seeds_nothing(
    archive: WalArchive, tmp_path: Path
) -> None:
    spool = prepare_spool(tmp_path / "spool")
    assert seed_spool(archive, spool) is None  # nothing stored: pg_receivewal starts at the server
    assert os.listdir(spool) == []
    archive.push(seg(3), wal_segment(1, 3, fill=3))
    (spool / (seg(5) + ".partial")).write_bytes(b"half a segment")
    assert seed_spool(archive, spool) is None  # it resumes at its .partial
    (spool / (seg(5) + ".partial")).unlink()
    assert seed_spool(archive, spool) == seg(3)
    assert (spool / seg(3)).read_bytes() == wal_segment(1, 3, fill=3)
    assert sorted(os.listdir(spool)) == [seg(3), seg(3) + ".archived"]
    assert seed_spool(archive, spool) is None


def test_a_repository_that_cannot_be_read_starts_no_receiver_into_an_empty_spool(tmp_path: Path) -> None:
    """Starting at the server's position would leave a gap after the stored WAL: wait instead."""
    storage = LocalStorage(tmp_path / "repo")
    archive = WalArchive(Repository.init(storage, PASS, chunker=ChunkerParams(avg_size=64 * 1024)), "main")
    archive.push(seg(1), wal_segment(1, 1, fill=1))
    key = tmp_path / "repo" / "main" / "wal" / "00000001" / seg(1)
    good = key.read_bytes()
    key.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # damaged: fetching it fails
    receiver = FakeWalReceiver(tmp_path / "spool", [([2], None)])
    stop = threading.Event()
    thread = threading.Thread(
        target=run_wal_stream,
        args=(archive, receiver),
        kwargs={
            "slot": "s",
            "stop": stop,
            "poll_interval": 0.01,
            "restart_backoff": Backoff(first=0.01, cap=0.05),
        },
    )
    thread.start()
    try:
        stop.wait(0.5)  # several start attempts' worth: the assertion is on what never happened
    finally:
        stop.set()
        thread.join()
    assert receiver.starts == 0
    assert not (tmp_path / "spool" / seg(1)).exists()


def test_a_guard_that_fails_to_advance_does_not_stop_the_stream(archive: WalArchive, tmp_path: Path) -> None:
    receiver = FakeWalReceiver(tmp_path / "spool", [([1, 2, 3], None)])
    receiver.fail_confirm = True
    run_until(archive, receiver, lambda: archive.exists(seg(3)) and len(receiver.confirmed) >= 1)
    assert segments_in(archive) == [seg(1), seg(2), seg(3)]
    assert receiver.guard == 0
