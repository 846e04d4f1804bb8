"""The job functions APScheduler stores by importable name, with primitive arguments only.

A stored job names ``contentflow_backupd.scheduling.jobs:run_scheduled`` and one argument, the
job id (``full``, ``incremental``, ``wal``, ``retention``). The daemon installs the handler that
does the work; a job that fires with no handler installed (a job store shared with a process that
is not a daemon) does nothing and says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from contentflow_backupd.model import RunTrigger

log = structlog.get_logger(__name__)

JOB_FUNCTION = "contentflow_backupd.scheduling.jobs:run_scheduled"
CATCH_UP_AFTER = 60.0
"""A run that starts more than this many seconds after its fire time is a ``catch-up`` (it was
missed while the daemon was down or busy)."""

Handler = Callable[[str, RunTrigger], None]

_handler: Handler | None = None
_local = threading.local()


def install(handler: Handler | None) -> None:
    """Route job runs to ``handler(job_id, trigger)`` (``None`` uninstalls)."""
    global _handler
    _handler = handler


def set_scheduled_time(when: datetime | None) -> None:
    """Called by the executor on the worker thread before a job runs: its planned fire time."""
    _local.scheduled = when


def trigger_for(scheduled: datetime | None, now: datetime | None = None) -> RunTrigger:
    if scheduled is None:
        return "scheduled"
    now = now or datetime.now(UTC)
    return "catch-up" if (now - scheduled).total_seconds() > CATCH_UP_AFTER else "scheduled"


def run_scheduled(job_id: str) -> None:
    """The stored job function."""
    trigger = trigger_for(getattr(_local, "scheduled", None))
    handler = _handler
    if handler is None:
        log.error("job_without_handler", job=job_id)
        return
    handler(job_id, trigger)
