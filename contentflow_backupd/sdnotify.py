"""systemd's notification protocol (``Type=notify``) in the standard library, no dependency.

The service manager passes an ``AF_UNIX`` datagram socket in ``$NOTIFY_SOCKET``: a file-system
path (``/run/systemd/notify``) or an abstract name written ``@name``. Each datagram holds
newline-separated assignments such as ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``
(see sd_notify(3)). Without ``$NOTIFY_SOCKET`` every call is a no-op, so the daemon runs the same
under systemd, in a container or in a terminal.

Contract: no method raises and **no method blocks**. Every send is non-blocking
(``MSG_DONTWAIT``): when the service manager is slow to read and the socket's queue is full, the
message is dropped with a debug log line (a stalled reader must never stall the daemon, nor its
shutdown). A failed send is logged once as a warning (later failures at debug level) and otherwise
ignored: losing a status line must never stop a backup. If systemd's watchdog is on and pings stop
arriving it restarts the service, which is the point of calling ``watchdog()`` only while the
scheduler is healthy. Never call it from a signal handler (it takes a lock and logs).

``watchdog_interval()`` is ``$WATCHDOG_USEC`` in seconds when the watchdog is meant for this
process (``$WATCHDOG_PID`` unset or equal to our pid), else None; ping at about half of it.
``watchdog()`` sends nothing when it is None.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping

import structlog

__all__ = ["SystemdNotifier"]

log = structlog.get_logger(__name__)


def _socket_address(value: str) -> str | None:
    """``/path`` as is, ``@name`` as the abstract address ``\\0name``; anything else None."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class SystemdNotifier:
    """Sends sd_notify messages to ``address`` (None: a no-op notifier).

    Build it with :meth:`from_env`. Safe to call from several threads.
    """

    def __init__(
        self, address: str | None, *, watchdog_usec: int | None = None, watchdog_pid: int | None = None
    ) -> None:
        self.address = address
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default: ``os.environ``).

        An unsupported ``NOTIFY_SOCKET`` (e.g. ``vsock:...``) is logged and gives a no-op notifier.
        """
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = _socket_address(raw) if raw else None
        if raw and address is None:
            log.warning(
                "systemd_notify_socket_unsupported",
                notify_socket=raw,
                hint="expected an absolute path or @abstract-name; notifications are off",
            )
        return cls(
            address,
            watchdog_usec=_positive_int(env.get("WATCHDOG_USEC")),
            watchdog_pid=_positive_int(env.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (a notify socket was given)."""
        return self.address is not None

    # -- messages --------------------------------------------------------------------------
    def ready(self) -> None:
        """``READY=1``: start-up is complete (catalog, job store, scheduler and listener up)."""
        self.notify("READY=1")

    def status(self, text: str) -> None:
        """``STATUS=<text>``: a one-line status shown by ``systemctl status`` (newlines become
        spaces, since a newline would start a new assignment)."""
        self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> None:
        """``WATCHDOG=1``: the keep-alive ping; send it only while the process is healthy. Sent
        only when the watchdog is on for this process (see ``watchdog_interval``)."""
        if self.watchdog_interval() is not None:
            self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """``STOPPING=1``: shutdown has begun."""
        self.notify("STOPPING=1")

    def notify(self, raw: str) -> None:
        """Send ``raw`` (one or more ``KEY=value`` lines) as one datagram; never raises."""
        if self.address is None:
            return
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(raw.encode(), socket.MSG_DONTWAIT, self.address)
            except BlockingIOError:
                # The reader is behind and the queue is full: drop this one, never wait.
                log.debug("systemd_notify_dropped", message=raw.split("\n", 1)[0][:80], reason="queue full")
            except OSError as exc:
                self._drop_socket()
                event = {"error": exc.strerror or str(exc), "message": raw.split("\n", 1)[0][:80]}
                if self._warned:
                    log.debug("systemd_notify_failed", **event)
                else:
                    self._warned = True
                    log.warning("systemd_notify_failed", **event, hint="later failures are logged at debug")

    def watchdog_interval(self) -> float | None:
        """systemd's watchdog timeout in seconds, or None when it is off or meant for another pid."""
        if self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 1_000_000

    def close(self) -> None:
        """Close the socket (a later message opens a new one)."""
        with self._lock:
            self._drop_socket()

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __repr__(self) -> str:
        return f"SystemdNotifier({self.address!r})"


def _positive_int(value: str | None) -> int | None:
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None
