"""The job functions APScheduler stores by importable name, with primitive arguments only.

A stored job names ``contentflow_backupd.scheduling.jobs:run_scheduled`` and one argument, the
job id: ``<cluster>:<job>`` for a named cluster (``orders:full``; cluster names have no ``:``), or
the bare job (``full``, ``incremental``, ``wal``, ``retention``...) for the implicit cluster of a
configuration without named clusters, as stored by earlier versions (:func:`parse_job_id`). The
daemon installs the handler of each cluster it runs; a job that fires with no handler installed
for its cluster (a job store shared with a process that is not a daemon) does nothing and says so.
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
"""``handler(job, trigger)``: ``job`` is the bare job name (``full``), the cluster is the one the
handler was installed for."""

_handlers: dict[str | None, Handler] = {}
_local = threading.local()
_catch_up: set[str] = set()
_catch_up_lock = threading.Lock()


def parse_job_id(job_id: str) -> tuple[str | None, str]:
    """``"orders:full"`` -> ``("orders", "full")``; a bare ``"full"`` -> ``(None, "full")``, the
    implicit cluster. ``ValueError`` for an empty cluster or job (``":full"``, ``"orders:"``)."""
    cluster, sep, job = job_id.partition(":")
    if not sep:
        cluster, job = "", job_id
    if (sep and not cluster) or not job:
        raise ValueError(f"{job_id!r} is not a job id (<cluster>:<job> or <job>)")
    return (cluster if sep else None), job


def job_id_for(cluster: str | None, job: str) -> str:
    """The stored id of ``job`` of ``cluster`` (None: the implicit cluster, a bare id)."""
    return job if cluster is None else f"{cluster}:{job}"


def install(handler: Handler | None, cluster: str | None = None) -> None:
    """Route the runs of ``cluster``'s jobs (None: the implicit cluster's bare ids) to
    ``handler(job, trigger)``; ``handler`` None uninstalls that cluster's handler, and with
    ``cluster`` None every handler (and every pending ``mark_catch_up``)."""
    if handler is not None:
        _handlers[cluster] = handler
    elif cluster is None:
        _handlers.clear()
        with _catch_up_lock:
            _catch_up.clear()
    else:
        _handlers.pop(cluster, None)


def set_scheduled_time(when: datetime | None) -> None:
    """Called by the executor on the worker thread before a job runs: its planned fire time."""
    _local.scheduled = when


def mark_catch_up(job_id: str, pending: bool = True) -> None:
    """The next run of ``job_id`` is a ``catch-up`` whatever its fire time (``Scheduler.run_soon``
    with ``catch_up``: a run of a dead daemon, caught up by the cluster's new owner); ``pending``
    False takes the mark back."""
    with _catch_up_lock:
        if pending:
            _catch_up.add(job_id)
        else:
            _catch_up.discard(job_id)


def _take_catch_up(job_id: str) -> bool:
    with _catch_up_lock:
        marked = job_id in _catch_up
        _catch_up.discard(job_id)
        return marked


def trigger_for(scheduled: datetime | None, now: datetime | None = None) -> RunTrigger:
    if scheduled is None:
        return "scheduled"
    now = now or datetime.now(UTC)
    return "catch-up" if (now - scheduled).total_seconds() > CATCH_UP_AFTER else "scheduled"


def run_scheduled(job_id: str) -> None:
    """The stored job function: the handler of the job's cluster runs it."""
    trigger = trigger_for(getattr(_local, "scheduled", None))
    if _take_catch_up(job_id):
        trigger = "catch-up"
    try:
        cluster, job = parse_job_id(job_id)
    except ValueError as exc:
        log.error("job_id_invalid", job=job_id, error=str(exc))
        return
    handler = _handlers.get(cluster)
    if handler is None:
        log.error("job_without_handler", job=job_id)
        return
    handler(job, trigger)
