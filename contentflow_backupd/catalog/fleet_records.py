"""Records of the fleet's tables (``fleet_daemons``, ``fleet_leases``), free of SQLAlchemy so
that the daemon can use them without loading it (``catalog/fleet.py`` stores them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from contentflow_backupd.model import RunRecord


@dataclass(frozen=True)
class DaemonRecord:
    """A daemon incarnation of the fleet. ``id`` is ``<member>/<incarnation>``; ``member`` is
    stable across restarts (``fleet.member``). Alive while ``expires_at`` is not past on the
    catalog server's clock. ``clusters``: the clusters it has configured, name -> settings
    digest."""

    id: str
    member: str
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    clusters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LeaseRecord:
    """The lease of one cluster. ``owner``: the daemon id that claimed it last (None: released
    or never claimed); ``epoch``: raised by every claim, never lowered; ``held``: owned and not
    expired when read, on the catalog server's clock (an expired lease keeps its owner until
    someone claims it)."""

    cluster: str
    owner: str | None
    epoch: int
    acquired_at: datetime | None
    renewed_at: datetime | None
    expires_at: datetime | None
    held: bool


@dataclass(frozen=True)
class ReapedRuns:
    """What ``reap_runs_of`` marked ``interrupted``: the runs (as they are now) and the ids of
    the backups."""

    runs: list[RunRecord] = field(default_factory=list)
    backup_ids: list[str] = field(default_factory=list)
