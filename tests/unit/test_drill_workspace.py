"""Drill directories and their crash cleanup (real files, real processes), and the random
recovery target drawn from a WAL archive (the in-memory repository)."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contentflow_backupd.errors import UsageError
from contentflow_backupd.ops.drill.physical import random_lsn
from contentflow_backupd.ops.drill.workspace import (
    ABANDONED_NEW_S,
    DRILLS_DIR,
    MARKER,
    SCRATCH_PREFIX,
    Workspace,
    cleanup_stale_drills,
)
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.manifest import Manifest
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.source.drivers import PgDrivers
from contentflow_backupd.source.pgdata import Owner
from contentflow_backupd.source.scratch import check_reachable, stop_leftover
from contentflow_backupd.storage.memory import MemoryStorage
from contentflow_backupd.wal import Segment

PG = PgDrivers()  # no server is started here: stop_leftover finds none, or a plain process

SEG = 16 * 1024 * 1024


def test_workspace_is_created_with_its_marker_under_its_name(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, "20261125T040000Z-drill-abcdef", shared=False, scratch=PG.scratch)
    assert ws.path == tmp_path / DRILLS_DIR / "20261125T040000Z-drill-abcdef"
    marker = json.loads((ws.path / MARKER).read_text())
    assert marker["pid"] == os.getpid() and marker["database"] is None
    assert [p.name for p in (tmp_path / DRILLS_DIR).iterdir()] == [ws.path.name]
    ws.note(database="backupd_drill_1", bin_dir=Path("/usr/lib/postgresql/15/bin"))
    marker = json.loads((ws.path / MARKER).read_text())
    assert marker["database"] == "backupd_drill_1" and marker["bin_dir"] == "/usr/lib/postgresql/15/bin"
    ws.remove()
    assert not ws.path.exists()


def test_a_shared_workspace_keeps_its_files_outside_the_state_directory(tmp_path: Path) -> None:
    """When the scratch server runs as another OS user, its files go in a new private directory
    outside the state directory (0711: enterable, not listable); the state directory and its
    ``drills`` directory stay 0700, and the marker there names the scratch directory."""
    state, scratch = tmp_path / "state", tmp_path / "scratch"
    state.mkdir(mode=0o700)
    scratch.mkdir()
    ws = Workspace.create(
        state, "20261125T040000Z-expect-abcdef", shared=True, scratch=PG.scratch, scratch_dir=scratch
    )
    assert ws.path.parent == scratch and ws.path.name.startswith(f"{SCRATCH_PREFIX}{ws.marker['id']}-")
    assert stat.S_IMODE(ws.path.stat().st_mode) == 0o711
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / DRILLS_DIR).stat().st_mode) == 0o700
    home = state / DRILLS_DIR / "20261125T040000Z-expect-abcdef"
    assert json.loads((home / MARKER).read_text())["scratch"] == str(ws.path)
    assert not (ws.path / MARKER).exists()
    assert ws.pgdata == ws.path / "pgdata" and ws.run_dir == ws.path / "run"
    ws.remove()
    assert not ws.path.exists() and not home.exists()


def test_cleanup_removes_the_scratch_directory_of_a_dead_drill_and_nothing_else(tmp_path: Path) -> None:
    import socket

    state, scratch = tmp_path / "state", tmp_path / "scratch"
    scratch.mkdir()
    ws = Workspace.create(state, "dead", shared=True, scratch=PG.scratch, scratch_dir=scratch)
    (ws.path / "pgdata").mkdir()
    ws.note(pid=2**22 + 7)  # its process is gone
    precious = tmp_path / "precious"
    precious.mkdir()
    forged = _left(
        tmp_path / "state", "forged", pid=2**22 + 7, host=socket.gethostname(), scratch=str(precious)
    )
    linked = scratch / f"{SCRATCH_PREFIX}linked-x"
    linked.symlink_to(precious)
    symlinked = _left(
        tmp_path / "state", "linked", pid=2**22 + 7, host=socket.gethostname(), scratch=str(linked)
    )
    assert sorted(cleanup_stale_drills(state, scratch=PG.scratch, admin=PG.admin)) == [
        "dead",
        "forged",
        "linked",
    ]
    assert not ws.path.exists() and not (state / DRILLS_DIR / "dead").exists()
    assert not forged.exists() and not symlinked.exists()
    assert precious.exists() and linked.is_symlink()  # not a drill's scratch directory: left alone


def test_what_still_cannot_work_is_a_clear_error(tmp_path: Path) -> None:
    """A scratch root that does not exist, or that the server's user cannot enter: an error that
    names the directory and the setting that fixes it."""
    with pytest.raises(UsageError) as missing:
        Workspace.create(
            tmp_path / "state", "d1", shared=True, scratch=PG.scratch, scratch_dir=tmp_path / "nope"
        )
    assert str(tmp_path / "nope") in missing.value.message
    assert "BACKUPD_DRILL__SCRATCH_DIR" in (missing.value.hint or "")
    import shutil
    import tempfile

    open_parent = Path(tempfile.mkdtemp(prefix="backupd-reach-"))  # under /tmp: every parent enterable
    os.chmod(open_parent, 0o755)
    closed = open_parent / "closed"
    closed.mkdir(mode=0o700)
    os.chmod(closed, 0o700)
    someone_else = Owner(os.geteuid() + 4242, os.getegid() + 4242, "someone")
    try:
        with pytest.raises(UsageError) as unreachable:
            check_reachable(closed / "contentflow-backupd-d2-x", someone_else)
        check_reachable(open_parent / "contentflow-backupd-d3-x", someone_else)  # reachable: fine
    finally:
        shutil.rmtree(open_parent)
    assert f"someone, who cannot enter {closed} (mode 0700)" in unreachable.value.message
    assert "BACKUPD_DRILL__SCRATCH_DIR" in (unreachable.value.hint or "")


def _left(tmp_path: Path, name: str, **marker: object) -> Path:
    path = tmp_path / DRILLS_DIR / name
    (path / "pgdata").mkdir(parents=True)
    if marker:
        (path / MARKER).write_text(json.dumps(marker))
    return path


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _start_ticks(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def test_cleanup_removes_drills_whose_process_is_gone_and_keeps_live_ones(
    tmp_path: Path, other_process: subprocess.Popen[bytes]
) -> None:
    import socket

    host = socket.gethostname()
    gone = _left(tmp_path, "gone", pid=2**22 + 7, host=host)
    live = _left(
        tmp_path, "live", pid=other_process.pid, host=host, pid_start=_start_ticks(other_process.pid)
    )
    reused = _left(tmp_path, "reused", pid=other_process.pid, host=host, pid_start="1")
    no_marker = _left(tmp_path, "no-marker")
    mine = _left(tmp_path, "mine", pid=os.getpid(), host=host)  # an earlier drill of this process
    cleaned = cleanup_stale_drills(tmp_path, scratch=PG.scratch, admin=PG.admin)
    assert sorted(cleaned) == ["gone", "mine", "no-marker", "reused"]
    assert live.exists()
    assert not gone.exists() and not reused.exists() and not no_marker.exists() and not mine.exists()


def test_cleanup_keeps_a_scratch_database_it_cannot_drop_for_later(tmp_path: Path) -> None:
    import socket

    left = _left(tmp_path, "with-db", pid=2**22 + 7, host=socket.gethostname(), database="backupd_drill_x")
    other_host = _left(tmp_path, "other-host", pid=2**22 + 7, host="elsewhere.invalid")
    assert (
        cleanup_stale_drills(tmp_path, scratch=PG.scratch, admin=PG.admin) == []
    )  # no drill server given: the database stays
    assert left.exists()
    assert other_host.exists()  # a drill of another machine sharing the state directory


def test_cleanup_of_half_created_directories(tmp_path: Path) -> None:
    fresh = tmp_path / DRILLS_DIR / ".new-fresh"
    old = tmp_path / DRILLS_DIR / ".new-old"
    fresh.mkdir(parents=True)
    old.mkdir()
    past = time.time() - ABANDONED_NEW_S - 60
    os.utime(old, (past, past))
    cleanup_stale_drills(tmp_path, scratch=PG.scratch, admin=PG.admin)
    assert fresh.exists() and not old.exists()


def test_cleanup_without_drills_and_stop_leftover_without_server(tmp_path: Path) -> None:
    assert cleanup_stale_drills(tmp_path, scratch=PG.scratch, admin=PG.admin) == []
    (tmp_path / "pgdata").mkdir()
    assert stop_leftover(tmp_path / "pgdata", None) is False
    # A postmaster.pid naming a live process that does not serve the directory is left alone.
    (tmp_path / "pgdata" / "postmaster.pid").write_text(f"{os.getpid()}\n{tmp_path}\n")
    assert stop_leftover(tmp_path / "pgdata", None) is False


# -- the random target -----------------------------------------------------------------------
PASS = KekSecret("passphrase", b"drill target test", "test")


def _manifest(stop_lsn: str, wal_last: str) -> Manifest:
    now = datetime(2026, 11, 25, tzinfo=UTC)
    return Manifest(
        id="20261125T000000Z-full-000001", cluster="main", kind="full", mode="physical",
        generation="g", parent_id=None, database="postgres", started_at=now, finished_at=now,
        source_bytes=0, stored_bytes=0, chunks_total=0, chunks_new=0, streams=[],
        details={"wal_segment_size": SEG, "timeline": 1, "stop_lsn": stop_lsn, "wal_last": wal_last},
    )  # fmt: skip


def _archive(segments: list[tuple[int, int]], history: dict[int, str] | None = None) -> WalArchive:
    repo = Repository.init(MemoryStorage(), PASS, chunker=ChunkerParams(avg_size=64 * 1024))
    archive = WalArchive(repo, "main")
    for tli, segno in segments:
        name = Segment(tli, segno).name(SEG)
        repo.put_object(archive.key(name), b"wal")
    for tli, text in (history or {}).items():
        repo.put_object(archive.key(f"{tli:08X}.history"), text.encode())
    return archive


def test_random_target_needs_wal_after_the_backup() -> None:
    m = _manifest("0/2000100", Segment(1, 2).name(SEG))
    assert random_lsn(_archive([(1, 2)]), m, random.Random(1)) is None


@settings(max_examples=30)
@given(st.integers(min_value=0, max_value=2**32))
def test_random_target_lies_between_the_backup_stop_and_the_newest_segment(seed: int) -> None:
    m = _manifest("0/2000100", Segment(1, 2).name(SEG))
    archive = _archive([(1, 2), (1, 3), (1, 4), (1, 6)])  # 5 is missing: the chain ends at 4
    lsn = random_lsn(archive, m, random.Random(seed))
    assert lsn is not None
    assert 0x2000100 <= lsn < 4 * SEG


def test_random_target_follows_the_newest_timeline() -> None:
    m = _manifest("0/2000100", Segment(1, 2).name(SEG))
    # Timeline 2 branched at 0/4000000: segments from 4 on are read from timeline 2.
    archive = _archive([(1, 2), (1, 3), (2, 4), (2, 5), (2, 6)], {2: "1\t0/4000000\tno recovery target\n"})
    seen = {random_lsn(archive, m, random.Random(s)) for s in range(200)}
    assert all(v is not None and 0x2000100 <= v < 6 * SEG for v in seen)
    assert max(v for v in seen if v is not None) >= 4 * SEG  # reaches into timeline 2
