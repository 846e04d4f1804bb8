"""Owned children (``procs.spawn``): the registry of (pid, owner), stopping one owner's children,
and the parent-death signal that ends a child with the thread that started it.

Real processes (``sleep``), no mocks. No timing is asserted: the timeouts are the failure
condition of a child that does not end.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from contentflow_backupd import procs

SLEEP = shutil.which("sleep") or "/bin/sleep"
ENDS = 30.0  # seconds: a child signalled must have ended by then; not a speed claim


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children a test starts: killed and reaped afterwards, whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _sleeper(owner: str | None, started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    with procs.owned_by(owner):
        proc = procs.spawn([SLEEP, "600"], stdin=subprocess.DEVNULL)
    started.append(proc)
    return proc


def _wait_exec(proc: subprocess.Popen[bytes]) -> list[bytes]:
    """The child's command line once it runs ``sleep`` (not setpriv any more)."""
    cmdline: list[bytes] = []
    for _ in range(int(ENDS / 0.05)):
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        if cmdline[0] == SLEEP.encode():
            break
        time.sleep(0.05)
    return cmdline


def test_spawn_records_each_child_under_the_owner_of_its_context(
    children: list[subprocess.Popen[bytes]],
) -> None:
    a = _sleeper("main:full", children)
    b = _sleeper("main:verify", children)
    c = _sleeper(None, children)
    assert procs.owner.get() is None  # owned_by restores the outer owner
    assert (a.pid, "main:full") in procs.owned_children("main:full")
    assert [pid for pid, _ in procs.owned_children("main:verify")] == [b.pid]
    every = procs.owned_children(None)
    assert {(a.pid, "main:full"), (b.pid, "main:verify"), (c.pid, None)} <= set(every)


def test_terminate_children_of_one_owner_leaves_the_others_running(
    children: list[subprocess.Popen[bytes]],
) -> None:
    mine = [_sleeper("orders:full", children), _sleeper("orders:full", children)]
    other = _sleeper("orders:verify", children)
    unowned = _sleeper(None, children)

    sent = procs.terminate_children("orders:full")

    assert sorted(sent) == sorted(p.pid for p in mine)
    for proc in mine:
        assert proc.wait(ENDS) == -signal.SIGTERM
    assert other.poll() is None and unowned.poll() is None
    assert procs.owned_children("orders:full") == []  # ended children are no longer listed
    assert procs.terminate_children("orders:full") == []  # nothing left: no signal to a reused pid


def test_terminate_children_of_no_owner_stops_every_child_of_the_process(
    children: list[subprocess.Popen[bytes]],
) -> None:
    """The daemon's stop: every direct child, also one not started by spawn."""
    owned = _sleeper("main:full", children)
    plain = subprocess.Popen([SLEEP, "600"], stdin=subprocess.DEVNULL)
    children.append(plain)

    sent = procs.terminate_children(None)

    assert {owned.pid, plain.pid} <= set(sent)
    assert owned.wait(ENDS) == -signal.SIGTERM
    assert plain.wait(ENDS) == -signal.SIGTERM


def test_a_child_ends_when_the_thread_that_started_it_ends(
    children: list[subprocess.Popen[bytes]],
) -> None:
    """PR_SET_PDEATHSIG follows the thread that forked: a job thread that dies (or a daemon
    killed with -9) takes its children with it."""
    if not procs.pdeathsig_wrapper(os.environ.get("PATH", os.defpath))[0]:
        pytest.skip("setpriv --pdeathsig (util-linux 2.33+) is not on this machine")
    box: list[subprocess.Popen[bytes]] = []

    def job() -> None:
        box.append(_sleeper("main:wal-stream", children))
        _wait_exec(box[0])  # setpriv has set the signal once it has exec'd the program

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()

    assert box[0].wait(ENDS) == -signal.SIGTERM


def test_the_child_runs_its_own_program_under_its_own_pid(
    children: list[subprocess.Popen[bytes]],
) -> None:
    """setpriv execs the program: the pid the callers hold (and signal) is the program's."""
    proc = _sleeper(None, children)
    assert _wait_exec(proc)[:2] == [SLEEP.encode(), b"600"]


def test_an_unrunnable_program_raises_oserror_as_popen_does() -> None:
    with pytest.raises(OSError):
        procs.spawn(["/nonexistent/pg_dump", "--version"])


def test_run_returns_what_subprocess_run_returns() -> None:
    script = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    done = procs.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    with pytest.raises(subprocess.TimeoutExpired):
        procs.run([SLEEP, "600"], timeout=0.5)


def _script(directory: Path, body: str) -> None:
    path = directory / "setpriv"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_no_wrapper_without_a_setpriv_that_takes_pdeathsig(tmp_path: Path) -> None:
    """Missing, or too old (util-linux before 2.33 refuses the option): children start as
    before, and the reason is given."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert procs.pdeathsig_wrapper(str(empty)) == ([], "setpriv (util-linux) not found")

    old = tmp_path / "old"
    old.mkdir()
    _script(old, "echo \"setpriv: unrecognized option '--pdeathsig'\" >&2; exit 1")
    prefix, reason = procs.pdeathsig_wrapper(str(old))
    assert prefix == [] and "unrecognized option" in reason


def test_a_missing_setpriv_is_logged_once_and_children_still_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, children: list[subprocess.Popen[bytes]]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no setpriv there
    monkeypatch.setattr(procs, "_setpriv", None)  # the process's cached answer, found again
    with capture_logs() as logs:
        first = _sleeper("main:full", children)
        second = _sleeper("main:full", children)
    assert [e["event"] for e in logs] == ["child_pdeathsig_unavailable"]
    assert first.poll() is None and second.poll() is None
    assert Path(f"/proc/{first.pid}/cmdline").read_bytes().split(b"\0")[0] == SLEEP.encode()
