"""The health report behind ``/healthz`` and ``status``: is the database recoverable right now?

Two halves:

- ``evaluate_health(inputs, objectives, now) -> HealthReport`` is PURE: the same inputs give the
  same report. Checks, in this order:

  * per backup kind (``full``, ``incremental``; only kinds whose objective is set, i.e. whose
    schedule is not ``off``): ``<kind>_backup_age``, the age of the newest successful backup
    against the objective (for ``incremental`` the newest successful backup of either kind: a
    full backup is a restore point as fresh as an incremental); no successful backup at all is a
    breach. ``<kind>_last_run``: a breach while the newest finished run of that job failed, until
    a later run succeeds (``interrupted``, ``skipped`` and ``running`` runs are not counted).
  * ``wal_archive_age`` (physical mode, when the WAL objective is set): the age of the newest
    archived WAL file. An old archive is a breach only when WAL is waiting to be archived (or
    nobody could tell) or the archiver reports failures since its last success: an idle database
    writes no WAL, so its archive ages without losing anything.
  * ``dependency_<name>`` for each dependency given (``database``, ``storage``, ``catalog``).
  * ``leader`` (informational, always ok: a standby is healthy).

- ``ops.health.inputs`` reads what the catalog, the WAL archive and the dependencies say.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from contentflow_backupd.model import BACKUP_KINDS, BackupKind, iso
from contentflow_backupd.wal import DEFAULT_SEGMENT_SIZE

FULL_SLACK = 2 * 3600.0
WAL_SLACK = 60.0
"""Archiving latency on top of the WAL period: the daemon switches WAL once the newest archived
segment is older than the period (checked every 15 s), and the switched segment then has to be
uploaded."""
"""A full backup is stale after its schedule period plus this (daily: 26 h)."""
RUN_HISTORY = 2000
"""How many of the newest runs ``collect_health_inputs`` reads (about two weeks of default jobs)."""
DEPENDENCY_ORDER = ("database", "storage", "catalog")


# -- objectives ------------------------------------------------------------------------------
@dataclass(frozen=True)
class HealthObjectives:
    """Maximum ages in seconds; None: the check is off (its schedule is ``off``, or ``wal`` in
    logical mode)."""

    full: float | None = None
    incremental: float | None = None
    wal: float | None = None

    def for_kind(self, kind: BackupKind) -> float | None:
        return self.full if kind == "full" else self.incremental


def derive_objectives(
    *,
    full_period: float | None,
    incremental_period: float | None,
    wal_period: float | None,
    physical: bool,
    full_max_age: float | None = None,
    incremental_max_age: float | None = None,
    wal_max_age: float | None = None,
) -> HealthObjectives:
    """Objectives from schedule periods (seconds; None: schedule ``off``) and explicit maximum
    ages (``BACKUPD_HEALTH__*_MAX_AGE``; an explicit age wins).

    full: period + 2 h (daily: 26 h). incremental: the larger of twice the period and period + 2 h
    (every 6 h: 12 h). A kind whose schedule is off is not checked. wal (physical mode only): the
    WAL schedule period (15 min by default), or the explicit age even when the WAL job is off
    (PostgreSQL's ``archive_command`` still archives).
    """
    full = None
    if full_period is not None:
        full = full_max_age if full_max_age is not None else full_period + FULL_SLACK
    incremental = None
    if incremental_period is not None:
        derived = max(2 * incremental_period, incremental_period + FULL_SLACK)
        incremental = incremental_max_age if incremental_max_age is not None else derived
    wal = None
    if physical:
        wal = wal_max_age
        if wal is None and wal_period is not None:
            wal = wal_period + WAL_SLACK
    return HealthObjectives(full=full, incremental=incremental, wal=wal)


# -- inputs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class KindState:
    """What the catalog says about one backup kind."""

    last_success_at: datetime | None = None
    """End of the newest successful backup counted for this kind (see the module docstring)."""
    last_run_status: Literal["succeeded", "failed"] | None = None
    """Status of the newest finished (succeeded or failed) run of this job."""
    last_run_at: datetime | None = None
    last_run_error: str | None = None


@dataclass(frozen=True)
class WalState:
    last_archived_at: datetime | None
    """Modified time of the newest archived WAL file; None: nothing archived yet."""
    pending: bool | None = None
    """WAL written by the server but not archived yet; None: unknown (server unreachable, a
    standby)."""
    archiver_failing: bool = False
    """The archiver's newest attempt failed (``pg_stat_archiver``, or the daemon's own pushes)."""
    detail: str | None = None
    """Why the state is incomplete, when it is."""
    segments: int | None = None
    """How many WAL segments (every timeline) the archive holds; None: not listed."""


@dataclass(frozen=True)
class DependencyState:
    up: bool
    detail: str = ""


@dataclass(frozen=True)
class DrillState:
    """The newest finished restore drill (``restore_test`` run)."""

    last_status: Literal["succeeded", "failed"] | None = None
    last_at: datetime | None = None
    error: str | None = None
    rto_seconds: float | None = None


@dataclass(frozen=True)
class RecoveryState:
    """What the repository can restore, and how fast (for the ``recovery_objectives`` check)."""

    window_start: datetime | None = None
    """The oldest restorable moment (None: nothing restorable)."""
    window_end: datetime | None = None
    """The newest restorable moment: newest archived WAL (physical), newest backup (logical)."""
    rto_objective: float | None = None
    rto_estimate: float | None = None
    """Seconds a restore of the current database would take at the measured drill throughput
    (None: no drill measured yet, or the database size is unknown)."""
    last_drill_rto: float | None = None


@dataclass(frozen=True)
class HealthInputs:
    kinds: Mapping[str, KindState] | None
    """Per backup kind; None when the catalog could not be read."""
    wal: WalState | None = None
    dependencies: Mapping[str, DependencyState] = field(default_factory=dict)
    leader: bool | None = None
    """None: not a daemon (``status``), no leader check."""
    corrupt_objects: int | None = None
    """Damaged objects kept backups still need (None: not known, no check)."""
    drill: DrillState | None = None
    """None: drills are off, no check."""
    recovery: RecoveryState | None = None


@dataclass(frozen=True)
class ServerWal:
    """What the server says about its WAL, for ``read_wal_state``."""

    current_lsn: int | None
    """WAL written so far (``pg_current_wal_lsn()``); None on a standby."""
    timeline: int | None
    segment_size: int = DEFAULT_SEGMENT_SIZE
    archiver_failing: bool = False


# -- report ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HealthCheck:
    name: str
    ok: bool
    detail: str
    value_seconds: float | None = None
    """For age checks: the age (None: nothing yet)."""
    objective_seconds: float | None = None
    """For age checks: the maximum age."""
    at: datetime | None = None
    """The time the check is about (last success, last run, last archived WAL)."""

    @property
    def is_age(self) -> bool:
        return self.objective_seconds is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "ok": self.ok, "detail": self.detail}
        if self.is_age:
            out["value_seconds"] = None if self.value_seconds is None else round(self.value_seconds, 3)
            out["objective_seconds"] = self.objective_seconds
        if self.at is not None or self.is_age:
            out["at"] = iso(self.at)
        return out


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[HealthCheck, ...]
    checked_at: datetime

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[HealthCheck]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        """``{"ok", "status": "healthy"|"unhealthy", "checked_at", "checks": [...]}``; each check
        has ``name``, ``ok``, ``detail`` and, for ages, ``value_seconds``, ``objective_seconds``
        and ``at``."""
        return {
            "ok": self.ok,
            "status": "healthy" if self.ok else "unhealthy",
            "checked_at": iso(self.checked_at),
            "checks": [c.to_json() for c in self.checks],
        }

    def to_text(self) -> str:
        """A table for people: one line per check."""
        rows = [("CHECK", "STATE", "AGE", "OBJECTIVE", "DETAIL")]
        for c in self.checks:
            age = "-" if c.value_seconds is None else human_seconds(c.value_seconds)
            objective = "-" if c.objective_seconds is None else human_seconds(c.objective_seconds)
            rows.append((c.name, "ok" if c.ok else "FAIL", age if c.is_age else "", objective, c.detail))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        lines.append(f"overall: {'healthy' if self.ok else 'UNHEALTHY'} at {iso(self.checked_at)}")
        return "\n".join(line.rstrip() for line in lines) + "\n"


def human_seconds(seconds: float) -> str:
    """``45s``, ``12m``, ``3h 25m``, ``2d 4h``: two units at most, rounded down."""
    if math.isinf(seconds):
        return "never"
    rest = max(int(seconds), 0)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, rest = divmod(rest, size)
        if parts or n:
            parts.append(f"{n}{unit}")
        if len(parts) == 2:
            break
    if len(parts) == 2 and parts[1][0] == "0":
        parts.pop()
    return " ".join(parts) or "0s"


# -- evaluation ------------------------------------------------------------------------------
def evaluate_health(inputs: HealthInputs, objectives: HealthObjectives, now: datetime) -> HealthReport:
    """Every check of the module docstring, evaluated at ``now``. Pure."""
    checks: list[HealthCheck] = []
    for kind in BACKUP_KINDS:
        objective = objectives.for_kind(kind)
        if objective is None:
            continue
        if inputs.kinds is None:
            unknown = "unknown: the catalog could not be read"
            checks.append(HealthCheck(f"{kind}_backup_age", False, unknown, None, objective))
            checks.append(HealthCheck(f"{kind}_last_run", False, unknown))
            continue
        state = inputs.kinds.get(kind, KindState())
        checks.append(_age_check(kind, state, objective, now))
        checks.append(_run_check(kind, state))
    if objectives.wal is not None:
        checks.append(_wal_check(inputs.wal, objectives.wal, now))
    if inputs.corrupt_objects is not None:
        n = inputs.corrupt_objects
        detail = (
            "no damaged objects known"
            if n == 0
            else f"{n} damaged or missing object(s) that kept backups need: `verify --since-last` "
            "names them; a new full backup stops depending on them"
        )
        checks.append(HealthCheck("verify_corrupt_objects", n == 0, detail))
    if inputs.drill is not None:
        checks.append(_drill_check(inputs.drill))
    if inputs.recovery is not None:
        checks.append(_recovery_check(inputs.recovery, now))
    names = sorted(inputs.dependencies, key=lambda n: (n not in DEPENDENCY_ORDER, _order(n), n))
    for name in names:
        dep = inputs.dependencies[name]
        detail = dep.detail or ("reachable" if dep.up else "unreachable")
        checks.append(HealthCheck(f"dependency_{name}", dep.up, detail))
    if inputs.leader is not None:
        detail = (
            "this daemon is the leader and runs the jobs"
            if inputs.leader
            else "standby: another daemon holds the leader lock; this one takes over when it stops"
        )
        checks.append(HealthCheck("leader", True, detail))
    return HealthReport(tuple(checks), now)


def _drill_check(drill: DrillState) -> HealthCheck:
    if drill.last_status is None:
        return HealthCheck("restore_test_last_run", True, "no restore drill yet")
    if drill.last_status == "failed":
        return HealthCheck(
            "restore_test_last_run",
            False,
            f"the last restore drill failed: {drill.error or 'see `runs --job restore_test`'}",
            at=drill.last_at,
        )
    rto = f" (RTO {human_seconds(drill.rto_seconds)})" if drill.rto_seconds is not None else ""
    return HealthCheck(
        "restore_test_last_run", True, f"the last restore drill succeeded{rto}", at=drill.last_at
    )


def _recovery_check(rec: RecoveryState, now: datetime) -> HealthCheck:
    """The recovery window, the RPO if the server died now, and whether the RTO objective holds
    at the measured restore throughput: fails only when the estimate exceeds the objective."""
    if rec.window_end is None:
        window = "nothing restorable yet"
    else:
        start = iso(rec.window_start) if rec.window_start else "?"
        window = (
            f"restorable from {start} to {iso(rec.window_end)} "
            f"(RPO now {human_seconds(_age(now, rec.window_end))})"
        )
    ok = True
    if rec.rto_estimate is None or rec.rto_objective is None:
        rto = "RTO not measured yet (no restore drill)"
    else:
        ok = rec.rto_estimate <= rec.rto_objective
        rto = (
            f"a restore of the current database takes about {human_seconds(rec.rto_estimate)} at the "
            f"measured throughput: the RTO objective {human_seconds(rec.rto_objective)} is "
            f"{'met' if ok else 'NOT met'}"
        )
    if rec.last_drill_rto is not None:
        rto += f"; last drill RTO {human_seconds(rec.last_drill_rto)}"
    return HealthCheck("recovery_objectives", ok, f"{window}; {rto}", at=rec.window_end)


def _order(name: str) -> int:
    return DEPENDENCY_ORDER.index(name) if name in DEPENDENCY_ORDER else len(DEPENDENCY_ORDER)


def _age(now: datetime, then: datetime) -> float:
    return max((now - then).total_seconds(), 0.0)


def _age_check(kind: BackupKind, state: KindState, objective: float, now: datetime) -> HealthCheck:
    name = f"{kind}_backup_age"
    what = "full backup" if kind == "full" else "backup (full or incremental)"
    limit = human_seconds(objective)
    if state.last_success_at is None:
        return HealthCheck(name, False, f"no successful {what} yet (objective {limit})", None, objective)
    age = _age(now, state.last_success_at)
    ok = age <= objective
    detail = f"newest successful {what} finished {human_seconds(age)} ago"
    detail += f" (objective {limit})" if ok else f", older than the objective {limit}"
    return HealthCheck(name, ok, detail, age, objective, state.last_success_at)


def _run_check(kind: BackupKind, state: KindState) -> HealthCheck:
    name = f"{kind}_last_run"
    at = iso(state.last_run_at)
    if state.last_run_status == "failed":
        reason = state.last_run_error or "no error recorded"
        detail = f"the last {kind} run failed at {at}: {reason} (healthy again after a successful {kind} run)"
        return HealthCheck(name, False, detail, at=state.last_run_at)
    if state.last_run_status == "succeeded":
        return HealthCheck(name, True, f"the last {kind} run succeeded at {at}", at=state.last_run_at)
    return HealthCheck(name, True, f"no finished {kind} run yet")


def _wal_check(wal: WalState | None, objective: float, now: datetime) -> HealthCheck:
    name = "wal_archive_age"
    limit = human_seconds(objective)
    if wal is None:
        return HealthCheck(name, False, "unknown: the WAL archive could not be read", None, objective)
    age = math.inf if wal.last_archived_at is None else _age(now, wal.last_archived_at)
    value = None if math.isinf(age) else age
    newest = (
        "no WAL archived yet"
        if wal.last_archived_at is None
        else f"newest WAL archived {human_seconds(age)} ago"
    )
    failing = "; the archiver's last attempt failed" if wal.archiver_failing else ""
    extra = f" ({wal.detail})" if wal.detail else ""
    if age <= objective:
        return HealthCheck(
            name,
            True,
            f"{newest} (objective {limit}){failing}{extra}",
            value,
            objective,
            wal.last_archived_at,
        )
    if wal.pending is False and not wal.archiver_failing:
        detail = f"{newest}, older than {limit}, but no WAL is waiting to be archived (idle database)"
        return HealthCheck(name, True, detail + extra, value, objective, wal.last_archived_at)
    if wal.archiver_failing:
        why = "the archiver is failing"
    elif wal.pending:
        why = "WAL is waiting to be archived"
    else:
        why = "whether WAL is waiting is unknown"
    if wal.last_archived_at is None:
        detail = f"{newest} and {why} (objective {limit}){extra}"
    else:
        detail = f"{newest}, older than the objective {limit}, and {why}{extra}"
    return HealthCheck(name, False, detail, value, objective, wal.last_archived_at)
