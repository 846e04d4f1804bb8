"""``wal-stream`` against a real PostgreSQL: pg_receivewal on a slot, every completed segment
archived byte for byte, no gap after pg_receivewal is killed or the command is stopped, and no
``.partial`` file ever stored as a complete segment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.ops.wal.stream import upload_spool
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive, WalConflict
from contentflow_backupd.storage.local import LocalStorage
from contentflow_backupd.wal import classify
from tests.conftest import PASSPHRASE
from tests.support.cli import Cli
from tests.support.pg import PgCluster, running_cluster

pytestmark = pytest.mark.pg

SEGMENT_SIZE = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def wal_pg() -> Iterator[PgCluster]:
    """A cluster of its own: these tests switch WAL segments and hold replication slots."""
    with running_cluster(prefix="backupd-walstream-") as cluster:
        cluster.execute("create table if not exists t (id serial primary key, body text)")
        yield cluster


@dataclass
class Env:
    cli: Cli
    pg: PgCluster
    slot: str
    repo_dir: Path
    spool: Path
    archive: WalArchive


@pytest.fixture
def env(wal_pg: PgCluster, tmp_path: Path) -> Iterator[Env]:
    slot = "backupd_test_" + uuid.uuid4().hex[:8]
    cli = Cli(
        env={
            "BACKUPD_DATABASE_URL": wal_pg.url("postgres"),
            "BACKUPD_REPOSITORY": f"file://{tmp_path / 'repo'}",
            "BACKUPD_STATE_DIR": str(tmp_path / "state"),
            "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
            "BACKUPD_WAL__SLOT": slot,
        }
    )
    cli.run("init", check=True)
    wal_pg.execute("checkpoint")  # the new slot starts at the redo point: keep the first segment recent
    repo = Repository.open(
        LocalStorage(tmp_path / "repo"), KekSecret("passphrase", PASSPHRASE.encode(), "test")
    )
    yield Env(
        cli=cli,
        pg=wal_pg,
        slot=slot,
        repo_dir=tmp_path / "repo",
        spool=tmp_path / "state" / "wal-spool" / "main",
        archive=WalArchive(repo, "main"),
    )
    for _ in range(50):  # the walsender may need a moment to let go of the slot
        if not wal_pg.execute(
            "select 1 from pg_replication_slots where slot_name = %s and active", params=(slot,)
        ):
            break
        time.sleep(0.1)
    wal_pg.execute(
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
        params=(slot,),
    )


# -- helpers -------------------------------------------------------------------------------
def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Stream:
    """A running ``wal-stream`` with its stderr drained into ``lines``."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == name:
                out.append(doc)
        return out

    def receiver_pid(self) -> int | None:
        """The pg_receivewal child: a process whose parent is wal-stream."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == self.proc.pid and b"pg_receivewal" in cmdline and state != "Z":
                return int(entry.name)
        return None

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("wal-stream did not stop on SIGTERM:\n" + "".join(self.lines)) from None
        self._drain.join(timeout=5)
        return rc

    def log(self) -> str:
        return "".join(self.lines)


def start_stream(env: Env) -> Stream:
    stream = Stream(env.cli.popen("wal-stream"))
    wait_for("pg_receivewal to start", lambda: stream.receiver_pid() or stream.proc.poll() is not None)
    assert stream.proc.poll() is None, stream.log()
    return stream


def write_wal(pg: PgCluster, rows: int = 2000) -> str:
    """Insert rows; return the WAL file now being written."""
    pg.execute(
        "insert into t (body) select repeat(md5(g::text), 8) from generate_series(1, %s) g", params=(rows,)
    )
    return str(pg.execute("select pg_walfile_name(pg_current_wal_insert_lsn())")[0][0])


def switch_wal(pg: PgCluster) -> str:
    """Write some WAL, then end its segment; return the segment's name (complete from now on)."""
    name = write_wal(pg)
    pg.execute("select pg_switch_wal()")
    return name


def server_wal(pg: PgCluster, name: str) -> bytes | None:
    try:
        return (pg.datadir / "pg_wal" / name).read_bytes()
    except FileNotFoundError:
        return None  # removed or recycled since


def archived(env: Env) -> list[str]:
    return list(env.archive.names())


def wait_archived(env: Env, *names: str, timeout: float = 30) -> None:
    wait_for(f"{', '.join(names)} to be archived", lambda: set(names) <= set(archived(env)), timeout)


def assert_archive_sound(env: Env) -> list[str]:
    """No gap, nothing but complete segments and history files, and every segment equal to the
    server's own file. Returns the archived names."""
    names = archived(env)
    assert names
    for name in names:
        assert classify(name) in ("segment", "history"), f"{name} archived: not a complete WAL file"
    compared = 0
    for name in names:
        if classify(name) != "segment":
            continue
        theirs = server_wal(env.pg, name)
        ours = env.archive.fetch(name)
        assert len(ours) == SEGMENT_SIZE, name
        if theirs is None:
            continue
        assert ours == theirs, f"archived {name} differs from the server's pg_wal/{name}"
        compared += 1
    assert compared >= 1
    verify = env.cli.run("wal", "verify", "--json")
    assert verify.returncode == 0, verify
    assert verify.json()["status"] == "ok", verify
    return names


def wal_offset(pg: PgCluster, name: str) -> int:
    """How far into segment ``name`` WAL has been inserted."""
    return int(
        pg.execute("select pg_current_wal_insert_lsn() - %s::pg_lsn", params=(_start_lsn(name),))[0][0]
    )


def partial_has(env: Env, name: str, offset: int) -> bool:
    """Whether pg_receivewal has the first ``offset`` bytes of ``name`` in its .partial file."""
    try:
        with open(env.spool / f"{name}.partial", "rb") as f:
            ours = f.read(offset)
    except FileNotFoundError:
        return False
    theirs = server_wal(env.pg, name)
    return theirs is not None and 0 < offset <= len(theirs) and ours == theirs[:offset]


def _start_lsn(name: str) -> str:
    log_no, seg_no = int(name[8:16], 16), int(name[16:24], 16)
    start = (log_no << 32) + seg_no * SEGMENT_SIZE
    return f"{start >> 32:X}/{start & 0xFFFFFFFF:X}"


# -- tests ---------------------------------------------------------------------------------
def test_completed_segments_are_archived_byte_for_byte(env: Env) -> None:
    stream = start_stream(env)
    try:
        first = switch_wal(env.pg)
        second = switch_wal(env.pg)
        assert first != second
        wait_archived(env, first, second)
        # the slot is a guard nobody streams on, moved to the end of what is archived
        end = f"{_start_lsn(second)}"
        wait_for(
            "the guard slot to reach the end of the archived WAL",
            lambda: (
                env.pg.execute(
                    "select restart_lsn > %s::pg_lsn from pg_replication_slots where slot_name = %s",
                    params=(end, env.slot),
                )
                == [(True,)]
            ),
        )
        slot = env.pg.execute(
            "select slot_type, active from pg_replication_slots where slot_name = %s", params=(env.slot,)
        )
        assert slot == [("physical", False)]
        assert stat_mode(env.spool) == 0o700
        assert_archive_sound(env)
    finally:
        rc = stream.stop()
    assert rc == 0, stream.log()
    assert {e["wal"] for e in stream.events("wal_segment_archived")} >= {first, second}
    assert stream.events("replication_slot_created")


def test_kill_9_of_pg_receivewal_mid_segment_leaves_no_gap(env: Env) -> None:
    stream = start_stream(env)
    try:
        before = switch_wal(env.pg)
        wait_archived(env, before)
        victim = stream.receiver_pid()
        assert victim is not None
        current = write_wal(env.pg)
        offset = wal_offset(env.pg, current)
        wait_for(f"{current}.partial to hold the current WAL", lambda: partial_has(env, current, offset))
        os.kill(victim, signal.SIGKILL)
        # more WAL while pg_receivewal is down, then finish the segment it was writing
        assert switch_wal(env.pg) == current
        after = switch_wal(env.pg)
        wait_for(
            "pg_receivewal to be restarted",
            lambda: (pid := stream.receiver_pid()) is not None and pid != victim,
        )
        wait_archived(env, current, after)
        names = assert_archive_sound(env)
        assert {before, current, after} <= set(names)
        exited = stream.events("pg_receivewal_exited")
        assert exited and exited[0]["returncode"] == -signal.SIGKILL, stream.log()
        assert stream.events("pg_receivewal_exited")[0]["stderr"] is not None
    finally:
        rc = stream.stop()
    assert rc == 0, stream.log()


def test_sigterm_stops_cleanly_and_a_restart_resumes_without_gap(env: Env) -> None:
    stream = start_stream(env)
    done = switch_wal(env.pg)
    wait_archived(env, done)
    current = write_wal(env.pg)
    offset = wal_offset(env.pg, current)
    wait_for(f"{current}.partial to hold the current WAL", lambda: partial_has(env, current, offset))
    receiver = stream.receiver_pid()
    assert receiver is not None
    rc = stream.stop()  # its timeout is the failure condition, not a speed claim
    assert rc == 0, stream.log()
    assert not Path(f"/proc/{receiver}").exists(), "pg_receivewal outlived wal-stream"
    # archived segments are gone from the spool; the .partial stays for the next start
    assert sorted(os.listdir(env.spool)) == [f"{current}.partial"]
    assert all(classify(n) != "partial" for n in archived(env))
    assert current not in archived(env)
    assert stream.events("wal_stream_stopped")

    again = start_stream(env)
    try:
        assert switch_wal(env.pg) == current
        wait_archived(env, current)
        names = assert_archive_sound(env)
        assert {done, current} <= set(names)
    finally:
        rc = again.stop()
    assert rc == 0, again.log()


def test_the_password_never_reaches_pg_receivewal_argv(env: Env) -> None:
    password = env.pg.password
    stream = start_stream(env)
    try:
        pid = stream.receiver_pid()
        assert pid is not None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert any(b"pg_receivewal" in a for a in argv)
        assert b"--slot" not in argv  # the slot is a guard the stream does not move
        assert not any(password.encode() in a for a in argv), argv
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not any(password.encode() in v for v in environ)
        assert not any(v.startswith(b"BACKUPD_") for v in environ)
        passfile = next(v for v in environ if v.startswith(b"PGPASSFILE=")).split(b"=", 1)[1].decode()
        assert stat_mode(Path(passfile)) == 0o600
    finally:
        rc = stream.stop()
    assert rc == 0, stream.log()
    assert password not in stream.log()
    assert not Path(passfile).exists(), "the passfile outlived wal-stream"


def test_a_storage_failure_keeps_the_segment_and_is_retried(env: Env) -> None:
    blocker = env.repo_dir / "main" / "wal"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory: every WAL put fails")
    stream = start_stream(env)
    try:
        name = switch_wal(env.pg)
        failed = wait_for("an upload to fail", lambda: stream.events("wal_upload_failed"))
        assert failed[0]["wal"] is not None and failed[0]["retry_in"] >= 1
        assert (env.spool / name).exists(), "a segment that was not stored was removed"
        blocker.unlink()
        wait_archived(env, name)
        assert_archive_sound(env)
    finally:
        rc = stream.stop()
    assert rc == 0, stream.log()


def test_upload_spool_archives_history_files_and_never_a_partial(env: Env, tmp_path: Path) -> None:
    segs = [switch_wal(env.pg) for _ in range(3)]
    spool = tmp_path / "spool"
    spool.mkdir()
    for name in segs[:2]:
        data = server_wal(env.pg, name)
        assert data is not None
        (spool / name).write_bytes(data)
    history = "00000002.history"
    history_text = f"1\t{_start_lsn(segs[1])}\tno recovery target specified\n".encode()
    (spool / history).write_bytes(history_text)
    (spool / f"{segs[2]}.partial").write_bytes(b"\0" * 8192)
    (spool / f"{history}.tmp").write_text("being written")

    # a push that fails (here: a different file under the name) deletes nothing
    other = WalArchive(env.archive.repo, "other")
    first = server_wal(env.pg, segs[0])
    second = server_wal(env.pg, segs[1])
    assert first is not None and second is not None
    other.push(segs[0], second)
    before = sorted(os.listdir(spool))
    with pytest.raises(WalConflict):
        upload_spool(other, spool)
    assert sorted(os.listdir(spool)) == before

    assert upload_spool(env.archive, spool) == 3
    assert archived(env) == [*segs[:2], history]
    assert env.archive.fetch(history) == history_text
    assert sorted(os.listdir(spool)) == sorted([f"{segs[2]}.partial", f"{history}.tmp"])

    # the newest complete segment stays (marked) as pg_receivewal's resume point until a newer one
    (spool / f"{segs[2]}.partial").unlink()
    last = server_wal(env.pg, segs[2])
    assert last is not None
    (spool / segs[2]).write_bytes(last)
    assert upload_spool(env.archive, spool) == 1
    assert env.archive.fetch(segs[2]) == last
    assert upload_spool(env.archive, spool) == 0
    assert (spool / segs[2]).exists()
    (spool / f"{segs[2][:16]}{int(segs[2][16:], 16) + 1:08X}.partial").write_bytes(b"\0" * 8192)
    assert upload_spool(env.archive, spool) == 0
    assert not (spool / segs[2]).exists()
    assert [n for n in os.listdir(spool) if n.endswith(".archived")] == []
    assert_archive_sound(env)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
