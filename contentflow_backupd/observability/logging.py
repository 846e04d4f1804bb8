"""structlog configuration: once, by wiring; reset in tests.

Log lines go to stderr (stdout is reserved for command output such as ``--json``). JSON lines by
default when stdout is not a terminal, console lines otherwise: one readable line per event, the
important fields first and long structures summarized (``summarize_for_console``); the JSON lines
and the audit trail keep every field whole. A redaction processor masks every
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


# -- console lines: one readable line per event -------------------------------------------------
FIRST_KEYS = ("action", "outcome", "backup_id", "kind", "mode", "job", "phase", "wal", "objects", "error")
"""Fields a person looks for first; the others follow in name order."""
UNTRUNCATED_KEYS = frozenset({"error", "hint", "exception"})
"""Never shortened: what went wrong is the point of the line."""
MAX_LIST = 3
MAX_MAPPING = 6
MAX_TEXT = 160
MAX_NESTED_TEXT = 40


def _summary(value: Any, *, nested: bool = False) -> Any:
    """A short, readable form of a log value for console lines: mappings as ``{k=v, ...}`` with at
    most ``MAX_MAPPING`` entries (nested ones as ``{N entries}``), lists as ``a, b, c, +N more``,
    long text cut with its length. The JSON lines and the audit trail keep the whole value."""
    if isinstance(value, dict):
        if nested:
            return f"{{{len(value)} entries}}"
        items = [f"{k}={_summary(v, nested=True)}" for k, v in value.items() if v not in (None, [], {}, "")]
        if len(items) > MAX_MAPPING:
            items = [*items[:MAX_MAPPING], f"+{len(items) - MAX_MAPPING} more"]
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple | set | frozenset):
        values = list(value)
        if nested:
            return (
                f"[{len(values)} items]"
                if len(values) > MAX_LIST
                else "[" + ", ".join(map(str, values)) + "]"
            )
        shown = ", ".join(str(_summary(v, nested=True)) for v in values[:MAX_LIST])
        if len(values) > MAX_LIST:
            shown += f", +{len(values) - MAX_LIST} more"
        return shown or "-"
    if isinstance(value, str):
        limit = MAX_NESTED_TEXT if nested else MAX_TEXT
        if len(value) > limit:
            return f"{value[: limit - 1]}… ({len(value)} chars)"
    if isinstance(value, float) and not nested:
        return round(value, 3)
    return value


def summarize_for_console(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Console lines only: long structures summarized (settings changes, audit ``details``),
    the important fields first. Runs after ``redact``, so it only shortens masked values."""
    fixed = {k: event_dict[k] for k in ("timestamp", "level", "event") if k in event_dict}
    rest = {k: v for k, v in event_dict.items() if k not in fixed}
    ordered = [k for k in FIRST_KEYS if k in rest] + sorted(k for k in rest if k not in FIRST_KEYS)
    out: dict[str, Any] = dict(fixed)
    for key in ordered:
        value = rest[key]
        out[key] = value if key in UNTRUNCATED_KEYS else _summary(value)
    return out


def configure_logging(fmt: str | None, level: str = "info", stream: TextIO | None = None) -> None:
    out: Any = stream
    if out is None:
        from contentflow_backupd.observability import progress

        # While a live progress line is drawn, each log line is written above it.
        out = progress.BarAwareStream(sys.stderr) if progress.mode() == "bar" else sys.stderr
    if fmt is None:
        fmt = "console" if sys.stdout.isatty() else "json"
    renderer: Any
    console: list[Any] = []
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty(), sort_keys=False)
        stamp = structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%SZ", utc=True)
        console = [summarize_for_console]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            redact,
            *console,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _secrets.clear()
