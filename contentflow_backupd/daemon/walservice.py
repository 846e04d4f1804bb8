"""The daemon's WAL socket: it pushes WAL segments for ``wal push`` (``archive_command``), which
then costs a Python start and one round trip instead of a full start-up and a key derivation.

The protocol and the client are in ``contentflow_backupd/walsocket.py``. Here:

- The socket is made at start (mode 0660: the daemon's user and group) at ``BACKUPD_WAL__SOCKET`` (default
  ``<state_dir>/wal.sock``). A file left by a daemon that was killed (nothing accepts on it) is
  replaced; a socket another live daemon serves is left alone (this daemon then serves none, and
  says so in its log).
- Each request is served on its own thread, at most ``workers`` at once, so PostgreSQL's archiver
  is never queued behind another client.
- A peer that is neither this daemon's user, nor in its group, nor root is refused (``SO_PEERCRED``:
  the group's members read the shared configuration and secret anyway), as is a client
  whose configuration names another repository or cluster: two configurations on one host never
  mix. A refused client pushes by itself.
- The answer is sent only when the outcome is final: ``stored``/``duplicate`` after the object is
  durable (the same ``push_wal_bytes`` as the direct path); a refusal for good (a conflict, WAL of
  another cluster) as an ``error`` with the command's exit code. A storage error is answered
  ``refused``: the client then tries itself, as it would have without a daemon.
- Stop: the listener closes first and the socket file is removed; running pushes get until the
  caller's deadline to finish (a push cut short is never stored half: the client pushes again).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from contentflow_backupd.daemon.walahead import FileId, PushAhead, read_all
from contentflow_backupd.errors import BackupdError, UsageError
from contentflow_backupd.observability.metrics import ClusterMetrics
from contentflow_backupd.ops.wal.archive import push_wal_bytes
from contentflow_backupd.repository.walarchive import WalArchive, WalConflict, WalRefused
from contentflow_backupd.walsocket import IDENTITY_KEYS, MAX_REQUEST, VERSION, decode, encode

log = structlog.get_logger(__name__)

ACCEPT_POLL_S = 0.5
REQUEST_TIMEOUT_S = 30.0
"""How long a client may take to send its request line."""
FINAL_ERRORS = (WalConflict, WalRefused, UsageError)
"""Refusals for good: the direct path would refuse the same way, so the client exits with them."""
_PEERCRED = struct.Struct("3i")


class WalService:
    """Serves ``wal push`` on a Unix socket at ``path`` for ``archive``'s cluster."""

    def __init__(
        self,
        path: Path,
        archive: WalArchive,
        identity: Mapping[str, str | None],
        metrics: ClusterMetrics,
        *,
        workers: int = 4,
        ahead: int = 2,
    ) -> None:
        self.path = path
        self.archive = archive
        self.identity = {k: identity.get(k) for k in IDENTITY_KEYS}
        self.metrics = metrics
        self._slots = threading.BoundedSemaphore(workers)
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._thread: threading.Thread | None = None
        self._active: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self.ahead = PushAhead(lambda name, data: push_wal_bytes(archive, name, data, via="ahead"), ahead)

    # -- start and stop ----------------------------------------------------------------------
    def start(self) -> bool:
        """Bind and serve; False (logged) when this daemon cannot serve the socket."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self._clear_stale():
                return False
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(str(self.path))
                os.chmod(self.path, 0o660)
                listener.listen(64)
                listener.settimeout(ACCEPT_POLL_S)
            except BaseException:
                listener.close()
                raise
        except OSError as exc:
            log.warning("wal_socket_unavailable", path=str(self.path), error=str(exc))
            return False
        self._listener = listener
        self._inode = os.stat(self.path).st_ino
        self._thread = threading.Thread(target=self._accept_loop, name="wal-socket", daemon=True)
        self._thread.start()
        log.info("wal_socket_listening", path=str(self.path))
        return True

    def _clear_stale(self) -> bool:
        """Remove a socket file nothing accepts on; False when a live daemon serves it, or the
        path is something else than a socket (never removed)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return True
        if not stat.S_ISSOCK(st.st_mode):
            log.warning(
                "wal_socket_unavailable", path=str(self.path), error="the path exists and is not a socket"
            )
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink(missing_ok=True)
                log.info("wal_socket_stale_removed", path=str(self.path))
                return True
        log.warning(
            "wal_socket_in_use",
            path=str(self.path),
            hint="another daemon serves this socket: give each daemon its own state_dir or wal.socket",
        )
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, remove the socket file, and wait up to ``timeout`` for running pushes."""
        self._stop.set()
        self.ahead.stop()
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:  # not a successor's socket
                    self.path.unlink()
        if self._thread is not None:
            self._thread.join(ACCEPT_POLL_S * 4)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                active = list(self._active)
            if not active or time.monotonic() >= deadline:
                break
            active[0].join(max(0.0, min(0.2, deadline - time.monotonic())))
        if active:
            log.warning("wal_socket_pushes_cut_short", pushes=len(active))

    # -- serving -----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=ACCEPT_POLL_S):
                continue
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                self._slots.release()
                continue
            except OSError:  # closed by stop()
                self._slots.release()
                break
            thread = threading.Thread(target=self._serve, args=(conn,), name="wal-socket-push", daemon=True)
            with self._lock:
                self._active.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            with conn:
                conn.settimeout(REQUEST_TIMEOUT_S)
                try:
                    answer = self._answer(conn, fds)
                except Exception as exc:  # never let one request take the service down
                    log.exception("wal_socket_request_failed")
                    answer = {"refused": f"internal error: {type(exc).__name__}"}
                result = answer.get("status") or ("error" if "error" in answer else "refused")
                self.metrics.wal_socket_push(str(result))
                with contextlib.suppress(OSError):
                    conn.sendall(encode(answer))
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with self._lock:
                self._active.discard(threading.current_thread())
            self._slots.release()

    def _answer(self, conn: socket.socket, fds: list[int]) -> dict[str, Any]:
        pid, uid, _gid = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        data, got, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 1)
        fds.extend(got)
        while b"\n" not in data:
            more = conn.recv(4096)
            if not more or len(data) > MAX_REQUEST:
                return {"refused": "incomplete request"}
            data += more
        if not peer_allowed(uid, _gid):
            log.warning("wal_socket_peer_refused", pid=pid, uid=uid)
            return {"refused": f"uid {uid} is neither this daemon's user, nor in its group, nor root"}
        try:
            request = decode(data.split(b"\n", 1)[0])
        except ValueError:
            return {"refused": "not a JSON request"}
        if request.get("op") != "push" or request.get("v") != VERSION:
            return {"refused": f"unknown request (op {request.get('op')!r}, version {request.get('v')!r})"}
        theirs = request.get("identity")
        if not isinstance(theirs, dict) or {k: theirs.get(k) for k in IDENTITY_KEYS} != self.identity:
            differ = [
                k for k in IDENTITY_KEYS if not isinstance(theirs, dict) or theirs.get(k) != self.identity[k]
            ]
            return {"refused": f"this daemon serves another {' and '.join(differ)}"}
        name = request.get("name")
        if not isinstance(name, str) or not fds:
            return {"refused": "no file name or no file"}
        fd = fds[0]
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return {"error": f"{name} is not a regular file", "exit_code": UsageError.exit_code}
        path = request.get("path") if isinstance(request.get("path"), str) else None
        ahead = self.ahead.pushed(name, fd)
        if ahead is not None:  # this very file was pushed ahead: stored, durably
            self.ahead.saw(path)
            return {"status": ahead}
        claim = self.ahead.claim(name)
        try:
            self.ahead.saw(path)  # the next ready files go up while this one does
            payload = read_all(fd, st.st_size)
            try:
                status = push_wal_bytes(self.archive, name, payload, via="socket")
            except FINAL_ERRORS as exc:
                log.warning("wal_push_refused", wal=name, error=exc.message, via="socket")
                return {"error": str(exc), "exit_code": exc.exit_code}
            except BackupdError as exc:
                log.warning("wal_socket_push_failed", wal=name, error=exc.message)
                return {"refused": f"the daemon's push failed: {exc.message}"}
            self.ahead.remember(name, FileId.of(st), "duplicate")  # the next call for this file
            return {"status": status}
        finally:
            self.ahead.release(name, claim)


def peer_allowed(uid: int, gid: int) -> bool:
    """This daemon's user, root, or a member of this daemon's group (who can read the shared
    configuration and secret anyway: the socket gives it nothing it could not do itself)."""
    if uid in (os.geteuid(), 0):
        return True
    group = os.getegid()
    if gid == group:
        return True
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    return group in os.getgrouplist(name, gid)
