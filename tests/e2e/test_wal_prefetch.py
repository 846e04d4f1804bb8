"""``restore_command = ... wal fetch %f %p`` with the prefetch helper (ops/wal/prefetch.py):
a real point-in-time recovery whose segments are served from the spool, a damaged spool file
that is never served, and a spool emptied when recovery ends.

To make "served from the spool" certain whatever the machine's speed, the helper is started
before the server and waits with the segments after the first one the recovery will ask for; the
server then finds them there (the helper is the one ``wal fetch`` would start by itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contentflow_backupd.walspool import LOCK, WalSpool
from tests.e2e.physical import PhysicalSetup, _chown, physical_setup
from tests.e2e.pitr_helpers import Restored, create_table, rows, switch_and_wait_archived
from tests.support.cli import command_path

pytestmark = pytest.mark.pg

SEGMENTS = 10
SEG = 16 * 1024 * 1024


@dataclass
class Archived:
    setup: PhysicalSetup
    first: str
    """The segment the recovery asks for first (the backup's start)."""
    max_id: int


def segment_name(timeline: int, lsn: str) -> str:
    hi, lo = (int(x, 16) for x in lsn.split("/"))
    number = ((hi << 32) + lo) // SEG
    return f"{timeline:08X}{number // 256:08X}{number % 256:08X}"


@pytest.fixture(scope="module")
def archived() -> Iterator[Archived]:
    with physical_setup() as setup:
        # The [wal] section is the file's last: a short idle time, so the helper ends in the test.
        setup.config.write_text(setup.config.read_text() + 'prefetch_idle = "15s"\n')
        pg = setup.cluster
        create_table(pg)
        backup = setup.cli.ok_json("backup", "--kind", "full")
        for i in range(SEGMENTS):
            pg.execute(
                f"insert into pitr_rows (body) select repeat('x', 900) from generate_series(1, {i + 20})"
            )
            switch_and_wait_archived(pg)
        max_id = rows(pg)[-1]
        pg.stop()
        yield Archived(setup, segment_name(int(backup["timeline"]), backup["start_lsn"]), max_id)


def spool_of(setup: PhysicalSetup) -> WalSpool:
    return WalSpool(str(setup.base / "state" / "wal-prefetch" / "main"))


def start_helper(setup: PhysicalSetup, first: str) -> subprocess.Popen[str]:
    spool = spool_of(setup)
    spool.create()
    _chown(setup.base / "state" / "wal-prefetch")
    _chown(Path(spool.path))
    spool.want(first)
    _chown(Path(spool.path) / "want")
    helper = subprocess.Popen(
        [command_path(), "--config", str(setup.config), "wal", "prefetch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("BACKUPD_")}
        | {"BACKUPD_LOG__FORMAT": "json"},
        **({"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}),
    )
    deadline = time.monotonic() + 120
    while len(spool.names()) < 3:
        assert helper.poll() is None, helper.communicate()
        assert time.monotonic() < deadline, "the helper did not fill the spool"
        time.sleep(0.05)
    return helper


def recover(archived: Archived, name: str) -> Restored:
    target = archived.setup.base / name
    res = archived.setup.cli.run("restore", "latest", "--pgdata", str(target), "--json")
    assert res.returncode == 0, res
    return Restored(target, archived.setup.cluster)


def fetched_directly(server: Restored) -> set[str]:
    """Segments the full ``wal fetch`` fetched (its ``wal_fetched`` log line, in the server log)."""
    out = set()
    for line in server.log().splitlines():
        if '"wal_fetched"' in line:
            with contextlib.suppress(ValueError, KeyError):
                out.add(json.loads(line[line.index("{") :])["wal"])
    return out


def restored(server: Restored) -> int:
    return server.log().count("restored log file")


def finish(helper: subprocess.Popen[str], setup: PhysicalSetup) -> str:
    _, err = helper.communicate(timeout=120)  # idle 15 s after the last request, then it ends
    assert helper.returncode == 0, err
    left = sorted(os.listdir(spool_of(setup).path))
    assert left == [LOCK], left  # emptied when recovery ended
    return err


def test_a_recovery_is_served_from_the_prefetch_spool(archived: Archived) -> None:
    setup = archived.setup
    server = recover(archived, "served")
    helper = start_helper(setup, archived.first)
    try:
        server.start().wait_promoted()
        assert rows(server) == list(range(1, archived.max_id + 1))
        assert restored(server) >= SEGMENTS
        direct = fetched_directly(server)
        assert archived.first in direct or restored(server) > len(direct)
        assert restored(server) > len(direct), "no segment came from the spool"
        # The end of recovery asks for files that are not archived (the next segment, a new
        # timeline's history): the helper answered, no full command ran for them.
        assert '"wal_not_archived"' not in server.log()
    finally:
        server.stop()
    err = finish(helper, setup)
    assert '"wal_prefetch_stopped"' in err
    assert '"wal_prefetch_answered"' in err and '"not_archived"' in err, err[-5000:]


def test_a_damaged_spool_file_is_never_served(archived: Archived) -> None:
    setup = archived.setup
    server = recover(archived, "damaged")
    helper = start_helper(setup, archived.first)
    spool = spool_of(setup)
    victim = sorted(spool.names())[0]
    path = Path(spool.path) / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, same inode
    os.utime(path, ns=(0, 0))  # (a write in the same clock tick as the helper's would keep its time)
    try:
        server.start().wait_promoted()
        assert rows(server) == list(range(1, archived.max_id + 1))
    finally:
        server.stop()
    err = finish(helper, setup)
    # Fetched again from the repository: by the full command, or by the helper on wal fetch's
    # request (it asks when the file it found was not the very one the helper wrote).
    again = victim in fetched_directly(server) or any(
        '"wal_prefetch_answered"' in line and f'"{victim}"' in line and '"fetched"' in line
        for line in err.splitlines()
    )
    assert again, server.log()[-20000:] + err[-20000:]


def test_wal_fetch_starts_the_helper_itself(archived: Archived) -> None:
    """No helper waits: the first ``wal fetch`` starts one; it ends after the recovery."""
    setup = archived.setup
    server = recover(archived, "self-started")
    try:
        server.start().wait_promoted()
        assert rows(server) == list(range(1, archived.max_id + 1))
    finally:
        server.stop()
    spool = Path(spool_of(setup).path)
    deadline = time.monotonic() + 120
    while sorted(os.listdir(spool)) != [LOCK] or _locked(spool / LOCK):
        assert time.monotonic() < deadline, os.listdir(spool)
        time.sleep(0.2)
    assert '"wal_prefetch_started"' in server.log()


def _locked(path: Path) -> bool:
    import fcntl

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_caller_that_captures_wal_fetch_output_is_not_held_by_the_helper(archived: Archived) -> None:
    """The helper outlives ``wal fetch``; it must not keep the caller's pipe open (a script's
    ``$(...)`` would wait for it). The helper here would idle an hour: the call returns long
    before, and the helper ends on SIGTERM, emptying its spool."""
    import signal

    setup = archived.setup
    dest = setup.base / "captured"
    _chown(setup.base)
    res = setup.cli.run(
        "wal", "fetch", archived.first, str(dest), env={"BACKUPD_WAL__PREFETCH_IDLE": "3600s"}, timeout=300
    )
    assert res.returncode == 0, res
    spool = Path(spool_of(setup).path)
    deadline = time.monotonic() + 120
    while not (_locked(spool / LOCK) and (spool / LOCK).read_text().strip()):
        assert time.monotonic() < deadline, "no helper started"
        time.sleep(0.05)
    pid = int((spool / LOCK).read_text().split()[0])  # "<pid> <token>"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while _locked(spool / LOCK):
        assert time.monotonic() < deadline, "the helper did not stop on SIGTERM"
        time.sleep(0.1)
    assert sorted(os.listdir(spool)) == [LOCK]
