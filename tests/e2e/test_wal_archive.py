"""WAL archiving through archive_command = wal-push, and restore_command = wal-fetch."""

from __future__ import annotations

import os
import pwd
import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.storage.local import LocalStorage
from tests.e2e.physical import PASSPHRASE, PhysicalSetup, physical_setup
from tests.support.pg import running_cluster

pytestmark = pytest.mark.pg


def _archive(setup: PhysicalSetup) -> WalArchive:
    repo = Repository.open(LocalStorage(setup.repo), KekSecret("passphrase", PASSPHRASE.encode(), "t"))
    return WalArchive(repo, "main")


def _give(path: Path) -> Path:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def _switch(setup: PhysicalSetup) -> str:
    """Write a little WAL, close the segment, and return its name."""
    setup.cluster.execute("create table if not exists w(x int); insert into w values (1)")
    name = str(setup.cluster.execute("select pg_walfile_name(pg_current_wal_lsn())")[0][0])
    setup.cluster.execute("select pg_switch_wal()")
    return name


def _wait_archived(setup: PhysicalSetup, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not _archive(setup).exists(name):
        assert time.monotonic() < deadline, f"{name} was not archived"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def setup() -> Iterator[PhysicalSetup]:
    with physical_setup() as s:
        yield s


@pytest.fixture
def work(setup: PhysicalSetup) -> Path:
    """A scratch directory the postgres user (which runs the tool) can read and write."""
    path = setup.base / f"work-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return _give(path)


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return _give(path)


def _archived_segment(setup: PhysicalSetup) -> tuple[str, bytes]:
    name = _switch(setup)
    _wait_archived(setup, name)
    return name, (setup.cluster.datadir / "pg_wal" / name).read_bytes()


def test_push_again_with_identical_content_succeeds_and_stores_nothing(
    setup: PhysicalSetup, work: Path
) -> None:
    name, data = _archived_segment(setup)
    key = setup.repo / _archive(setup).key(name)
    before = key.read_bytes(), key.stat().st_mtime_ns
    copy = _put(work / name, data)
    res = setup.cli.run("wal-push", str(copy))
    assert res.returncode == 0, res
    assert (key.read_bytes(), key.stat().st_mtime_ns) == before


def test_push_of_different_content_under_an_archived_name_fails(setup: PhysicalSetup, work: Path) -> None:
    name, data = _archived_segment(setup)
    key = setup.repo / _archive(setup).key(name)
    before = key.read_bytes()
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    copy = _put(work / name, bytes(bad))
    res = setup.cli.run("wal-push", str(copy))
    assert res.returncode == 1, res
    assert "different" in res.stderr and name in res.stderr
    assert key.read_bytes() == before
    assert _archive(setup).fetch(name) == data


def test_history_files_are_protected_the_same_way(setup: PhysicalSetup, work: Path) -> None:
    hist = _put(work / "00000007.history", b"1\t0/3000000\tno recovery target specified\n")
    assert setup.cli.run("wal-push", str(hist)).returncode == 0
    assert setup.cli.run("wal-push", str(hist)).returncode == 0
    _put(hist, b"1\t0/4000000\tsomething else\n")
    res = setup.cli.run("wal-push", str(hist))
    assert res.returncode == 1 and "different" in res.stderr
    assert _archive(setup).fetch("00000007.history").startswith(b"1\t0/3000000")


def test_wal_from_another_cluster_is_refused(setup: PhysicalSetup, work: Path) -> None:
    _archived_segment(setup)
    with running_cluster() as other:
        other.execute("create table x(i int); insert into x values (1)")
        name = str(other.execute("select pg_walfile_name(pg_current_wal_lsn())")[0][0])
        other.execute("select pg_switch_wal()")
        data = (other.datadir / "pg_wal" / name).read_bytes()
    foreign_name = "0000000100000000000000F0"
    copy = _put(work / foreign_name, data)
    res = setup.cli.run("wal-push", str(copy))
    assert res.returncode == 1, res
    assert "refusing" in res.stderr and "system" in res.stderr
    assert not _archive(setup).exists(foreign_name)


def test_partial_segments_are_never_stored_as_complete(setup: PhysicalSetup, work: Path) -> None:
    _name, data = _archived_segment(setup)
    partial = _put(work / "0000000100000000000000E1.partial", data)
    assert setup.cli.run("wal-push", str(partial)).returncode == 0
    assert _archive(setup).exists("0000000100000000000000E1.partial")
    assert not _archive(setup).exists("0000000100000000000000E1")
    dest = work / "restored"
    res = setup.cli.run("wal-fetch", "0000000100000000000000E1", str(dest))
    assert res.returncode == 1 and not dest.exists()


def test_wal_fetch_found_missing_and_tampered(setup: PhysicalSetup, work: Path) -> None:
    name, data = _archived_segment(setup)
    dest = work / "RECOVERYXLOG"
    res = setup.cli.run("wal-fetch", name, str(dest))
    assert res.returncode == 0, res
    assert dest.read_bytes() == data
    assert [p.name for p in work.iterdir()] == ["RECOVERYXLOG"]

    missing = work / "missing"
    res = setup.cli.run("wal-fetch", "0000000100000000000000AB", str(missing))
    assert res.returncode == 1 and not missing.exists()

    key = setup.repo / _archive(setup).key(name)
    blob = bytearray(key.read_bytes())
    blob[100] ^= 0x01
    key.write_bytes(bytes(blob))
    tampered = work / "tampered"
    res = setup.cli.run("wal-fetch", name, str(tampered))
    assert res.returncode > 125, res
    assert "failed authentication" in res.stderr
    assert not tampered.exists()
    key.write_bytes(bytes(blob[:100]) + bytes([blob[100] ^ 0x01]) + bytes(blob[101:]))
    assert _archive(setup).fetch(name) == data


def test_wal_verify_names_a_gap(setup: PhysicalSetup) -> None:
    for _ in range(3):
        _archived_segment(setup)
    assert setup.cli.run("wal", "verify").returncode == 0
    names = [n for n in _archive(setup).names(1) if len(n) == 24]
    hole = names[-2]
    (setup.repo / _archive(setup).key(hole)).rename(setup.base / "hidden-segment")
    res = setup.cli.run("wal", "verify", "--json")
    assert res.returncode == 1
    assert res.json()["gaps"][0]["missing_from"] == hole
    (setup.base / "hidden-segment").rename(setup.repo / _archive(setup).key(hole))


@pytest.mark.timeout(2400)  # each push can take seconds on a loaded machine; the trials stop early below
def test_kill_9_of_wal_push_never_loses_a_done_segment(setup: PhysicalSetup, work: Path) -> None:
    """25 trials of PostgreSQL's archiver contract: run wal-push on a segment, kill -9 it at a
    random moment, and retry until it exits 0 (as the archiver does; a killed archive_command
    makes the archiver restart and retry). A segment is "done" only after an exit 0; every done
    segment must then be in the archive with its exact bytes, and no kill may leave an object
    that blocks or corrupts a later push.

    PostgreSQL itself is not the one retrying here: a real archiver restarts up to 60 s after
    its archive_command is killed, which would make the suite slow."""
    _name, data = _archived_segment(setup)
    kills, done, leftovers = kill_9_trials(setup, data, work, seed=7, trials=25, log=1)
    print(f"\nKILL-9: {kills} kills over {done} segments; {leftovers} temp files left")
    assert kills >= 10
    assert not [n for n in _archive(setup).names(1) if n.startswith(".tmp")]


def kill_9_trials(
    setup: PhysicalSetup, data: bytes, work: Path, *, seed: int, trials: int, log: int, window: float = 1.2
) -> tuple[int, int, int]:
    """Up to ``trials`` segments (variants of ``data``, named ``00000001<log>000000NN``, ``log``
    in 8 hex digits), each pushed with ``wal-push`` killed at a random moment and retried until
    it exits 0, as the archiver does; stops early once there are 12 kills over 10 done segments.
    Every done segment must then be archived with its exact bytes. Returns (kills, done
    segments, temp files left).

    Whatever the machine's speed: the kill moment is drawn from a window scaled by how long one
    whole push takes here (measured first; ``window`` times it), and the window grows with every
    retry of a segment, so each segment is eventually pushed, however loaded the machine is."""
    rng = random.Random(seed)
    archive = _archive(setup)
    probe = bytearray(data)
    probe[-100] ^= 0x5A  # a segment of its own, outside the trials
    probe_path = _put(work / f"00000001{log:08X}00000080", bytes(probe))
    started = time.monotonic()
    setup.cli.run("wal-push", str(probe_path), check=True)
    whole = time.monotonic() - started  # not asserted: it scales the kill window below
    done: dict[str, bytes] = {}
    kills = 0
    for trial in range(trials):
        seg = bytearray(data)
        seg[-1 - trial] ^= 0x5A  # a different segment each trial (same header: same cluster)
        name = f"00000001{log:08X}000000{trial:02X}"
        path = _put(work / name, bytes(seg))
        attempt = 0
        while True:
            proc = setup.cli.popen("wal-push", str(path))
            time.sleep(rng.random() * window * whole * 1.5**attempt)
            attempt += 1
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.communicate()
            if proc.returncode == 0:
                done[name] = bytes(seg)
                break
        if kills >= 12 and len(done) >= 10:
            break  # enough evidence; on a loaded machine the remaining trials would only add minutes
    for name, expected in done.items():
        assert archive.fetch(name) == expected, name
    return kills, len(done), len(list(setup.repo.rglob(".tmp-*")))


def test_backup_whose_wal_never_arrives_fails() -> None:
    with physical_setup(extra_conf={"archive_command": "'false'"}) as s:
        s.cluster.execute("create table t(i int); insert into t values (1)")
        res = s.cli.run("backup", "--kind", "full", "--json", env={"BACKUPD_WAL__ARCHIVE_TIMEOUT": "5"})
        assert res.returncode == 1, res
        assert "not archived" in res.stderr
        assert s.cli.run("list", "--json", check=True).json() == []
        attempts = s.cli.run("list", "--all", "--json", check=True).json()
        assert [a["status"] for a in attempts] == ["failed"]
        assert not list((s.repo / "main").glob("backups/*"))


def test_waking_the_archive_wait_never_waits_for_a_synchronous_standby() -> None:
    # On PostgreSQL 15 and older the backup's watchdog commits while the server waits for the
    # archive (to wake that wait). With a synchronous standby named but absent, a commit that
    # waited for it would hold the watchdog (and its archive timeout) until cancelled: the
    # watchdog's commits never wait for a standby.
    with physical_setup(extra_conf={"synchronous_standby_names": "'nobody'"}) as s:
        push = s.cluster.execute("show archive_command")[0][0]
        assert "'" not in push
        s.cluster.execute(f"alter system set archive_command = 'sleep 1 && {push}'")  # a wait to wake
        s.cluster.execute("select pg_reload_conf()")
        backup = s.cli.run("backup", "--kind", "full", "--json", check=True).json()
        assert backup["mode"] == "physical" and backup["stop_lsn"]
        stuck = s.cluster.execute("select count(*) from pg_stat_activity where wait_event = 'SyncRep'")
        assert stuck[0][0] == 0
        # a commit that waited for the standby ends only when cancelled (statement_timeout), and says so
        assert "synchronous replication" not in s.cluster.logfile.read_text()
        assert [b["id"] for b in s.cli.run("list", "--json", check=True).json()] == [backup["id"]]


def test_verify_of_a_physical_backup_checks_its_consistency_wal(setup: PhysicalSetup) -> None:
    backup = setup.cli.run("backup", "--kind", "full", "--json", check=True).json()
    assert backup["mode"] == "physical" and backup["start_lsn"] and backup["stop_lsn"]
    setup.cli.run("verify", backup["id"], check=True)
    first = (
        Repository.open(LocalStorage(setup.repo), KekSecret("passphrase", PASSPHRASE.encode(), "t"))
        .read_manifest("main", backup["id"])
        .details["wal_first"]
    )
    key = setup.repo / _archive(setup).key(first)
    key.rename(setup.base / "moved-wal")
    for args in (["verify", backup["id"]], ["verify", "--quick", backup["id"]]):
        res = setup.cli.run(*args, "--json")
        assert res.returncode == 1, res
        assert [f["key"] for f in res.json()["faults"]] == [_archive(setup).key(first)]
    (setup.base / "moved-wal").rename(key)
    setup.cli.run("verify", "--quick", backup["id"], check=True)


def test_a_cluster_with_tablespaces_is_refused_with_a_clear_message(setup: PhysicalSetup, work: Path) -> None:
    location = work / "tblspc"
    location.mkdir()
    _give(location)
    setup.cluster.execute(f"create tablespace extra location '{location}'")
    try:
        res = setup.cli.run("backup", "--kind", "full", "--json")
        assert res.returncode == 2, res
        assert "tablespaces (extra)" in res.stderr and "--mode logical" in res.stderr
        assert res.stdout == ""
    finally:
        setup.cluster.execute("drop tablespace extra")
