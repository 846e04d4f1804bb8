"""A small HTTP reverse proxy that injects S3-style faults, for tests of the S3 driver and retries.

Put it in front of moto's server and point a client at :attr:`FaultProxy.url`. For a share
``error_rate`` of requests (seeded RNG, changeable at any time) it does not forward but answers
itself with one of ``faults``:

- ``"500"``: ``500 InternalError`` with an S3 XML error body;
- ``"503"``: ``503 SlowDown``;
- ``"drop"``: closes the connection without an answer;
- ``"drop_after"``: forwards the request, then closes the connection without relaying the
  answer (the server did the work, the client does not know).

:meth:`FaultProxy.fail_next` queues faults for the next requests, for deterministic tests.
Independently of ``error_rate``, ``tamper`` switches on deterministic lies, for every matching
request while set:

- ``"put_etag"``: replace the ETag of every PUT answer with a wrong one;
- ``"put_swallow"``: answer every PUT that has a body with ``200`` and no ETag, without forwarding
  (an acknowledged write that stored nothing);
- ``"head_length"``: report one byte less in the Content-Length of HEAD answers;
- ``"get_truncate"``: send half the body of GET answers (with the full Content-Length), then
  close the connection.

:meth:`FaultProxy.hold_puts` holds every PUT with a body (read whole) until :meth:`release`:
``held`` counts them, so a test knows a writer is mid-upload (and can kill it there).

Request bodies are read whole (by Content-Length, or by decoding ``Transfer-Encoding: chunked``)
and forwarded with a Content-Length; ``aws-chunked`` content encoding passes through unchanged.
Headers, including ``Host``, are forwarded as the client sent them, so signatures stay valid.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

FAULTS = ("500", "503", "drop")
_HOP_BY_HOP = {
    "connection",
    "content-length",
    "expect",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}
_BAD_ETAG = '"00000000000000000000000000000000"'


class FaultProxy:
    """A threaded reverse proxy on a free loopback port. Use as a context manager."""

    def __init__(
        self,
        upstream: str,
        *,
        error_rate: float = 0.0,
        seed: int = 0,
        faults: tuple[str, ...] = FAULTS,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.error_rate = error_rate
        self.faults = faults
        self.tamper: set[str] = set()
        self._forced: list[str] = []
        self.injected: collections.Counter[str] = collections.Counter()
        self.forwarded = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self._gate.set()
        self.held = 0
        handler = type("_BoundHandler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def injected_total(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    def reset(self) -> None:
        """Back to a transparent proxy: no faults, no tampering, counters at zero."""
        with self._lock:
            self.error_rate = 0.0
            self.tamper.clear()
            self._forced.clear()
            self.injected.clear()
            self.forwarded = 0

    def hold_puts(self) -> None:
        """From now on, hold each PUT with a body (after reading it) until :meth:`release`."""
        self._gate.clear()

    def release(self) -> None:
        """Forward the held PUTs, and hold no more."""
        self._gate.set()

    def _hold(self) -> None:
        if not self._gate.is_set():
            with self._lock:
                self.held += 1
            self._gate.wait(120)

    def fail_next(self, *faults: str) -> None:
        """Inject these faults, in order, into the next requests (before any random ones)."""
        with self._lock:
            self._forced.extend(faults)

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._gate.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _decide(self) -> str | None:
        with self._lock:
            if self._forced:
                fault = self._forced.pop(0)
                self.injected[fault] += 1
                return fault
            if self.faults and self._rng.random() < self.error_rate:
                fault = self._rng.choice(self.faults)
                self.injected[fault] += 1
                return fault
            return None

    def _count_forwarded(self) -> None:
        with self._lock:
            self.forwarded += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    proxy: FaultProxy

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and
        # delayed ACKs add ~40 ms to many answers.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        body = self._read_body()
        if self.command == "PUT" and body:
            self.proxy._hold()
        tamper = set(self.proxy.tamper)
        if "put_swallow" in tamper and self.command == "PUT" and body:
            self._send(200, "OK", [], b"", content_length=0)
            return
        fault = self.proxy._decide()
        if fault in ("drop", "drop_after"):
            if fault == "drop_after":
                self._forward(body)
                self.proxy._count_forwarded()
            self._drop()
            return
        if fault in _ERRORS:
            self._send_error(*_ERRORS[fault])
            return
        status, reason, headers, data = self._forward(body)
        self.proxy._count_forwarded()
        if "put_etag" in tamper and self.command == "PUT":
            headers = [(k, _BAD_ETAG if k.lower() == "etag" else v) for k, v in headers]
        length = len(data)
        if self.command == "HEAD":
            length = int(dict((k.lower(), v) for k, v in headers).get("content-length", 0))
            if "head_length" in tamper and status == 200:
                length -= 1
        if "get_truncate" in tamper and self.command == "GET" and status in (200, 206):
            self._send(status, reason, headers, data[: len(data) // 2], content_length=length)
            self._drop()
            return
        self._send(status, reason, headers, data, content_length=length)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.proxy.upstream_host, self.proxy.upstream_port, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        except OSError as exc:
            return 502, "Bad Gateway", [], f"upstream error: {exc}".encode()
        finally:
            conn.close()

    def _send(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        data: bytes,
        *,
        content_length: int,
    ) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(content_length))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    def _send_error(self, status: int, code: str, message: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>faultproxy</RequestId></Error>"
        ).encode()
        headers = [("Content-Type", "application/xml")]
        length = 0 if self.command == "HEAD" else len(body)
        self._send(status, code, headers, body, content_length=length)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
