"""Processes: is a pid alive, stop a child, whose child it is (stdlib, and structlog for one
warning; Linux ``/proc`` where it helps).

**Owned children.** Every long-running child (``pg_dump``, ``pg_basebackup``, ``pg_receivewal``,
``pg_restore``, ``psql``) is started by :func:`spawn`, which records it under the current
*owner*: the :data:`owner` context variable, ``"<cluster>:<job>"`` while the daemon's job
runner (or its WAL stream) runs, None elsewhere. :func:`terminate_children` stops one owner's
children, or every child of the process (``None``, the daemon's shutdown).

**Children die with the process.** :func:`spawn` starts a child through ``setpriv --pdeathsig
TERM`` (util-linux) when it is there: the kernel sends the child SIGTERM when the *thread* that
started it ends, so a ``kill -9`` of the daemon does not leave ``pg_receivewal`` running. No
``preexec_fn`` (unsafe in a threaded process). The thread that starts a child must be the one
that stops it (each caller in ``source/`` starts and stops its child in one ``with`` block).
A thread that ends in the instant between the fork and setpriv's ``prctl`` leaves that child
uncovered (it is reparented first); a daemon killed while its children run is covered.
Without a working ``setpriv`` the child starts as before, and ``child_pdeathsig_unavailable``
is logged once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

__all__ = [
    "owned_by",
    "owned_children",
    "owner",
    "process_alive",
    "run",
    "spawn",
    "stop_process",
    "terminate_children",
]

owner: ContextVar[str | None] = ContextVar("backupd_owner", default=None)
"""Who the children and connections started in this context belong to: ``"<cluster>:<job>"``
in the daemon's jobs, None elsewhere (``source/postgres.py`` tags its connections with it too)."""

_children: weakref.WeakKeyDictionary[subprocess.Popen[bytes], str | None] = weakref.WeakKeyDictionary()
_children_lock = threading.Lock()
_setpriv: list[str] | None = None
_setpriv_lock = threading.Lock()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this machine. A process of another user (``EPERM``) runs; a zombie,
    not reaped yet by its parent (a container's init may be slow), does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return not fields or fields[0] != "Z"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10, *, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to a running child, then kill it if it has not exited within ``timeout``
    seconds, and reap it. True when it had to be killed."""
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True
    return False


@contextlib.contextmanager
def owned_by(name: str | None) -> Iterator[None]:
    """Children and connections started in this block (on this thread) belong to ``name``."""
    token = owner.set(name)
    try:
        yield
    finally:
        owner.reset(token)


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kwargs)`` recorded under the current :data:`owner`, through
    ``setpriv --pdeathsig TERM`` when it works (the pid is the child's own: setpriv execs it).
    Raises ``OSError`` as ``Popen`` does when ``argv[0]`` cannot be run."""
    args = list(argv)
    prefix = _pdeathsig_prefix() if _runnable(args[0]) else []
    proc: subprocess.Popen[bytes] = subprocess.Popen([*prefix, *args], **kwargs)
    with _children_lock:
        _children[proc] = owner.get()
    return proc


def run(
    argv: Sequence[str], *, timeout: float | None = None, capture_output: bool = False, **kwargs: Any
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(argv, ...)`` (never ``check``) through :func:`spawn`: the child is owned
    and dies with this thread; killed on ``timeout`` (``TimeoutExpired``) or any exception."""
    if capture_output:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc: subprocess.Popen[Any] = spawn(argv, **kwargs)
    with proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def owned_children(name: str | None = None) -> list[tuple[int, str | None]]:
    """``(pid, owner)`` of the children :func:`spawn` started that still run: those of
    ``name``, or all of them (None)."""
    with _children_lock:
        entries = list(_children.items())
    return [
        (proc.pid, who)
        for proc, who in entries
        if (name is None or who == name) and proc.returncode is None and proc.poll() is None
    ]


def terminate_children(name: str | None = None) -> list[int]:
    """SIGTERM the children of owner ``name`` (those :func:`spawn` recorded), or with None every
    direct child of this process (``/proc``: also those of ``subprocess.run``); the pids
    signalled. A child that already ended is skipped (no signal to a reused pid)."""
    if name is None:
        return _terminate_all_children()
    with _children_lock:
        procs = [proc for proc, who in _children.items() if who == name]
    sent = []
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # polls again first: never a reaped pid
            sent.append(proc.pid)
    return sent


def _terminate_all_children() -> list[int]:
    me = str(os.getpid())
    sent = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == me:
            try:
                os.kill(int(entry.name), signal.SIGTERM)
                sent.append(int(entry.name))
            except ProcessLookupError:
                pass
    return sent


def _runnable(program: str) -> bool:
    """Whether ``program`` would start: else ``Popen`` without the wrapper raises the OSError
    the callers report (setpriv would exit 127 instead)."""
    if os.sep in program:
        return os.access(program, os.X_OK) and not os.path.isdir(program)
    return shutil.which(program) is not None


def _pdeathsig_prefix() -> list[str]:
    global _setpriv
    with _setpriv_lock:
        if _setpriv is None:
            _setpriv, reason = pdeathsig_wrapper(os.environ.get("PATH", os.defpath))
            if not _setpriv:
                import structlog  # lazily: procs stays importable without it (wal-push)

                structlog.get_logger(__name__).warning(
                    "child_pdeathsig_unavailable",
                    reason=reason,
                    effect="children of a killed daemon (pg_receivewal) outlive it",
                )
        return _setpriv


def pdeathsig_wrapper(path: str) -> tuple[list[str], str]:
    """The argv prefix that gives a child PR_SET_PDEATHSIG=SIGTERM (``setpriv --pdeathsig TERM
    --``, found on ``path`` and tried once), or ``[]`` and why not."""
    found = shutil.which("setpriv", path=path)
    if found is None:
        return [], "setpriv (util-linux) not found"
    prefix = [found, "--pdeathsig", "TERM", "--"]
    try:
        done = subprocess.run([*prefix, found, "--version"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"{found} could not be run: {exc}"
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()[-200:]
        return [], f"{found} --pdeathsig failed (util-linux 2.33+ needed): {err}"
    return prefix, ""
