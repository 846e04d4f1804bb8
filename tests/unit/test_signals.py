"""contentflow_backupd.signals with real signals sent to this process."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

from contentflow_backupd.signals import Interrupted, SignalWatch, deferred, raise_interrupted

WAIT = 60  # seconds: the failure condition, not a speed claim


def test_the_watcher_acts_while_the_main_thread_is_blocked_in_a_system_call() -> None:
    """The main thread sits in recv() with no timeout, holding a lock the callback takes: the
    handler only records, the watcher thread runs the callback, which unblocks the main thread.
    A handler that took the lock (or waited for the main thread) would hang here."""
    reader, writer = socket.socketpair()
    lock = threading.Lock()
    seen: list[tuple[int, int]] = []

    def on_signal(signum: int, count: int) -> None:
        seen.append((signum, count))
        if count == 1:
            threading.Thread(target=lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            return
        writer.send(b"stop")  # wakes the blocked main thread
        with lock:  # held by the main thread until recv returns
            seen.append((0, 0))

    watch = SignalWatch(on_signal).install()
    try:
        reader.settimeout(WAIT)
        with lock:
            os.kill(os.getpid(), signal.SIGTERM)
            assert reader.recv(16) == b"stop"
        watch.uninstall()
        assert seen[:2] == [(signal.SIGTERM, 1), (signal.SIGINT, 2)]
        assert watch.received == [signal.SIGTERM, signal.SIGINT]
    finally:
        watch.uninstall()
        reader.close()
        writer.close()
    assert signal.getsignal(signal.SIGTERM) is not watch._record


def test_second_raises_stops_the_main_thread_after_recording() -> None:
    got = threading.Event()
    watch = SignalWatch(lambda _s, _c: got.set(), second_raises=True).install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert got.wait(WAIT)
        with pytest.raises(Interrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(WAIT)  # the handler raises here
        assert info.value.signum == signal.SIGTERM
        assert watch.received == [signal.SIGTERM, signal.SIGTERM]
    finally:
        watch.uninstall()


def test_deferred_only_records_and_puts_the_old_handler_back() -> None:
    old = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        with deferred() as received:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        assert received == [signal.SIGTERM, signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is raise_interrupted
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(WAIT)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second one ends the process
    finally:
        signal.signal(signal.SIGTERM, old)


def test_deferred_off_the_main_thread_holds_nothing_back() -> None:
    out: list[object] = []

    def body() -> None:
        with deferred() as received:
            out.append(received)

    t = threading.Thread(target=body)
    t.start()
    t.join(WAIT)
    assert out == [[]]


def test_a_reload_signal_is_recorded_apart_and_never_counts_as_a_stop() -> None:
    """SIGHUP calls on_reload on the watcher thread; with second_raises, two SIGHUPs and then a
    SIGTERM are one stop signal (count 1, no Interrupted): only a second SIGTERM raises."""
    reloads: list[tuple[int, str]] = []
    stops: list[tuple[int, int]] = []
    reloaded = threading.Semaphore(0)
    stopped = threading.Semaphore(0)

    def on_reload(signum: int) -> None:
        reloads.append((signum, threading.current_thread().name))
        reloaded.release()

    def on_signal(signum: int, count: int) -> None:
        stops.append((signum, count))
        stopped.release()

    watch = SignalWatch(on_signal, second_raises=True, on_reload=on_reload).install()
    try:
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGHUP)
            assert reloaded.acquire(timeout=WAIT)
        assert reloads == [(signal.SIGHUP, "signal-watch")] * 2
        assert watch.count == 0 and watch.received == []
        os.kill(os.getpid(), signal.SIGTERM)  # does not raise: the first stop signal
        assert stopped.acquire(timeout=WAIT)
        assert stops == [(signal.SIGTERM, 1)]
        assert watch.count == 1
        assert watch.reloads == [signal.SIGHUP, signal.SIGHUP]
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(WAIT)
    finally:
        watch.uninstall()


def test_a_reload_signal_during_shutdown_is_recorded_and_ignored() -> None:
    reloads: list[int] = []
    stops: list[int] = []
    stopped = threading.Semaphore(0)

    def on_signal(_signum: int, count: int) -> None:
        stops.append(count)
        stopped.release()

    watch = SignalWatch(on_signal, on_reload=reloads.append).install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopped.acquire(timeout=WAIT)
        os.kill(os.getpid(), signal.SIGHUP)  # no Interrupted, no on_reload
        os.kill(os.getpid(), signal.SIGINT)
        assert stopped.acquire(timeout=WAIT)  # the watcher read the SIGHUP before this SIGINT
        assert watch.reloads == [signal.SIGHUP]
        assert reloads == []
        assert stops == [1, 2]
    finally:
        watch.uninstall()


def test_without_on_reload_sighup_keeps_its_handler() -> None:
    def mine(_signum: int, _frame: object) -> None:
        return None

    old = signal.signal(signal.SIGHUP, mine)
    try:
        watch = SignalWatch(lambda _s, _c: None).install()
        assert signal.getsignal(signal.SIGHUP) is mine
        watch.uninstall()
        watch = SignalWatch(lambda _s, _c: None, on_reload=lambda _s: None).install()
        assert signal.getsignal(signal.SIGHUP) == watch._record_reload
        watch.uninstall()
        assert signal.getsignal(signal.SIGHUP) is mine
    finally:
        signal.signal(signal.SIGHUP, old)


def test_a_signal_cannot_both_stop_and_reload() -> None:
    with pytest.raises(ValueError, match="both stop and reload"):
        SignalWatch(lambda _s, _c: None, on_reload=lambda _s: None, reload_signals=(signal.SIGTERM,))
