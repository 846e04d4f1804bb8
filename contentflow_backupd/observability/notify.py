"""Webhook notifications: a JSON POST per event, delivered by a background thread (stdlib only).

Events the daemon sends: ``run_failed``, ``run_recovered`` (first success after failures),
``size_anomaly`` and ``retention_deleted``. The body is one JSON object::

    {"event": "run_failed", "text": "[main on db1] full backup failed: ...",
     "cluster": "main", "host": "db1", "at": "2025-01-01T02:00:03.123456Z", ...fields}

``text`` is a human one-liner (Slack's incoming webhooks display it); the extra keyword fields of
:meth:`WebhookNotifier.notify` are added as they are (values that JSON cannot encode become
strings) but never replace the five keys above.

Contract of :class:`WebhookNotifier`:

- ``notify()`` never blocks and never raises: it puts the message on a bounded queue and returns.
  When the queue is full the *oldest* message is dropped with a warning (the newest news matters
  most).
- One daemon worker thread posts the messages in order. Connection errors, timeouts, 5xx and 429
  are retried ``retries`` times with exponential backoff (``backoff`` x 2^n seconds, capped at
  60 s; a 429's ``Retry-After`` is honoured up to that cap); then the message is given up with a
  warning. Other answers (4xx) are given up at once: a retry would not change them.
- ``close(timeout)`` lets the worker deliver what is queued for up to ``timeout`` seconds, then
  stops it (undelivered messages are counted and logged). ``notify()`` after ``close()`` drops the
  message with a warning.
- The URL is a secret (it carries tokens): logs, ``repr`` and errors name only ``scheme://host``.
"""

from __future__ import annotations

import collections
import json
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog

from contentflow_backupd import __version__
from contentflow_backupd.backoff import Backoff
from contentflow_backupd.errors import ConfigError

__all__ = ["Notifier", "NullNotifier", "WebhookNotifier", "safe_origin"]

log = structlog.get_logger(__name__)

MAX_DELAY = 60.0
QUEUE_SIZE = 100
RESERVED = ("event", "text", "cluster", "host", "at")


class Notifier(Protocol):
    """What the daemon needs from a notifier."""

    def notify(self, event: str, text: str, **fields: Any) -> None: ...

    def close(self, timeout: float = 10.0) -> None: ...


class NullNotifier:
    """The notifier when no webhook URL is set: accepts everything, sends nothing."""

    def notify(self, event: str, text: str, **fields: Any) -> None:
        return None

    def close(self, timeout: float = 10.0) -> None:
        return None

    def __repr__(self) -> str:
        return "NullNotifier()"


def safe_origin(url: str) -> str:
    """``https://user:token@hooks.example.com:8443/T0/B1/secret`` -> ``https://hooks.example.com:8443``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}"


class _Attempt:
    """The outcome of one POST."""

    __slots__ = ("ok", "reason", "retry_after", "retryable")

    def __init__(
        self, *, ok: bool, retryable: bool = False, reason: str = "", retry_after: float | None = None
    ) -> None:
        self.ok = ok
        self.retryable = retryable
        self.reason = reason
        self.retry_after = retry_after


class WebhookNotifier:
    """Posts notifications to a webhook URL from a background thread (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        retries: int,
        backoff: float = 1.0,
        cluster: str,
        host: str,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        origin = safe_origin(url)
        if urlsplit(url).scheme not in ("http", "https") or origin.endswith("://?"):
            raise ConfigError(
                f"webhook URL {origin} is not an http:// or https:// URL",
                hint="set BACKUPD_NOTIFY__WEBHOOK_URL to the full https://... URL of the webhook",
            )
        if timeout <= 0 or retries < 0 or backoff < 0 or queue_size < 1:
            raise ValueError("timeout and queue_size must be positive, retries and backoff >= 0")
        self._url = url
        self.origin = origin
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.policy = Backoff(first=backoff, cap=MAX_DELAY, attempts=retries + 1)
        self.cluster = cluster
        self.host = host
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._busy = False  # the worker holds a message it has not finished with
        self._closing = False
        self._stop = threading.Event()  # abandon work now (close timed out)
        self._thread: threading.Thread | None = None
        self._opener = urllib.request.build_opener()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.origin!r})"

    # -- caller side -----------------------------------------------------------------------
    def notify(self, event: str, text: str, **fields: Any) -> None:
        """Queue one notification; returns at once and never raises."""
        try:
            payload = self._payload(event, text, fields)
            with self._cond:
                if self._closing:
                    self.dropped += 1
                    log.warning(
                        "webhook_notification_dropped",
                        webhook=self.origin,
                        event_name=event,
                        reason="notifier closed",
                    )
                    return
                if len(self._queue) >= self._queue_size:
                    oldest = self._queue.popleft()
                    self.dropped += 1
                    log.warning(
                        "webhook_notification_dropped",
                        webhook=self.origin,
                        event_name=oldest["event"],
                        reason="queue full",
                    )
                self._queue.append(payload)
                self._ensure_worker()
                self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - notify must never raise into a backup
            log.warning(
                "webhook_notification_dropped",
                webhook=self.origin,
                event_name=event,
                reason=f"{type(exc).__name__}: {exc}",
            )

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
            if thread is not None:
                self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)
            left = len(self._queue) + (1 if self._busy else 0)
            self._stop.set()
            self._cond.notify_all()
        if left:
            log.warning("webhook_notifications_undelivered", webhook=self.origin, count=left)
        if thread is not None:
            thread.join(timeout=1.0)

    def _payload(self, event: str, text: str, fields: dict[str, Any]) -> dict[str, Any]:
        line = " ".join(str(text).split())
        payload: dict[str, Any] = {k: v for k, v in fields.items() if k not in RESERVED}
        payload.update(
            event=event,
            text=f"[{self.cluster} on {self.host}] {line}",
            cluster=self.cluster,
            host=self.host,
            at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        )
        return payload

    def _ensure_worker(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webhook-notifier", daemon=True)
            self._thread.start()

    # -- worker side -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing or self._stop.is_set())
                if self._stop.is_set() or not self._queue:
                    return  # stopped, or closing with nothing left
                payload = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(payload)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any surprise
                log.warning(
                    "webhook_failed",
                    webhook=self.origin,
                    event_name=payload.get("event"),
                    reason=f"{type(exc).__name__}: {exc}",
                )
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, default=str).encode()
        event = payload["event"]
        attempt = 0
        while True:
            outcome = self._post(body)
            if outcome.ok:
                with self._cond:
                    self.delivered += 1
                log.info("webhook_delivered", webhook=self.origin, event_name=event, attempts=attempt + 1)
                return
            if not outcome.retryable:
                self._give_up(event, outcome.reason, attempt + 1)
                return
            attempt += 1
            if not self.policy.may_retry(attempt):
                break
            delay = self.policy.delay(attempt)
            if outcome.retry_after is not None:
                delay = min(max(delay, outcome.retry_after), MAX_DELAY)
            log.info(
                "webhook_retrying",
                webhook=self.origin,
                event_name=event,
                reason=outcome.reason,
                attempt=attempt,
                delay=delay,
            )
            if self._stop.wait(delay):
                break
        self._give_up(event, outcome.reason, attempt)

    def _give_up(self, event: str, reason: str, attempts: int) -> None:
        with self._cond:
            self.failed += 1
        log.warning(
            "webhook_gave_up", webhook=self.origin, event_name=event, reason=reason, attempts=attempts
        )

    def _post(self, body: bytes) -> _Attempt:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked to be http(s)
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"contentflow-backupd/{__version__}"},
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read(65536)
                return _Attempt(ok=True)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
            retryable = status == 429 or status >= 500
            return _Attempt(
                ok=False,
                retryable=retryable,
                reason=f"HTTP {status}",
                retry_after=_retry_after(exc.headers.get("Retry-After")) if status == 429 else None,
            )
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
            return _Attempt(ok=False, retryable=True, reason=f"connection failed: {self._scrub(text)}")
        except (TimeoutError, OSError) as exc:
            text = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
            return _Attempt(ok=False, retryable=True, reason=f"connection failed: {self._scrub(text)}")

    def _scrub(self, text: str) -> str:
        return text.replace(self._url, self.origin)[:200]


def _retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds; the HTTP-date form is ignored (the backoff applies)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
