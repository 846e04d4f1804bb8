"""``migrate batch``: a data change run in key-ordered batches, each its own short transaction,
resumable after a crash or Ctrl-C, with every row in the key range changed exactly once.

Batches. The first ``lo`` is min(key) (or, resuming, the checkpoint's last committed bound).
Each batch's ``hi`` is the key of the (N+1)-th row with key >= lo; the statement runs with
``:lo``/``:hi`` bound as parameters, so batches are the disjoint, contiguous ranges
[lo, hi). The last batch (fewer than N+1 rows left) binds ``:hi`` to max(key) + 1 for integer
keys (smallint, integer, bigint); any other orderable key binds ``:hi`` to NULL and the
statement must say ``(:hi IS NULL OR key < :hi)`` (refused otherwise). Rows inserted behind the
cursor during the run (keys below the current ``lo``), and past max(key) after the last batch
began, are not visited.

Exactly once, with nothing written into the user's database. Inside each batch's transaction,
after the statement and before COMMIT, the catalog checkpoint records the batch in flight
(lo, hi, row count and the transaction id); after COMMIT it records the batch as done. A batch
found in flight on start is settled by ``pg_xact_status`` of its transaction: committed ->
counted, aborted (or lost by a server crash) -> run again, in progress -> waited for, unknown
(too old) -> the user decides with ``--resolve-in-flight``. A session advisory lock keeps two
runners off one job.

Stopping. ``stop`` (set by the first SIGINT/SIGTERM) ends the run after the current batch; the
summary's status is then ``interrupted``. A ``KeyboardInterrupt`` (the second signal) rolls back
the current batch. Either way the checkpoint is saved and the same command resumes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from contentflow_backupd.backoff import Backoff
from contentflow_backupd.catalog.base import MigrationCatalog
from contentflow_backupd.catalog.guard_records import BatchCheckpoint
from contentflow_backupd.errors import LockedError, SourceError, UsageError
from contentflow_backupd.migrate.batch_progress import BatchProgress
from contentflow_backupd.migrate.batch_rules import (
    InFlight,
    JobState,
    Lag,
    advisory_lock_key,
    archive_lag,
    check_key_support,
    in_flight_action,
    job_id,
    parse_statement,
    parse_table_name,
    sql_sha256,
)
from contentflow_backupd.model import utcnow
from contentflow_backupd.source.batch_db import BatchSession, BatchTable, SqlTemplate, TransientBatchError
from contentflow_backupd.source.conninfo import ConnInfo

log = structlog.get_logger(__name__)

LOCK_WAIT_SECONDS = 30.0
"""How long a run waits for the job's advisory lock (a killed runner's session may still be ending)."""
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class BatchOptions:
    sql: str
    """The statement's text (its sha256 is part of the job's identity)."""
    table: str
    key: str
    batch_size: int
    cluster: str
    sleep: float = 0.0
    max_lag: int | None = None
    restart: bool = False
    resolve_in_flight: Literal["committed", "aborted"] | None = None
    lock_timeout: float = 5.0
    statement_timeout: float | None = None
    lock_retries: int = 3
    """Attempts after the first when a batch hits ``lock_timeout`` (or a deadlock), waiting
    ``lock_timeout`` before the first retry and twice as long before each next one."""


@dataclass
class BatchSummary:
    status: Literal["finished", "already_finished", "interrupted"]
    job: str
    table: str
    key: str
    batches: int
    """Batches committed by this run."""
    rows: int
    """Rows the statement changed in this run."""
    duration_seconds: float
    resumed_from: Any
    """The key this run started from when it resumed a checkpoint; None for a fresh start."""
    total_batches: int
    total_rows: int
    last_key: Any

    @property
    def rate(self) -> float:
        return round(self.rows / self.duration_seconds, 1) if self.duration_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["duration_seconds"] = round(self.duration_seconds, 3)
        out["rate"] = self.rate
        return out


def lock_retry_policy(opts: BatchOptions) -> Backoff:
    """A batch that hits ``lock_timeout`` is tried ``lock_retries`` more times, waiting
    ``lock_timeout`` (at least 0.1 s) before the first retry and twice as long before each next."""
    return Backoff(first=max(0.1, opts.lock_timeout), attempts=opts.lock_retries + 1)


class StopFlag:
    """Set by a signal handler, read by the batch loop. No lock: ``threading.Event.set`` in a
    handler deadlocks when the signal lands while the same thread holds the Event's lock inside
    ``Event.wait``. ``wait`` sleeps in short steps instead."""

    STEP_SECONDS = 0.05

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True as soon as the flag is set."""
        deadline = time.monotonic() + timeout
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, self.STEP_SECONDS))
        return True


class _Interrupted(Exception):
    pass


class _Job:
    """One run of a job: the session, the checkpoint and the counters of this run."""

    def __init__(
        self,
        session: BatchSession,
        catalog: MigrationCatalog,
        opts: BatchOptions,
        table: BatchTable,
        template: SqlTemplate,
        checkpoint: BatchCheckpoint,
        stop: StopFlag,
    ) -> None:
        self.session, self.catalog, self.opts = session, catalog, opts
        self.table, self.template, self.cp, self.stop = table, template, checkpoint, stop
        self.state = JobState.from_details(checkpoint.details)
        self.batches = self.rows = 0

    @property
    def finished(self) -> bool:
        return self.cp.status == "finished"

    def mark_finished(self) -> None:
        self.cp.status, self.cp.finished_at = "finished", utcnow()

    def save(self) -> None:
        self.cp.details = self.state.to_details()
        self.cp.updated_at = utcnow()
        self.catalog.save_batch(self.cp)

    def wait(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise _Interrupted

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise _Interrupted

    # -- a batch left in flight ---------------------------------------------------------------
    def settle_in_flight(self) -> None:
        """Decide the fate of the recorded batch in flight (see the module docstring)."""
        waited = 0.0
        while (f := self.state.in_flight) is not None:
            status = self.session.xact_status(f.xid)
            action = in_flight_action(status, self.opts.resolve_in_flight)
            if action == "wait":
                if waited % 10 == 0:
                    log.info("batch_in_flight_waiting", xid=f.xid, lo=f.lo, hi=f.hi)
                self.wait(POLL_SECONDS)
                waited += POLL_SECONDS
                continue
            if action == "ask":
                raise SourceError(
                    f"cannot tell whether the batch from {f.lo!r} to {f.hi!r} committed: the server no "
                    f"longer knows transaction {f.xid}",
                    hint=f"check the rows of {self.table.display} in that key range, then run the "
                    "same command with --resolve-in-flight committed (they were changed) or aborted "
                    "(they were not)",
                )
            log.info("batch_in_flight_settled", xid=f.xid, status=status, lo=f.lo, hi=f.hi, action=action)
            if action == "done":
                if self.state.commit_in_flight():
                    self.mark_finished()
            else:
                self.state.in_flight = None
            self.save()

    # -- the loop -------------------------------------------------------------------------------
    def throttle(self) -> None:
        if self.opts.max_lag is None:
            return
        while True:
            wal = self.session.wal()
            lag = Lag(
                wal.replica_lag,
                archive_lag(
                    wal.current_lsn,
                    wal.archive_mode,
                    wal.last_archived_wal,
                    wal.failed_count,
                    wal.segment_size,
                ),
            )
            if not lag.over(self.opts.max_lag):
                return
            log.info(
                "batch_throttled",
                lag_bytes=lag.worst,
                replica_lag_bytes=lag.replica_bytes,
                archive_lag_bytes=lag.archive_bytes,
                max_lag_bytes=self.opts.max_lag,
            )
            self.wait(max(POLL_SECONDS, self.opts.sleep))

    def one_batch(self, lo: Any, hi: Any, final: bool) -> None:
        """Run [lo, hi) with retries on lock timeouts; record it in flight, then done."""

        def before_commit(xid: str, rows: int) -> None:
            self.state.in_flight = InFlight(lo, hi, xid, rows, final)
            self.save()

        policy = lock_retry_policy(self.opts)
        attempt = 0
        while True:
            try:
                rows = self.session.run_batch(
                    self.table,
                    self.template,
                    lo,
                    hi,
                    lock_timeout_ms=int(self.opts.lock_timeout * 1000),
                    statement_timeout_ms=None
                    if self.opts.statement_timeout is None
                    else int(self.opts.statement_timeout * 1000),
                    before_commit=before_commit,
                )
                break
            except TransientBatchError as exc:
                self.settle_after_error()
                attempt += 1
                if not policy.may_retry(attempt):
                    raise LockedError(
                        f"the batch from {lo!r} of {self.table.display} failed {attempt} times "
                        f"({exc.reason}, lock_timeout {self.opts.lock_timeout:g}s); stopped, checkpoint kept",
                        hint="something holds locks on the table (see pg_locks and pg_stat_activity); "
                        "run the same command again to resume, or raise BACKUPD_MIGRATE__LOCK_TIMEOUT",
                    ) from None
                delay = policy.delay(attempt)
                log.warning("batch_retrying", reason=exc.reason, lo=lo, attempt=attempt, delay_seconds=delay)
                self.wait(delay)
            except SourceError:
                self.settle_after_error()
                raise
        done_final = self.state.commit_in_flight()
        if done_final:
            self.mark_finished()
        self.batches += 1
        self.rows += rows
        self.save()

    def settle_after_error(self) -> None:
        """After a failed batch: a batch recorded in flight is settled now if the server can
        tell, else left for the next run."""
        if self.state.in_flight is None:
            return
        try:
            self.settle_in_flight()
        except (SourceError, _Interrupted):
            log.warning("batch_in_flight_unsettled", xid=self.state.in_flight.xid)


def run_batch_job(
    info: ConnInfo,
    catalog: MigrationCatalog,
    opts: BatchOptions,
    *,
    stop: StopFlag,
    progress: Callable[[int], BatchProgress] | None = None,
) -> BatchSummary:
    """Run (or resume) the job; see the module docstring for the guarantees. ``UsageError`` for
    bad input (before anything is recorded), ``LockedError`` when another runner has the job or
    a batch keeps hitting ``lock_timeout``, ``SourceError`` when a batch fails. ``progress``
    makes the progress reporter from the estimated number of rows left."""
    if opts.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    statement = parse_statement(opts.sql)
    schema, name = parse_table_name(opts.table)
    started = time.monotonic()
    with BatchSession(info) as session:
        table = session.describe(schema, name, opts.key)
        check_key_support(statement, integer_key=table.integer_key, key=table.key)
        sql_hash = sql_sha256(opts.sql)
        job = job_id(opts.cluster, table.database, table.display, table.key, sql_hash)
        _lock(session, job, stop)
        cp = catalog.get_batch(job)
        if cp is not None and cp.status == "finished" and not opts.restart:
            state = JobState.from_details(cp.details)
            log.info("batch_already_finished", job=job, finished_at=str(cp.finished_at))
            return BatchSummary(
                "already_finished", job, table.display, table.key, 0, 0, 0.0, None,
                state.batches, state.rows, state.last,
            )  # fmt: skip
        resumed = cp is not None and not opts.restart
        if cp is None or opts.restart:
            now = utcnow()
            cp = BatchCheckpoint(
                job, opts.cluster, table.database, table.display, table.key, sql_hash, "running", now, now,
                details=JobState(key_type=table.key_type).to_details(),
            )  # fmt: skip
        run = _Job(session, catalog, opts, table, statement.template, cp, stop)
        lock_ms = int(opts.lock_timeout * 1000)
        if not session.check_statement(table, statement.template, run.state.last, lock_timeout_ms=lock_ms):
            log.warning("batch_sql_check_skipped", reason="lock_timeout", table=table.display)
        if not table.key_indexed:
            log.warning("batch_key_not_indexed", table=table.display, key=table.key)
        if not table.key_not_null:
            log.warning("batch_key_nullable", table=table.display, key=table.key)
        run.state.runs += 1
        resumed_from: Any = None
        reporter: BatchProgress | None = None
        status: Literal["finished", "interrupted"] = "interrupted"
        try:
            run.save()
            run.settle_in_flight()
            if not run.finished:
                if run.state.last is None:
                    run.state.start = run.state.last = session.first_key(table)
                elif resumed:
                    resumed_from = run.state.last
                total = 0 if run.state.last is None else session.count_from(table, run.state.last)
                log.info(
                    "batch_started", job=job, table=table.display, key=table.key,
                    resumed_from=resumed_from, rows_left=total, batch_size=opts.batch_size,
                )  # fmt: skip
                reporter = progress(total) if progress else None
                _loop(run, reporter)
            status = "finished" if run.finished else "interrupted"
        except (_Interrupted, KeyboardInterrupt) as exc:
            status = "interrupted"
            rolled_back = isinstance(exc, KeyboardInterrupt)
            log.info("batch_stopping", current_batch="rolled back" if rolled_back else "none running")
        finally:
            if reporter is not None:
                reporter.close()
            run.state.elapsed_seconds += time.monotonic() - started
            try:
                run.save()
            except Exception:  # the checkpoint in the catalog is consistent as last saved
                log.exception("batch_checkpoint_not_saved", job=job)
        summary = BatchSummary(
            status, job, table.display, table.key, run.batches, run.rows, time.monotonic() - started,
            resumed_from, run.state.batches, run.state.rows, run.state.last,
        )  # fmt: skip
        log.info("batch_" + status, **summary.to_json())
        return summary


def _loop(run: _Job, reporter: BatchProgress | None) -> None:
    opts = run.opts
    while not run.finished:
        run.check_stop()
        run.throttle()
        lo = run.state.last
        nxt = run.session.next_batch(run.table, lo, opts.batch_size)
        if nxt is None:
            run.mark_finished()
            run.save()
            break
        run.one_batch(lo, nxt.hi, nxt.final)
        if reporter is not None:
            reporter.update(batches=run.batches, covered=opts.batch_size, changed=run.rows, final=nxt.final)
        if opts.sleep > 0 and not run.finished:
            run.wait(opts.sleep)


def _lock(session: BatchSession, job: str, stop: StopFlag) -> None:
    key = advisory_lock_key(job)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    logged = False
    while not session.try_lock(key):
        if time.monotonic() > deadline:
            raise LockedError(
                f"another migrate batch is running this job ({job})",
                hint="wait for it to finish, or stop it (Ctrl-C); its checkpoint lets this command resume",
            )
        if not logged:
            log.info("batch_waiting_for_job_lock", job=job)
            logged = True
        if stop.wait(0.5):
            raise LockedError(f"stopped while waiting for the lock of job {job}")
