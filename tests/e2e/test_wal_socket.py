"""``archive_command = ... wal push %p`` through the running daemon's WAL socket, with PostgreSQL's
own archiver, a real daemon (``contentflow-backupd run``) and kill -9 of either side.

The daemon and the archiver run as ``postgres`` (as in production: the socket is 0600, so they must
be the same user); the test of a daemon killed mid-upload runs as the test's user, on S3 (moto
behind a proxy that holds the upload, so that the kill lands inside it, whatever the speed).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.physical import PhysicalSetup, physical_setup
from tests.e2e.test_wal_archive import _archive, _give, _put, _wait_archived, kill_9_trials
from tests.support.cli import Cli, command_path
from tests.support.daemon import Daemon, daemon_env
from tests.support.faultproxy import FaultProxy
from tests.support.moto_server import aws_test_env, create_bucket, delete_bucket, s3_client
from tests.support.pg import PgCluster
from tests.unit.test_lean_imports import wal_segment

pytestmark = pytest.mark.pg

SCHEDULES_OFF = {
    f"BACKUPD_SCHEDULE__{job}": "off"
    for job in ("FULL", "INCREMENTAL", "WAL", "RETENTION", "VERIFY", "RESTORE_TEST")
}


@pytest.fixture(scope="module")
def setup() -> Iterator[PhysicalSetup]:
    with physical_setup() as s:
        yield s


def start_daemon(setup: PhysicalSetup) -> Daemon:
    env = {"BACKUPD_CONFIG": str(setup.config), "BACKUPD_SHUTDOWN_GRACE": "5s", **SCHEDULES_OFF}
    daemon = Daemon(env, user="postgres").start()
    daemon.wait_for("the WAL socket", lambda: daemon.events("wal_socket_listening"), timeout=120)
    return daemon


@pytest.fixture
def daemon(setup: PhysicalSetup) -> Iterator[Daemon]:
    d = start_daemon(setup)
    try:
        yield d
    finally:
        d.close()


def _switch(setup: PhysicalSetup) -> str:
    """Write a little WAL, close the segment, and return the name of the segment it closed."""
    setup.cluster.execute("create table if not exists w(x int); insert into w values (1)")
    return str(setup.cluster.execute("select pg_walfile_name(pg_switch_wal())")[0][0])


def pushed_via(daemon: Daemon, name: str) -> list[str]:
    return [e.get("via", "") for e in daemon.events("wal_pushed") if e.get("wal") == name]


def test_the_archiver_hands_segments_to_the_daemon(setup: PhysicalSetup, daemon: Daemon) -> None:
    name = _switch(setup)
    _wait_archived(setup, name)
    data = (setup.cluster.datadir / "pg_wal" / name).read_bytes()
    daemon.wait_for("the daemon's log line", lambda: pushed_via(daemon, name))
    assert pushed_via(daemon, name) == ["socket"]
    assert _archive(setup).fetch(name) == data
    stored = daemon.metric("backupd_wal_socket_pushes_total", result="stored")
    assert stored is not None and stored >= 1
    # The same rules as the direct path, answered by the daemon.
    work = setup.base / f"work-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    _give(work)
    same = _put(work / name, data)
    res = setup.cli.run("wal", "push", "--json", str(same))
    assert res.returncode == 0 and res.json() == {"file": name, "status": "duplicate"}, res
    changed = bytearray(data)
    changed[-1] ^= 0x5A
    other = work / "other"
    other.mkdir()
    _give(other)
    res = setup.cli.run("wal", "push", str(_put(other / name, bytes(changed))))
    assert res.returncode == 1 and f"a different {name} is already archived" in res.stderr, res
    assert "wal_socket_fallback" not in res.stderr  # the daemon answered, for good
    assert _archive(setup).fetch(name) == data
    foreign = bytearray(data)
    foreign[24:32] = (12345).to_bytes(8, "little")  # another system identifier (long page header)
    res = setup.cli.run("wal", "push", str(_put(other / "000000010000000100000001", bytes(foreign))))
    assert res.returncode != 0 and "refusing to mix them" in res.stderr, res


def test_a_daemon_killed_leaves_a_stale_socket_that_the_archiver_and_the_next_daemon_get_past(
    setup: PhysicalSetup,
) -> None:
    first = start_daemon(setup)
    socket_file = setup.base / "state" / "wal.sock"
    try:
        assert socket_file.exists()
        assert first.proc is not None
        first.proc.kill()
        first.wait()
    finally:
        first.close()
    assert socket_file.exists()  # kill -9: nobody removed it
    name = _switch(setup)  # the archiver's push finds nobody there and pushes itself
    _wait_archived(setup, name)
    assert _archive(setup).fetch(name) == (setup.cluster.datadir / "pg_wal" / name).read_bytes()
    second = start_daemon(setup)
    try:
        assert second.events("wal_socket_stale_removed")
        name = _switch(setup)
        _wait_archived(setup, name)
        second.wait_for("the daemon's log line", lambda: pushed_via(second, name))
        assert pushed_via(second, name) == ["socket"]
    finally:
        assert second.stop() == 0
        second.close()
    assert not socket_file.exists()  # a clean stop removes it


@pytest.mark.timeout(1200)
def test_kill_9_of_wal_push_through_the_daemon_never_loses_a_done_segment(
    setup: PhysicalSetup, daemon: Daemon
) -> None:
    """The kill-9 trials of test_wal_archive, with the daemon up: each push goes through the
    socket; the client is killed at a random moment and retried until it exits 0. Every done
    segment must then be archived with its exact bytes."""
    name = _switch(setup)
    _wait_archived(setup, name)
    data = (setup.cluster.datadir / "pg_wal" / name).read_bytes()
    work = setup.base / f"kill-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    _give(work)
    kills, done, _ = kill_9_trials(setup, data, work, seed=11, trials=48, log=2, window=0.8)
    print(f"\nKILL-9 through the daemon: {kills} kills over {done} segments")
    assert kills >= 6
    assert [e for e in daemon.events("wal_socket_request_failed")] == []


def test_a_daemon_killed_mid_upload_makes_the_client_push_by_itself(
    tmp_path: Path, pg: PgCluster, pg_db: str, moto_s3: str
) -> None:
    """The daemon's upload is held by the proxy in front of S3, the daemon is killed there, then
    the upload is let go: the client gets no answer, pushes the segment itself, and exits 0 only
    once it is stored (whole: either writer's copy, never a part)."""
    client = s3_client(moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = create_bucket(client)
    with FaultProxy(moto_s3) as proxy:
        env = daemon_env(tmp_path, pg, pg_db, BACKUPD_SHUTDOWN_GRACE="5s")
        env.update(aws_test_env())
        env.update(
            {
                "BACKUPD_REPOSITORY": f"s3://{bucket}/wal-socket",
                "BACKUPD_S3__ENDPOINT_URL": proxy.url,
                "BACKUPD_S3__REGION": "us-east-1",
                "BACKUPD_S3__FORCE_PATH_STYLE": "true",
            }
        )
        cli = Cli(env=env)
        cli.run("init", check=True)
        segment = wal_segment(tmp_path / "000000010000000000000001")
        daemon = Daemon(env).start()
        try:
            daemon.wait_for("the WAL socket", lambda: daemon.events("wal_socket_listening"), timeout=120)
            proxy.hold_puts()
            push = subprocess.Popen(
                [command_path(), "wal", "push", "--json", str(segment)],
                env=cli.full_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + 120
            while proxy.held == 0:
                assert time.monotonic() < deadline, "the daemon's upload never reached S3"
                assert push.poll() is None, push.communicate()
                time.sleep(0.05)
            assert daemon.proc is not None
            daemon.proc.kill()  # mid-upload: its PUT is held by the proxy
            daemon.wait()
            proxy.release()
            out, err = push.communicate(timeout=300)
        finally:
            proxy.release()
            daemon.close()
        assert push.returncode == 0, err
        assert json.loads(out)["status"] in ("stored", "duplicate")
        assert "wal_socket_fallback" in err and "gave no answer" in err, err
        assert not [e for e in daemon.events("wal_pushed") if e.get("wal") == segment.name]
        fetched = tmp_path / "fetched"
        res = cli.run("wal", "fetch", segment.name, str(fetched))
        assert res.returncode == 0, res
        assert fetched.read_bytes() == segment.read_bytes()
    delete_bucket(client, bucket)


def test_the_daemon_pushes_a_backlog_ahead_of_the_archiver(setup: PhysicalSetup, daemon: Daemon) -> None:
    """A backlog of ready segments (archiving paused, then resumed): the archiver's first call
    starts pushes of the next ready segments; its calls for those are answered from the daemon's
    memory (no second push), and every segment is archived with its exact bytes."""
    setup.cluster.execute("alter system set archive_command = ''")  # paused: WAL accumulates
    setup.cluster.execute("select pg_reload_conf()")
    names = [_switch(setup) for _ in range(6)]
    ready = setup.cluster.datadir / "pg_wal" / "archive_status"
    assert all((ready / f"{n}.ready").exists() for n in names)
    data = {n: (setup.cluster.datadir / "pg_wal" / n).read_bytes() for n in names}
    setup.cluster.execute("alter system reset archive_command")
    setup.cluster.execute("select pg_reload_conf()")
    for name in names:
        _wait_archived(setup, name, timeout=120)
    archive = _archive(setup)
    assert all(archive.fetch(n) == data[n] for n in names)
    daemon.wait_for("the log lines", lambda: all(pushed_via(daemon, n) for n in names))
    ahead = [n for n in names if pushed_via(daemon, n) == ["ahead"]]
    assert ahead, {n: pushed_via(daemon, n) for n in names}  # answered without a second push
    assert all(pushed_via(daemon, n) in (["ahead"], ["socket"]) for n in names)  # each pushed once
