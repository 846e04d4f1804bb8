"""structlog configuration: once, by wiring; reset in tests.

Log lines go to stderr (stdout is reserved for command output such as ``--json``). JSON lines by
default when stdout is not a terminal, console lines otherwise. A redaction processor masks every
registered secret value as a last line of defence; secrets are kept out of log calls by design.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_secrets: set[str] = set()
MASK = "********"


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it would appear in a log line (values of 4+ characters)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _secrets:
        return event_dict
    return {k: _redact_value(v) for k, v in event_dict.items()}


def configure_logging(fmt: str | None, level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if sys.stdout.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _secrets.clear()
