"""WebhookNotifier against a real ThreadingHTTPServer on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from structlog.testing import capture_logs

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.observability.notify import NullNotifier, WebhookNotifier, safe_origin
from tests.support.pg import free_port

TOKEN = "T00000000/B00000000/XXXXsecrettokenXXXX"


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left: the broken pipe is expected


class Hook:
    """A webhook receiver. ``script`` holds one answer per request (an HTTP status, or "hang" to
    hold the request until ``release`` is set); when it runs out every request gets 200."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[int | str] = []
        self.retry_after: str | None = None
        self.release = threading.Event()
        self.hanging = threading.Event()
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook.lock:
                    hook.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    answer = hook.script.pop(0) if hook.script else 200
                if answer == "hang":
                    hook.hanging.set()
                    hook.release.wait(60)
                    answer = 200
                assert isinstance(answer, int)
                self.send_response(answer)
                if hook.retry_after is not None:
                    self.send_header("Retry-After", hook.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/{TOKEN}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests]


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    h.thread.start()
    yield h
    h.release.set()
    h.server.shutdown()
    h.server.server_close()


def make(url: str, **kw: Any) -> WebhookNotifier:
    args: dict[str, Any] = {"timeout": 5.0, "retries": 3, "backoff": 0.01, "cluster": "main", "host": "db1"}
    args.update(kw)
    return WebhookNotifier(url, **args)


def test_delivers_the_json_body(hook: Hook) -> None:
    notifier = make(hook.url)
    notifier.notify(
        "run_failed",
        "full backup failed:\n  connection refused",
        job="full",
        run_id=7,
        when=datetime(2025, 1, 2, 3, 4, 5),
        cluster="ignored: reserved",
    )
    notifier.notify("run_recovered", "full backup succeeded again", job="full")
    notifier.close(timeout=30)

    assert notifier.delivered == 2
    first, second = hook.bodies()
    assert first["event"] == "run_failed"
    assert first["text"] == "[main on db1] full backup failed: connection refused"
    assert (first["cluster"], first["host"], first["job"], first["run_id"]) == ("main", "db1", "full", 7)
    assert first["when"] == "2025-01-02 03:04:05"  # not JSON-encodable: sent as a string
    assert datetime.fromisoformat(first["at"].replace("Z", "+00:00")).utcoffset() is not None
    assert first["at"].endswith("Z")
    assert second["event"] == "run_recovered"
    request = hook.requests[0]
    assert request["path"] == f"/services/{TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["User-Agent"].startswith("contentflow-backupd/")


def test_retries_after_server_errors_and_429(hook: Hook) -> None:
    hook.script = [500, 503, 429]
    hook.retry_after = "0"
    notifier = make(hook.url, retries=3)
    with capture_logs() as logs:
        notifier.notify("size_anomaly", "full backup is 3x the median", kind="full", ratio=3.0)
        notifier.close(timeout=30)
    assert len(hook.requests) == 4
    assert notifier.delivered == 1
    assert notifier.failed == 0
    retries = [e for e in logs if e["event"] == "webhook_retrying"]
    assert [e["reason"] for e in retries] == ["HTTP 500", "HTTP 503", "HTTP 429"]
    assert all(b["event"] == "size_anomaly" for b in hook.bodies())


def test_gives_up_after_retries(hook: Hook) -> None:
    hook.script = [502] * 10
    notifier = make(hook.url, retries=2)
    with capture_logs() as logs:
        notifier.notify("run_failed", "boom")
        notifier.notify("run_failed", "boom again")
        notifier.close(timeout=30)
    assert len(hook.requests) == 6  # two messages, 1 + 2 retries each
    assert (notifier.delivered, notifier.failed) == (0, 2)
    gave_up = [e for e in logs if e["event"] == "webhook_gave_up"]
    assert [(e["log_level"], e["attempts"], e["reason"]) for e in gave_up] == [
        ("warning", 3, "HTTP 502"),
        ("warning", 3, "HTTP 502"),
    ]


def test_client_errors_are_not_retried(hook: Hook) -> None:
    hook.script = [404]
    notifier = make(hook.url, retries=5)
    with capture_logs() as logs:
        notifier.notify("retention_deleted", "2 backups deleted")
        notifier.close(timeout=30)
    assert len(hook.requests) == 1
    assert notifier.failed == 1
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["webhook_gave_up"]


def test_connection_refused_is_retried_then_given_up() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook/{TOKEN}"  # nobody listens
    notifier = make(url, retries=2)
    with capture_logs() as logs:
        notifier.notify("run_failed", "x")
        notifier.close(timeout=30)
    assert notifier.failed == 1
    assert len([e for e in logs if e["event"] == "webhook_retrying"]) == 2
    (gave_up,) = [e for e in logs if e["event"] == "webhook_gave_up"]
    assert gave_up["reason"].startswith("connection failed")


def test_a_hung_server_never_blocks_notify(hook: Hook) -> None:
    """The receiver holds every request; notify() still returns at once, the queue drops the oldest
    messages, and each attempt is cut by the timeout and retried."""
    hook.script = ["hang"] * 100
    notifier = make(hook.url, timeout=0.2, retries=1, queue_size=3)
    with capture_logs() as logs:

        def send_many() -> None:
            for i in range(20):
                notifier.notify("run_failed", f"failure {i}")

        caller = threading.Thread(target=send_many)
        caller.start()
        caller.join(30)  # a liveness bound: notify() must not wait for the hung server
        assert not caller.is_alive()
        assert hook.hanging.wait(30)
        notifier.close(timeout=30)
    assert notifier.dropped >= 16  # queue of 3, at most one message held by the worker
    dropped = [e for e in logs if e["event"] == "webhook_notification_dropped"]
    assert dropped and all(e["reason"] == "queue full" for e in dropped)
    gave_up = [e for e in logs if e["event"] == "webhook_gave_up"]
    assert gave_up and all(e["reason"] == "connection failed: timed out" for e in gave_up)
    assert notifier.delivered == 0


def test_a_full_queue_drops_the_oldest(hook: Hook) -> None:
    hook.script = ["hang"]
    notifier = make(hook.url, timeout=60, retries=0, queue_size=2)
    notifier.notify("run_failed", "m1")
    assert hook.hanging.wait(30)  # the worker holds m1; the queue is empty
    with capture_logs() as logs:
        for name in ("m2", "m3", "m4"):
            notifier.notify("run_failed", name, name=name)
    assert [(e["event"], e["reason"]) for e in logs] == [("webhook_notification_dropped", "queue full")]
    hook.release.set()
    notifier.close(timeout=30)
    assert [b["text"].rsplit(" ", 1)[1] for b in hook.bodies()] == ["m1", "m3", "m4"]
    assert (notifier.delivered, notifier.dropped) == (3, 1)


def test_a_slow_answer_is_retried_and_delivered(hook: Hook) -> None:
    hook.script = ["hang"]
    notifier = make(hook.url, timeout=0.2, retries=5)
    notifier.notify("run_failed", "x")
    notifier.close(timeout=30)
    hook.release.set()
    assert notifier.delivered == 1
    assert len(hook.requests) >= 2


def test_close_drains_the_queue(hook: Hook) -> None:
    hook.script = [500, 500]
    notifier = make(hook.url, retries=3)
    for i in range(25):
        notifier.notify("retention_deleted", f"deleted {i}", index=i)
    notifier.close(timeout=30)
    assert notifier.delivered == 25
    delivered = [b["index"] for b in hook.bodies()]
    assert sorted(set(delivered)) == list(range(25))
    assert delivered[2:] == list(range(25))  # in order; the first one was retried twice
    with capture_logs() as logs:
        notifier.notify("run_failed", "after close")
    assert [e["reason"] for e in logs] == ["notifier closed"]
    assert len(hook.requests) == 27


def test_close_gives_up_on_a_stuck_worker(hook: Hook) -> None:
    hook.script = ["hang"]
    notifier = make(hook.url, timeout=60, retries=0)
    with capture_logs() as logs:
        notifier.notify("run_failed", "a")
        notifier.notify("run_failed", "b")
        assert hook.hanging.wait(30)
        notifier.close(timeout=0.1)
    (undelivered,) = [e for e in logs if e["event"] == "webhook_notifications_undelivered"]
    assert undelivered["count"] == 2


def test_the_url_never_reaches_a_log(hook: Hook) -> None:
    hook.script = [500] * 5
    url = hook.url.replace("http://", f"http://user:{TOKEN[:8]}pw@")
    notifier = make(url, retries=1)
    with capture_logs() as logs:
        notifier.notify("run_failed", "x")
        notifier.close(timeout=30)
    assert logs
    text = repr(logs) + repr(notifier)
    assert "secrettoken" not in text
    assert TOKEN[:8] + "pw" not in text
    assert all(e["webhook"] == safe_origin(hook.url) for e in logs)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://hooks.slack.com/services/T0/B0/abc", "https://hooks.slack.com"),
        ("https://u:p@example.com:8443/x?token=1", "https://example.com:8443"),
        ("http://[::1]:9000/hook", "http://[::1]:9000"),
        ("http://example.com:notaport/", "<invalid url>"),
    ],
)
def test_safe_origin(url: str, origin: str) -> None:
    assert safe_origin(url) == origin


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "hooks.slack.com/x", "https://"]
)
def test_only_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(url)
    assert "BACKUPD_NOTIFY__WEBHOOK_URL" in str(info.value)
    assert "passwd" not in str(info.value)


def test_null_notifier_accepts_everything() -> None:
    notifier = NullNotifier()
    with capture_logs() as logs:
        notifier.notify("run_failed", "x", job="full")
        notifier.close(timeout=1)
    assert logs == []
