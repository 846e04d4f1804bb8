"""Settings -> what the health report is measured against: the objectives (``BACKUPD_HEALTH__*``,
else derived from the schedules) and the probes of the configured server. The probes are bound
here and run by the daemon and ``status`` (``ops.health.inputs``), never while building."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.settings import ENV_PREFIX, Settings
from contentflow_backupd.wiring.sources import source_conninfo

if TYPE_CHECKING:
    from contentflow_backupd.ops.health.evaluate import HealthObjectives
    from contentflow_backupd.ops.health.inputs import ArchiverStatus


def objectives(settings: Settings) -> HealthObjectives:
    """Health objectives: ``BACKUPD_HEALTH__*_MAX_AGE`` when set, else derived from the schedules
    (``ops.health.evaluate.derive_objectives``). ``ConfigError`` naming the setting when a schedule or
    age is invalid."""
    from contentflow_backupd.ops.health.evaluate import derive_objectives
    from contentflow_backupd.scheduling.periods import schedule_period
    from contentflow_backupd.timespec import parse_duration, parse_schedule

    periods: dict[str, float | None] = {}
    for job in ("full", "incremental", "wal"):
        setting = f"{ENV_PREFIX}SCHEDULE__{job.upper()}"
        try:
            periods[job] = schedule_period(
                parse_schedule(getattr(settings.schedule, job)), settings.schedule.timezone
            )
        except ValueError as exc:
            raise ConfigError(f"{setting}: {exc}") from None
    ages: dict[str, float | None] = {}
    for job in ("full", "incremental", "wal"):
        value = getattr(settings.health, f"{job}_max_age")
        try:
            ages[job] = None if value is None else parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{ENV_PREFIX}HEALTH__{job.upper()}_MAX_AGE: {exc}") from None
    return derive_objectives(
        full_period=periods["full"],
        incremental_period=periods["incremental"],
        wal_period=periods["wal"],
        physical=settings.mode == "physical",
        full_max_age=ages["full"],
        incremental_max_age=ages["incremental"],
        wal_max_age=ages["wal"],
    )


def database_probe(settings: Settings) -> Callable[[], object]:
    """Connect to ``BACKUPD_DATABASE_URL`` once (when called): the ``database`` dependency."""

    def database() -> object:
        from contentflow_backupd.source.postgres import describe

        return describe(source_conninfo(settings))

    return database


def archiver_status(settings: Settings) -> Callable[[], ArchiverStatus]:
    """``pg_stat_archiver`` and the current WAL position of the configured server (when called)."""

    def status() -> ArchiverStatus:
        from contentflow_backupd.source.postgres import wal_status

        return wal_status(source_conninfo(settings))

    return status
