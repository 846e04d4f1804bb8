"""The migration guard's pre-flight checks: any failure refuses the migration (exit 4) before
anything runs.

``run_preflight(inputs)`` returns, in this order, one ``CheckResult`` (``ops.drill.checks``) per
check; a check is ``passed``, ``failed`` or ``skipped`` (it does not apply, or cannot be seen):

=========================  ===========================================================================
``database``               the database answers (its server version)
``storage``                the repository answers (``inputs.storage``)
``free_space:state_dir``   the state directory's file system has at least ``min_free_bytes`` free
``free_space:wal_volume``  so has the server's WAL volume, where visible from here (else skipped)
``no_backup_running``      no backup holds the backup lock (``inputs.no_backup_running``)
``wal_archiving``          WAL archiving is healthy (physical mode; skipped in logical mode)
``no_prisma_migration``    no session holds or waits for Prisma's advisory lock 72707369
``no_old_transactions``    no transaction of the database is older than ``max_transaction_age``
``migrate_check``          ``migrate check`` passes (``inputs.migrate_check``)
=========================  ===========================================================================

The checks that need the database are skipped when it does not answer (``database`` has failed,
so the migration is refused anyway). Every failed check's detail says what is wrong and what to
do: a probe's own detail gets the check's hint appended unless it carries one (``hint:``). The
verdicts are pure functions of what was read, tested as tables; run_preflight never raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from contentflow_backupd.errors import BackupdError, LockedError
from contentflow_backupd.ops.backup.anomaly import format_bytes
from contentflow_backupd.ops.drill.checks import CheckResult, passed
from contentflow_backupd.ops.health.evaluate import human_seconds
from contentflow_backupd.ops.locks import exclusive
from contentflow_backupd.source import activity
from contentflow_backupd.source.activity import LockHolder, OpenTransaction, WalVolume
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.postgres import describe
from contentflow_backupd.timespec import format_duration

__all__ = [
    "CheckResult",
    "PreflightInputs",
    "Probe",
    "backup_lock_probe",
    "passed",
    "run_preflight",
]

log = structlog.get_logger(__name__)

Probe = Callable[[], tuple[bool, str]]
"""A check the caller wires: ``(passed, detail)``; a ``BackupdError`` it raises fails the check
with its message and hint, any other exception fails it too (and is logged)."""

_LISTED = 5  # sessions named in a detail before "and N more"

HINTS = {
    "storage": "check BACKUPD_REPOSITORY, the storage credentials and that the storage service answers",
    "no_backup_running": "wait for the running backup to finish, then run the migration again",
    "wal_archiving": "fix WAL archiving first (the server's pg_stat_archiver and log say why it fails): "
    "the restore point taken before the migration is only usable once its WAL is archived",
    "migrate_check": "run `contentflow-backupd migrate check --migrations-dir DIR` for the details; "
    "risky statements need --allow-risky",
}


@dataclass(frozen=True)
class PreflightInputs:
    """What the pre-flight checks look at. The values come from settings (through wiring); the
    probes are wired by the caller to the repository, the backup lock, the WAL archive and
    ``migrate check``."""

    conninfo: ConnInfo
    """The database to migrate (production, or the dry run's scratch copy)."""
    state_dir: Path
    min_free_bytes: int
    """``BACKUPD_MIGRATE__MIN_FREE_BYTES``."""
    max_transaction_age_seconds: float
    """``BACKUPD_MIGRATE__MAX_TRANSACTION_AGE``, parsed."""
    storage: Probe
    no_backup_running: Probe
    migrate_check: Probe
    wal_archiving: Probe | None = None
    """None in logical mode (the check is skipped)."""


def run_preflight(inputs: PreflightInputs) -> list[CheckResult]:
    """Run every check in the documented order; never raises."""
    checks: list[CheckResult] = []
    try:
        server = describe(inputs.conninfo)
    except BackupdError as exc:
        checks.append(CheckResult("database", "failed", _with_hint(exc.message, exc.hint)))
        database_up = False
    else:
        checks.append(
            CheckResult(
                "database",
                "passed",
                f"PostgreSQL {server.server_version} answers on {inputs.conninfo.display()} as {server.user}",
            )
        )
        database_up = True
    down = "skipped: the database does not answer"
    checks.append(_probe("storage", inputs.storage))
    checks.append(state_dir_space(inputs.state_dir, inputs.min_free_bytes))
    checks.append(
        _read(
            "free_space:wal_volume",
            lambda: wal_volume_space(activity.wal_volume(inputs.conninfo), inputs.min_free_bytes),
        )
        if database_up
        else CheckResult("free_space:wal_volume", "skipped", down)
    )
    checks.append(_probe("no_backup_running", inputs.no_backup_running))
    if inputs.wal_archiving is None:
        checks.append(CheckResult("wal_archiving", "skipped", "logical mode: no WAL archive to check"))
    else:
        checks.append(_probe("wal_archiving", inputs.wal_archiving))
    if database_up:
        checks.append(
            _read(
                "no_prisma_migration",
                lambda: prisma_lock_verdict(activity.prisma_lock_holders(inputs.conninfo)),
            )
        )
        age = inputs.max_transaction_age_seconds
        checks.append(
            _read(
                "no_old_transactions",
                lambda: old_transactions_verdict(
                    activity.old_transactions(inputs.conninfo, age),
                    age,
                    sees_all=activity.sees_all_sessions(inputs.conninfo),
                ),
            )
        )
        checks.append(_probe("migrate_check", inputs.migrate_check))
    else:
        checks.extend(
            CheckResult(name, "skipped", down)
            for name in ("no_prisma_migration", "no_old_transactions", "migrate_check")
        )
    failed = [c.name for c in checks if c.status == "failed"]
    log.info("migration_preflight_checked", passed=not failed, failed=failed)
    return checks


# -- verdicts (pure) -------------------------------------------------------------------------
def space_verdict(name: str, where: str, free: int, min_free: int) -> CheckResult:
    if free >= min_free:
        return CheckResult(name, "passed", f"{format_bytes(free)} free on {where}")
    return CheckResult(
        name,
        "failed",
        f"only {format_bytes(free)} free on {where}, less than BACKUPD_MIGRATE__MIN_FREE_BYTES "
        f"({format_bytes(min_free)}): free space there first (a migration writes WAL for every row "
        "and index it rewrites), or lower the bound if you know the migration is small",
    )


def wal_volume_space(volume: WalVolume, min_free: int) -> CheckResult:
    name = "free_space:wal_volume"
    if volume.free_bytes is None:
        return CheckResult(name, "skipped", f"not visible from here: {volume.reason}")
    return space_verdict(name, f"the server's WAL volume ({volume.path})", volume.free_bytes, min_free)


def prisma_lock_verdict(holders: Sequence[LockHolder]) -> CheckResult:
    name = "no_prisma_migration"
    if not holders:
        return CheckResult(name, "passed", "no session holds Prisma's advisory lock 72707369")
    shown = "; ".join(_holder(h) for h in holders[:_LISTED])
    more = f" and {len(holders) - _LISTED} more" if len(holders) > _LISTED else ""
    first = holders[0].pid
    return CheckResult(
        name,
        "failed",
        f"a Prisma migration is in flight: Prisma's advisory lock 72707369 is held or awaited by "
        f"{shown}{more}. Wait for it to finish and run again; if it is stuck (its process is gone), "
        f"end that session with select pg_terminate_backend({first})",
    )


def old_transactions_verdict(
    transactions: Sequence[OpenTransaction], max_age: float, *, sees_all: bool = True
) -> CheckResult:
    name = "no_old_transactions"
    bound = format_duration(max_age)
    if not transactions:
        caveat = (
            ""
            if sees_all
            else " (only this role's own sessions are visible to it: grant it pg_monitor or "
            "pg_read_all_stats so that other roles' transactions are checked too)"
        )
        return CheckResult(name, "passed", f"no transaction of the database is older than {bound}{caveat}")
    shown = "; ".join(_transaction(t) for t in transactions[:_LISTED])
    more = f" and {len(transactions) - _LISTED} more" if len(transactions) > _LISTED else ""
    return CheckResult(
        name,
        "failed",
        f"{len(transactions)} transaction(s) open longer than {bound} "
        f"(BACKUPD_MIGRATE__MAX_TRANSACTION_AGE): "
        f"{shown}{more}. They hold locks the migration's DDL would queue behind, stalling all traffic "
        f"on those tables: let them finish, or end them (select pg_terminate_backend(pid)), then run again",
    )


def _holder(h: LockHolder) -> str:
    role = "holds it" if h.granted else "waits for it"
    since = f" since {h.since.isoformat(timespec='seconds')}" if h.since else ""
    app = h.application_name or "no application_name"
    return f"pid {h.pid} ({app}, {h.state or 'state not visible'}) {role}{since}"


def _transaction(t: OpenTransaction) -> str:
    return (
        f"pid {t.pid} ({t.user or 'user not visible'}, {t.application or 'no application_name'}, "
        f"{t.state or 'state not visible'}, open {human_seconds(t.age_seconds)}): {t.query or '(no query)'}"
    )


# -- running the checks ----------------------------------------------------------------------
def state_dir_space(state_dir: Path, min_free: int) -> CheckResult:
    """``free_space:state_dir``: statvfs of the state directory (of its nearest existing parent
    while it does not exist yet)."""
    path = state_dir
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return CheckResult(
            "free_space:state_dir",
            "failed",
            f"cannot read the free space of the state directory {state_dir}: {exc.strerror}; "
            "check BACKUPD_STATE_DIR and its permissions",
        )
    free = int(st.f_bavail) * int(st.f_frsize)
    return space_verdict("free_space:state_dir", f"the state directory {state_dir}", free, min_free)


def _read(name: str, verdict: Callable[[], CheckResult]) -> CheckResult:
    """A check that reads the database: a ``SourceError`` fails it with its message."""
    try:
        return verdict()
    except BackupdError as exc:
        return CheckResult(name, "failed", _with_hint(exc.message, exc.hint))
    except Exception as exc:
        log.exception("preflight_check_crashed", check=name)
        return CheckResult(name, "failed", f"{type(exc).__name__}: {exc}")


def _probe(name: str, probe: Probe) -> CheckResult:
    hint = HINTS.get(name)
    try:
        ok, detail = probe()
    except BackupdError as exc:
        return CheckResult(name, "failed", _with_hint(exc.message, exc.hint or hint))
    except Exception as exc:
        log.exception("preflight_check_crashed", check=name)
        return CheckResult(name, "failed", _with_hint(f"{type(exc).__name__}: {exc}", hint))
    if ok:
        return CheckResult(name, "passed", detail)
    return CheckResult(name, "failed", detail if "hint:" in detail else _with_hint(detail, hint))


def _with_hint(message: str, hint: str | None) -> str:
    return f"{message} (hint: {hint})" if hint else message


def backup_lock_probe(lock_dir: Path, cluster: str) -> Probe:
    """A ``no_backup_running`` probe on the backup lock (``ops/locks``, ``backup-<cluster>``):
    takes it without waiting and lets it go at once; fails naming the holder's pid."""

    def probe() -> tuple[bool, str]:
        what = f"a backup or retention run of cluster {cluster!r}"
        try:
            with exclusive(lock_dir, f"backup-{cluster}", what=what):
                pass
        except LockedError as exc:
            return False, _with_hint(exc.message, HINTS["no_backup_running"])
        return True, f"no backup of cluster {cluster!r} is running"

    return probe
