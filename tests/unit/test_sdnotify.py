"""SystemdNotifier against real AF_UNIX datagram sockets (a file-system path and an abstract name)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from contentflow_backupd.sdnotify import SystemdNotifier


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield str(path), sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"backupd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    yield "@" + name, sock
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


@pytest.mark.parametrize("kind", ["path_socket", "abstract_socket"])
def test_messages_reach_the_socket(kind: str, request: pytest.FixtureRequest) -> None:
    env_value, sock = request.getfixturevalue(kind)
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": env_value, "WATCHDOG_USEC": "30000000"})
    assert notifier.enabled
    try:
        notifier.ready()
        notifier.status("next: full at 02:00\nincremental at 06:00")
        notifier.watchdog()
        notifier.stopping()
        notifier.notify("EXTEND_TIMEOUT_USEC=5000000\nSTATUS=slow")
        assert [receive(sock) for _ in range(5)] == [
            "READY=1",
            "STATUS=next: full at 02:00 incremental at 06:00",
            "WATCHDOG=1",
            "STOPPING=1",
            "EXTEND_TIMEOUT_USEC=5000000\nSTATUS=slow",
        ]
    finally:
        notifier.close()


def test_from_os_environ(monkeypatch: pytest.MonkeyPatch, path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = SystemdNotifier.from_env()
    notifier.ready()
    assert receive(sock) == "READY=1"
    notifier.close()


def test_messages_from_many_threads_arrive_whole(path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path})
    threads = [threading.Thread(target=notifier.status, args=(f"thread {i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted(receive(sock) for _ in range(8))
    assert got == sorted(f"STATUS=thread {i}" for i in range(8))
    notifier.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    with capture_logs() as logs:
        notifier.ready()
        notifier.status("x")
        notifier.watchdog()
        notifier.stopping()
        notifier.close()
    assert logs == []
    assert notifier.watchdog_interval() is None


@pytest.mark.parametrize("value", ["vsock:2:1234", "relative/path", "@"])
def test_unsupported_socket_is_logged_and_ignored(value: str) -> None:
    with capture_logs() as logs:
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": value})
        notifier.ready()
    assert not notifier.enabled
    assert [entry["event"] for entry in logs] == ["systemd_notify_socket_unsupported"]


def test_send_errors_never_raise_and_are_logged_once(tmp_path: Path) -> None:
    notifier = SystemdNotifier.from_env(
        {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens"), "WATCHDOG_USEC": "30000000"}
    )
    with capture_logs() as logs:
        for _ in range(3):
            notifier.ready()
            notifier.watchdog()
    levels = [(entry["event"], entry["log_level"]) for entry in logs]
    assert levels[0] == ("systemd_notify_failed", "warning")
    assert levels[1:] == [("systemd_notify_failed", "debug")] * 5
    notifier.close()


def test_recovers_when_the_socket_appears_later(tmp_path: Path) -> None:
    path = tmp_path / "late"
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
    with capture_logs():
        notifier.ready()  # nobody listens yet: dropped
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        notifier.watchdog()
        assert receive(sock) == "WATCHDOG=1"
    finally:
        sock.close()
        notifier.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "{pid}"}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": "{pid}"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    pid = os.getpid()
    resolved = {k: v.format(pid=pid, other=pid + 1) for k, v in env.items()}
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@x", **resolved})
    assert notifier.watchdog_interval() == interval


@pytest.mark.parametrize("env", [{}, {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}])
def test_no_watchdog_ping_unless_the_watchdog_is_on_for_this_process(
    env: dict[str, str], path_socket: tuple[str, socket.socket]
) -> None:
    path, sock = path_socket
    resolved = {k: v.format(other=os.getpid() + 1) for k, v in env.items()}
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, **resolved})
    try:
        notifier.watchdog()
        notifier.status("after the ping")
        assert receive(sock) == "STATUS=after the ping"  # the ping was never sent
    finally:
        notifier.close()


def test_a_full_queue_drops_the_message_and_never_blocks(path_socket: tuple[str, socket.socket]) -> None:
    """A reader that stops reading (systemd busy): the sender's queue fills; every later message
    is dropped with a debug line instead of blocking the caller (the daemon's main loop, its
    shutdown). A blocking send would hang this test, which would then fail on its timeout."""
    path, sock = path_socket
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):  # fill the reader's queue until it refuses more
            for _ in range(1_000_000):
                filler.sendto(b"X", path)
        done = threading.Event()

        def send_many() -> None:
            for _ in range(50):
                notifier.watchdog()
                notifier.stopping()
            done.set()

        with capture_logs() as logs:
            sender = threading.Thread(target=send_many, daemon=True)
            sender.start()
            assert done.wait(60), "a notification blocked on the full queue"
        assert {(e["event"], e["log_level"]) for e in logs} == {("systemd_notify_dropped", "debug")}
        # the reader catches up: messages flow again on the same notifier
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.recv(4096)
        sock.settimeout(10)
        notifier.ready()
        assert receive(sock) == "READY=1"
    finally:
        filler.close()
        notifier.close()
