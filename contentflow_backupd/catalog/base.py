"""The catalog contract: an index of backups and runs in the daemon's own database.

The catalog is an index, not the truth: the repository's manifests are, and ``catalog rebuild``
reconstructs the ``backups`` table from them. Implementations must be safe when two processes use
the same catalog at once (a CLI command while the daemon runs): every method is one short
transaction, and a busy database is waited for (bounded), never corrupted.

Rules every role shares:

- **Errors.** Any failure of the database (unreachable, locked beyond the bounded wait, a
  constraint) raises ``CatalogError``, whose message names the catalog (password hidden); no
  library error escapes. A missing row is *not* an error unless a method says so: ``get_*``
  returns None, ``delete_*`` does nothing.
- **Time.** Timestamps go in and come out as timezone-aware UTC ``datetime`` values (naive ones
  going in are taken as UTC); "now" is the catalog process's clock, except in ``FleetCatalog``,
  whose leases expire on the catalog server's clock (PostgreSQL's ``now()``).
- **Scope.** Every query that reports rows takes the ``Scope`` (repository id, cluster) they
  belong to and returns only rows of that scope; records written carry their repository id. Rows
  from before revision 0008 without one are attributed by ``ScopeCatalog.adopt_unscoped`` or
  never reported. Methods that take an id (``get_backup``, ``get_migration_run`` ...) are not
  scoped: ids are unique across the catalog.
- **Order.** Lists come in the order each method states, never "as the database likes".

The contract is split by role, one protocol each, so that a use case names what it uses and a
fake implements only that. ``Catalog`` is every role at once: what wiring opens and hands out.
The daemon's leader lock is not a catalog role but its own protocol (``catalog/leader.py``:
``LeaderLock``), because it holds a connection of its own for as long as the daemon leads.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from contentflow_backupd.catalog.audit_records import AuditEvent
from contentflow_backupd.catalog.fleet_records import DaemonRecord, LeaseRecord, ReapedRuns
from contentflow_backupd.catalog.guard_records import BatchCheckpoint, MigrationRunRecord, MigrationStatus
from contentflow_backupd.catalog.records import (
    CorruptObject,
    DeletionRecord,
    DeletionWhat,
    DrillRecord,
    DrillStatus,
    VerifyState,
)
from contentflow_backupd.model import (
    BackupRecord,
    BackupStatus,
    RestorePoint,
    RunRecord,
    RunStatus,
    RunTrigger,
    Scope,
)

__all__ = [
    "ROLES",
    "AuditCatalog",
    "BackupAuditCatalog",
    "BackupCatalog",
    "BackupJobCatalog",
    "Catalog",
    "CatalogDatabase",
    "CorruptObject",
    "DeletionCatalog",
    "DeletionRecord",
    "DeletionWhat",
    "DrillCatalog",
    "DrillJobCatalog",
    "DrillRecord",
    "DrillStatus",
    "DryRunCatalog",
    "FleetCatalog",
    "FleetMemberCatalog",
    "HealthCatalog",
    "MigrationCatalog",
    "MigrationGuardCatalog",
    "RecoverCatalog",
    "RestorePointCatalog",
    "RetentionCatalog",
    "RunCatalog",
    "ScopeCatalog",
    "SweepCatalog",
    "VerificationCatalog",
    "VerifyState",
]


class BackupCatalog(Protocol):
    """The ``backups`` table: one ``BackupRecord`` per backup attempt, keyed by backup id.

    Writers: ``backup`` (a row ``running`` at the start, replaced when it ends), retention
    (``delete_backup``), ``catalog rebuild`` (``replace_backups``). Every write is idempotent:
    writing the same record twice leaves one row."""

    def upsert_backup(self, record: BackupRecord) -> None:
        """Insert the record, or replace every field of the row with the same id."""
        ...

    def get_backup(self, backup_id: str) -> BackupRecord | None:
        """The record with this id (whatever its scope), or None."""
        ...

    def list_backups(
        self, scope: Scope, statuses: Iterable[BackupStatus] | None = None
    ) -> list[BackupRecord]:
        """Records of ``scope`` (all statuses when ``statuses`` is None), oldest first
        (by ``started_at``, then ``id``)."""
        ...

    def delete_backup(self, backup_id: str) -> None:
        """Remove the row; a missing id is not an error."""
        ...

    def replace_backups(self, scope: Scope, records: Sequence[BackupRecord]) -> None:
        """In one transaction: delete every backup row of ``scope`` whose status is
        ``succeeded``, then insert ``records``, replacing any row with the same id (also one of
        another cluster). Used by ``catalog rebuild``; rows of failed attempts are kept."""
        ...


class RunCatalog(Protocol):
    """The ``runs`` table: one ``RunRecord`` per job run (backup, retention, drill ...), with
    ids assigned by the catalog in insertion order and never reused.

    A run is ``running`` from ``start_run`` until ``finish_run``; a process that died in between
    leaves it ``running`` until ``mark_interrupted`` finds it."""

    def start_run(
        self,
        scope: Scope,
        job: str,
        trigger: RunTrigger,
        *,
        pid: int | None = None,
        host: str | None = None,
    ) -> RunRecord:
        """Insert a run of ``scope`` with status ``running`` and ``started_at`` now; returns it
        with its id."""
        ...

    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        *,
        backup_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Set status, ``finished_at`` now, backup id and error of a run (again when it had
        finished: the last call wins). ``CatalogError`` when no run has this id."""
        ...

    def list_runs(self, scope: Scope, limit: int | None = None, job: str | None = None) -> list[RunRecord]:
        """Runs of ``scope`` (of ``job`` only, if given) in insertion order (by id); with
        ``limit``, the newest ``limit`` of those runs (still in insertion order)."""
        ...

    def mark_interrupted(self, is_alive: Callable[[int | None, str | None], bool]) -> list[str]:
        """Every backup and run still ``running`` (of any scope) whose (pid, host) ``is_alive``
        says is gone becomes ``interrupted`` with ``finished_at`` now and error "process ended
        without finishing (killed or crashed)". ``is_alive`` is called outside any transaction; a
        row that finished meanwhile is left alone. Idempotent. Returns the ids of the backups
        changed. A run started by a daemon of the fleet (``daemon_id`` set: ``start_run_fenced``)
        is left alone: the daemon that takes its cluster over reaps it (``reap_runs_of``) and
        catches it up, which a reap by pid on the same host would have prevented."""
        ...


class RestorePointCatalog(Protocol):
    """The ``restore_points`` table: named restore points, unique by (cluster, name). A point
    is never changed or deleted once added."""

    def add_restore_point(
        self, scope: Scope, name: str, lsn: str, timeline: int, created_at: datetime
    ) -> None:
        """Record a named restore point of ``scope``. Names are unique per cluster:
        ``CatalogError`` when the cluster already has one of that name (the row is unchanged)."""
        ...

    def list_restore_points(self, scope: Scope) -> list[RestorePoint]:
        """Restore points of ``scope``, oldest first (by ``created_at``, then name)."""
        ...

    def get_restore_point(self, scope: Scope, name: str) -> RestorePoint | None:
        """The restore point of ``scope`` with this name, or None (also when the cluster's point
        of that name belongs to another repository)."""
        ...


class DeletionCatalog(Protocol):
    """The ``deletions`` table: what retention removed from the repository. Append-only; ids
    are assigned by the catalog in insertion order."""

    def add_deletions(self, records: Sequence[DeletionRecord]) -> None:
        """Append ``records`` (their ``id`` is ignored) in one transaction; nothing on error.
        An empty sequence does nothing."""
        ...

    def list_deletions(self, scope: Scope, limit: int | None = None) -> list[DeletionRecord]:
        """Deletions of ``scope`` in insertion order (by id), with their ids; with ``limit``,
        the newest ``limit`` of them (still in insertion order)."""
        ...

    def count_deleted_wal_segments(self, scope: Scope) -> int:
        """How many WAL segments (not history, backup or partial files) of ``scope`` retention
        deleted."""
        ...


class VerificationCatalog(Protocol):
    """Continuous verification (``verify --since-last``, the sweep): one ``VerifyState`` per
    cluster and the corrupt-object records, of which at most one per key is open."""

    def get_verify_state(self, scope: Scope) -> VerifyState:
        """The verification state of ``scope``; an empty ``VerifyState`` when none was saved (the
        catalog keeps one per cluster: the last repository to save it owns it)."""
        ...

    def set_verify_state(self, scope: Scope, state: VerifyState) -> None:
        """Insert or replace the verification state of ``scope``."""
        ...

    def record_corrupt(
        self,
        scope: Scope,
        key: str,
        backup_ids: Sequence[str],
        problem: str,
        *,
        detected_at: datetime | None = None,
    ) -> CorruptObject:
        """Record ``key`` as corrupt. When an open record of the key exists, its backup ids and
        problem are replaced and its ``detected_at`` kept; otherwise a new open record is added
        (``detected_at`` default: now). At most one record per key is open. Returns the record."""
        ...

    def list_corrupt(self, scope: Scope, *, open_only: bool = True) -> list[CorruptObject]:
        """Corrupt-object records of ``scope`` in insertion order (by id); only the open ones
        unless ``open_only`` is False."""
        ...

    def resolve_corrupt(
        self, scope: Scope, key: str, resolution: str, *, resolved_at: datetime | None = None
    ) -> bool:
        """Close the open record of ``key`` with ``resolution`` (``resolved_at`` default: now).
        Returns False, changing nothing, when no record of the key is open."""
        ...


class DrillCatalog(Protocol):
    """The ``drills`` table: finished restore drills, keyed by drill id, never changed once
    added."""

    def add_drill(self, record: DrillRecord) -> None:
        """Insert a finished drill; ``CatalogError`` when a drill with its id exists."""
        ...

    def list_drills(
        self, scope: Scope, *, limit: int | None = None, status: DrillStatus | None = None
    ) -> list[DrillRecord]:
        """Drills of ``scope`` (only those with ``status`` when given), oldest first (by
        ``started_at``, then id); with ``limit``, the newest ``limit`` of them."""
        ...


class MigrationCatalog(Protocol):
    """The migration guard's tables: ``migrate`` runs and ``migrate batch`` checkpoints, each
    keyed by an id its caller chooses and saved again as it progresses (insert or replace)."""

    def save_migration_run(self, record: MigrationRunRecord) -> None:
        """Insert or replace the ``migrate`` run with ``record.id``."""
        ...

    def get_migration_run(self, run_id: str) -> MigrationRunRecord | None:
        """The ``migrate`` run with this id (whatever its scope), or None."""
        ...

    def list_migration_runs(
        self, scope: Scope, *, limit: int | None = None, status: MigrationStatus | None = None
    ) -> list[MigrationRunRecord]:
        """``migrate`` runs of ``scope`` (only those with ``status`` when given), oldest first
        (by ``started_at``, then id); with ``limit``, the newest ``limit`` of them."""
        ...

    def save_batch(self, checkpoint: BatchCheckpoint) -> None:
        """Insert or replace the ``migrate batch`` checkpoint with ``checkpoint.id``."""
        ...

    def get_batch(self, batch_id: str) -> BatchCheckpoint | None:
        """The checkpoint with this id, or None."""
        ...


class AuditCatalog(Protocol):
    """The audit trail: ``AuditEvent`` records chained by hash (``catalog/audit_records.py``),
    numbered by ``seq`` from 1 without gaps, for the whole catalog (not scoped), and the mark of
    what was copied to each repository. Appends never fork the chain, whatever the concurrency."""

    def append_audit_event(
        self,
        *,
        action: str,
        outcome: str,
        actor: str,
        objects: Sequence[str] = (),
        details: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AuditEvent:
        """Append one audit record (``at`` default: now) chained onto the last one, reading the
        last one inside the same write transaction (safe with concurrent writers). Returns it."""
        ...

    def list_audit_events(
        self,
        *,
        since: datetime | None = None,
        after_seq: int | None = None,
        action: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditEvent]:
        """Audit records by ``seq`` (only those at or after ``since``, after ``after_seq`` and
        of ``action``, when given), newest first with ``newest_first``; with ``limit``, the
        first ``limit`` of them in that order."""
        ...

    def merge_audit_events(self, events: Sequence[AuditEvent]) -> tuple[int, int]:
        """In one transaction, make ``events`` (the repository's copy) the history up to their
        last seq; see ``catalog/audit.py``. Returns (imported, appended again)."""
        ...

    def get_audit_flushed_seq(self, repository_id: str) -> int | None:
        """The last audit seq written to the repository ``repository_id`` (None: never)."""
        ...

    def set_audit_flushed_seq(self, repository_id: str, seq: int) -> None:
        """Raise (never lower) the mark of ``get_audit_flushed_seq``."""
        ...


class ScopeCatalog(Protocol):
    """What the catalog knows about itself (``catalog_meta``: small key/value facts such as the
    repository id of a storage URL, when it was last rebuilt) and the attribution of rows from
    before revision 0008, which carry no repository id."""

    def adopt_unscoped(self, scope: Scope, manifest_ids: Iterable[str]) -> int:
        """Attribute rows from before revision 0008 (no repository id) to ``scope``: backups of
        its cluster whose id is in ``manifest_ids`` (the repository's manifests), then the runs,
        drills and ``migrate`` runs that name one of them. Idempotent. Returns how many backups it
        adopted."""
        ...

    def has_unscoped(self, cluster: str) -> bool:
        """Whether backups of ``cluster`` from before revision 0008 are not attributed yet."""
        ...

    def get_meta(self, key: str) -> str | None:
        """A value of ``catalog_meta``, or None."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Insert or replace a value of ``catalog_meta``."""
        ...


class CatalogDatabase(Protocol):
    """The database behind the catalog, for its owner: the process that opened it."""

    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine (APScheduler's job store lives in the catalog database)."""
        ...

    def close(self) -> None:
        """Dispose of connections. Idempotent; no method may be called afterwards."""
        ...


class FleetCatalog(Protocol):
    """The fleet: daemons sharing one catalog (``fleet_daemons``) and one lease per cluster
    (``fleet_leases``), through which each cluster's jobs run on one daemon at a time.

    **Clock.** Every expiry is decided on one clock: PostgreSQL's ``now()`` (the start of the
    method's transaction); on SQLite, which serves one daemon, the catalog process's clock. A
    daemon never compares these times with its own. ``ttl_s`` is in seconds, > 0.

    **Atomicity.** Every method is one transaction. Claims take the free rows with ``FOR UPDATE
    SKIP LOCKED`` (PostgreSQL) or under the write lock (SQLite, ``BEGIN IMMEDIATE``): daemons
    claiming at once get each cluster once. A lease's epoch rises by one on every claim and never
    falls, so (cluster, epoch) names one holding.

    **Fencing.** ``start_run_fenced`` inserts a run only while the caller's lease of that epoch
    is held, checked in the insert's own transaction (the lease row locked against a concurrent
    claim): a daemon that lost its lease cannot start a run, even before it notices."""

    def announce(
        self,
        daemon_id: str,
        *,
        member: str,
        host: str,
        pid: int,
        version: str,
        clusters: Mapping[str, str],
        ttl_s: float,
    ) -> DaemonRecord:
        """Insert or replace the row of ``daemon_id`` (``started_at``, ``heartbeat_at`` now,
        ``expires_at`` now + ``ttl_s``, ``clusters`` name -> digest), and add a free lease row for
        each of ``clusters`` that has none. Returns the row."""
        ...

    def heartbeat_and_renew(self, daemon_id: str, ttl_s: float) -> dict[str, int]:
        """Move the daemon's ``heartbeat_at`` to now and ``expires_at`` to now + ``ttl_s``, then
        renew every lease it owns that has not expired (an expired lease is not renewed: it is
        lost, and a claim can win it). Returns the renewed leases, cluster -> epoch.
        ``CatalogError`` when the daemon was never announced."""
        ...

    def claim(self, daemon_id: str, clusters: Collection[str], ttl_s: float) -> dict[str, int]:
        """Take the leases of ``clusters`` that nobody holds (free, or expired whoever owned them,
        this daemon included), adding lease rows for clusters that have none: owner
        ``daemon_id``, epoch + 1, ``acquired_at`` now, expiry now + ``ttl_s``. Leases held (by
        anyone, this daemon too) are left alone, and a daemon not alive (never announced, or
        expired) claims nothing. Returns the leases won, cluster -> new epoch."""
        ...

    def release(self, daemon_id: str, clusters: Collection[str] | None = None) -> list[str]:
        """Free the leases of ``clusters`` (None: all) that ``daemon_id`` owns, expired or not
        (owner NULL; the epoch stays). Returns the clusters released, sorted."""
        ...

    def leases(self) -> list[LeaseRecord]:
        """Every lease row, by cluster, with ``held`` decided on the catalog's clock."""
        ...

    def live_daemons(self) -> list[DaemonRecord]:
        """The daemons whose ``expires_at`` is not past, by id."""
        ...

    def reap_runs_of(self, daemon_ids: Collection[str], clusters: Collection[str]) -> ReapedRuns:
        """Runs and backups of ``clusters`` still ``running`` that one of ``daemon_ids`` started
        become ``interrupted`` (``finished_at`` now, error "process ended without finishing"),
        unless that daemon is alive (a live daemon's rows are never reaped). A backup row without
        a ``daemon_id`` counts as the dead daemon's when its host and pid are the daemon's and it
        started after the daemon did (``ops`` writes backups without the id). Idempotent."""
        ...

    def start_run_fenced(
        self,
        daemon_id: str,
        epoch: int,
        scope: Scope,
        job: str,
        trigger: RunTrigger,
        *,
        pid: int | None = None,
        host: str | None = None,
        lease: str | None = None,
    ) -> RunRecord | None:
        """``RunCatalog.start_run`` with ``daemon_id`` and ``lease_epoch`` recorded, only while
        ``daemon_id`` holds the lease ``lease`` (None: ``scope.cluster``) at ``epoch`` (owner,
        same epoch, not expired). None, inserting nothing, otherwise. A daemon's leases are named
        ``<cluster>@<repository hash>`` (one per repository and cluster); the run is stored with
        ``scope`` as given, so under the cluster's name."""
        ...


# -- what one use case needs, when that is more than one role ---------------------------------
# Python has no intersection type: a use case that needs several roles names one of these. Each
# only combines roles (tests/catalog/test_roles.py checks that none adds a method).


class BackupAuditCatalog(BackupCatalog, AuditCatalog, Protocol):
    """Backups and the audit trail: checking the repository against the catalog
    (``ops/verify/repo_check.py``), ``verify`` and ``catalog rebuild``."""


class BackupJobCatalog(BackupCatalog, RunCatalog, AuditCatalog, Protocol):
    """What a backup uses (``ops/backup/run.py``): its run, its backup rows, its audit record."""


class RetentionCatalog(BackupCatalog, DeletionCatalog, RunCatalog, AuditCatalog, Protocol):
    """What retention uses (``ops/retention/apply.py``): backup rows it deletes, the deletions it
    records, its run and its audit record."""


class DrillJobCatalog(RunCatalog, DrillCatalog, AuditCatalog, Protocol):
    """What a restore drill uses (``ops/drill/run.py``): its run, its drill row, its audit record."""


class SweepCatalog(VerificationCatalog, BackupCatalog, AuditCatalog, Protocol):
    """What continuous verification uses (``ops/verify/sweep.py``): its state and corrupt objects,
    the backups to check the repository against, its audit record."""


class FleetMemberCatalog(FleetCatalog, RunCatalog, Protocol):
    """What a daemon of the fleet uses (``daemon/membership.py``): its leases, and the runs of a
    cluster it takes over, to catch up those a dead daemon left interrupted."""


class HealthCatalog(BackupCatalog, RunCatalog, VerificationCatalog, DrillCatalog, Protocol):
    """What health and the recovery objectives read (``ops/health/``): backups, runs,
    verification, drills."""


class RecoverCatalog(RestorePointCatalog, AuditCatalog, Protocol):
    """What ``recover`` uses (``ops/restore/recover.py``): restore points to aim at, the audit
    record of the restore."""


class MigrationGuardCatalog(MigrationCatalog, AuditCatalog, Protocol):
    """What ``migrate`` uses (``migrate/guard.py``): its run records and their audit records."""


class DryRunCatalog(MigrationGuardCatalog, DrillJobCatalog, Protocol):
    """What ``migrate --dry-run`` uses (``migrate/dryrun.py``): a guarded run rehearsed on a
    restore drill."""


class Catalog(
    BackupCatalog,
    RunCatalog,
    RestorePointCatalog,
    DeletionCatalog,
    VerificationCatalog,
    DrillCatalog,
    MigrationCatalog,
    AuditCatalog,
    ScopeCatalog,
    FleetCatalog,
    CatalogDatabase,
    Protocol,
):
    """Every role at once: the catalog wiring opens (``catalog/sql.py``: ``SqlCatalog``) and
    hands to the daemon and the commands, which pass each use case the roles it needs."""


ROLES: tuple[type[Any], ...] = (
    BackupCatalog,
    RunCatalog,
    RestorePointCatalog,
    DeletionCatalog,
    VerificationCatalog,
    DrillCatalog,
    MigrationCatalog,
    AuditCatalog,
    ScopeCatalog,
    FleetCatalog,
    CatalogDatabase,
)
"""The roles ``Catalog`` unites, for the conformance test."""
