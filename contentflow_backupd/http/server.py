"""One HTTP port for Prometheus and for probes (stdlib ``ThreadingHTTPServer`` on a daemon thread).

Endpoints (GET and HEAD; other methods get 501 from the stdlib, unknown paths 404):

- ``/metrics``: 200, the Prometheus text exposition of :class:`Metrics`.
- ``/livez``: 200 ``ok`` while ``probes.live()``, else 503. Must not depend on the database or
  storage: a restart would not fix them.
- ``/readyz``: 200 ``ready`` while ``probes.ready()``, else 503 (starting, catalog unreachable,
  shutting down).
- ``/healthz``: the JSON of ``probes.health()`` (``ops/health/fleet.py: FleetHealth``: ``ok``,
  ``status``, ``checked_at``, ``checks`` and ``clusters``), 200 when it is ok, else 503.
  ``/healthz?cluster=NAME``: one cluster's (``ClusterHealth``), 404 with
  ``{"ok": false, "error": ..., "clusters": [...]}`` naming the clusters served when ``NAME`` is
  not one of them.

A probe that raises gives 503 with the error (JSON ``{"ok": false, "error": ...}`` on
``/healthz``) and is logged; the server keeps serving. Query strings are ignored but for
``cluster`` on ``/healthz``. Each request is
served on its own thread with a socket timeout, so a slow client holds no other request up.
Access logs go to structlog at debug level.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import structlog

from contentflow_backupd.errors import BackupdError, ConfigError
from contentflow_backupd.observability.logging import redact
from contentflow_backupd.observability.metrics import Metrics

log = structlog.get_logger(__name__)

REQUEST_TIMEOUT = 10.0
"""Seconds a client may take to send its request."""


class HealthDoc(Protocol):
    """A health report as ``/healthz`` serves it."""

    @property
    def ok(self) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...


class Probes(Protocol):
    """What the endpoints ask. Called on request threads: implementations must be thread-safe
    and quick (``health`` may read the catalog). ``health(None)`` is the whole daemon's,
    ``health(name)`` one cluster's, for a name ``cluster_names()`` lists."""

    def live(self) -> bool: ...

    def ready(self) -> bool: ...

    def cluster_names(self) -> list[str]: ...

    def health(self, cluster: str | None = None) -> HealthDoc: ...


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); ``ConfigError`` naming
    ``BACKUPD_HTTP__LISTEN`` otherwise. Port 0 picks a free port."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"BACKUPD_HTTP__LISTEN: {listen!r} is not host:port",
            hint="e.g. 127.0.0.1:9847, 0.0.0.0:9847 or [::1]:9847; 'off' disables the listener",
        )
    return host, int(port)


def _error_text(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, BackupdError) else f"{type(exc).__name__}: {exc}"
    return str(redact(None, "", {"e": text})["e"])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], family: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = family
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-response is not worth a traceback on stderr.
        log.debug("http_request_failed", client=str(client_address[0]) if client_address else None)


class HttpServer:
    """The listener. ``start()`` binds and serves on a daemon thread; ``stop()`` is idempotent."""

    def __init__(self, listen: str, metrics: Metrics, probes: Probes) -> None:
        self.listen = listen
        self.metrics = metrics
        self.probes = probes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the chosen one when ``listen`` ends in ``:0``)."""
        if self._server is None:
            raise RuntimeError("the HTTP server is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and start serving. ``ConfigError`` when the address is invalid or cannot be bound
        (in use, not an address of this host, a privileged port)."""
        if self._server is not None:
            return
        host, port = parse_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            server = _Server((host, port), family, _handler_class(self.metrics, self.probes))
        except OSError as exc:
            raise ConfigError(
                f"BACKUPD_HTTP__LISTEN: cannot listen on {self.listen}: {exc.strerror or exc}",
                hint="pick a free port, an address of this host, or 'off'",
            ) from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="backupd-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (requests in flight finish on their threads)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)


def _handler_class(metrics: Metrics, probes: Probes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "contentflow-backupd"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        timeout = REQUEST_TIMEOUT

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def _path(self) -> str:
            return self.path.split("?", 1)[0].split("#", 1)[0]

        def _query(self) -> dict[str, list[str]]:
            return parse_qs(urlsplit(self.path).query)

        def _serve(self, *, head: bool) -> None:
            path = self._path()
            if path == "/metrics":
                body, ctype = metrics.render()
                self._send(200, body, ctype, head=head)
            elif path in ("/livez", "/readyz"):
                self._probe(path, head)
            elif path == "/healthz":
                self._health(head)
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", head=head)

        def _probe(self, path: str, head: bool) -> None:
            live = path == "/livez"
            try:
                ok = probes.live() if live else probes.ready()
            except Exception as exc:  # noqa: BLE001 - a failing probe is a 503, never a dead server
                log.warning("probe_failed", endpoint=path, error=_error_text(exc))
                body = f"error: {_error_text(exc)}\n".encode()
                self._send(503, body, "text/plain; charset=utf-8", head=head)
                return
            text = ("ok" if live else "ready") if ok else ("not live" if live else "not ready")
            self._send(200 if ok else 503, f"{text}\n".encode(), "text/plain; charset=utf-8", head=head)

        def _health(self, head: bool) -> None:
            values = self._query().get("cluster")
            cluster = values[-1] if values else None
            try:
                if cluster is not None and cluster not in (names := probes.cluster_names()):
                    served = ", ".join(names)
                    doc: dict[str, Any] = {
                        "ok": False,
                        "error": f"no cluster {cluster!r} is served here (served: {served})",
                        "clusters": names,
                    }
                    body = (json.dumps(doc, indent=2) + "\n").encode()
                    self._send(404, body, "application/json", head=head)
                    return
                report = probes.health(cluster)
                doc, status = report.to_json(), (200 if report.ok else 503)
            except Exception as exc:  # noqa: BLE001 - a failing probe is a 503, never a dead server
                log.warning("probe_failed", endpoint="/healthz", error=_error_text(exc))
                doc, status = {"ok": False, "status": "unknown", "error": _error_text(exc)}, 503
            body = (json.dumps(doc, indent=2) + "\n").encode()
            self._send(status, body, "application/json", head=head)

        def _send(
            self,
            status: int,
            body: bytes,
            ctype: str,
            headers: dict[str, str] | None = None,
            *,
            head: bool = False,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http_request", client=self.client_address[0], request=format % args)

    return Handler
