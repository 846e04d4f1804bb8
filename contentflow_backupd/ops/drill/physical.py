"""The physical half of a restore drill (``ops/drill/run.py``): the random target, the restore into
the scratch data directory, ``pg_verifybackup``, and following recovery to the target.

The random target is a WAL position (``recovery_target_lsn``), not a time: a time target needs a
commit after it in the archived WAL, which an idle database does not have, whereas any WAL record
at or after a position ends recovery there. It is drawn between the backup's stop position and
the start of the newest archived segment of the unbroken WAL chain that follows the backup, so a
record after it is always archived.
"""

from __future__ import annotations

import random
import threading
import time
from typing import TYPE_CHECKING

from contentflow_backupd.model import iso
from contentflow_backupd.observability import progress
from contentflow_backupd.ops.drill.checks import CheckLog, CheckResult, run_checks
from contentflow_backupd.ops.drill.workspace import Workspace
from contentflow_backupd.ops.restore.physical import PhysicalRestoreOptions, restore_physical
from contentflow_backupd.ops.restore.plan import ArchiveView
from contentflow_backupd.ops.restore.target import RecoveryTarget
from contentflow_backupd.ops.restore.timeline import Span, timeline_at
from contentflow_backupd.repository.manifest import Manifest
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.source.base import PostgresDrivers, ServerState
from contentflow_backupd.wal import Segment, format_lsn, parse_lsn, parse_segment

if TYPE_CHECKING:
    from contentflow_backupd.ops.drill.run import DrillOptions, DrillResult


def random_lsn(archive: WalArchive, manifest: Manifest, rng: random.Random) -> int | None:
    """A random position between the backup's stop and the start of the newest segment of the
    unbroken archived chain after it (on the newest timeline's history); None when no segment
    after the backup's last one is archived yet."""
    d = manifest.details
    size, tli = int(d["wal_segment_size"]), int(d["timeline"])
    stop = parse_lsn(d["stop_lsn"])
    view = ArchiveView(archive)
    path = view.path(view.newest_timeline(tli)) or [Span(tli, 0, None)]
    last_needed = parse_segment(d["wal_last"], size).number
    segno = last_needed + 1
    while True:
        on = timeline_at(path, segno, size)
        if Segment(on, segno).name(size) not in view.listing(on):
            break
        segno += 1
    newest = segno - 1
    if newest <= last_needed or newest * size <= stop:
        return None
    return rng.randrange(stop, newest * size)


def _physical_target(
    archive: WalArchive, manifest: Manifest, opts: DrillOptions, rng: random.Random
) -> tuple[RecoveryTarget, str]:
    if opts.target_time is None or opts.target_time == "none":
        return RecoveryTarget(), "the end of the WAL archive"
    if opts.target_time != "random":
        target = RecoveryTarget.parse(time=opts.target_time, action="promote")
        return target, target.describe()
    lsn = random_lsn(archive, manifest, rng)
    if lsn is None:
        note = "the end of the WAL archive (no WAL archived after the backup yet: no random point to pick)"
        return RecoveryTarget(), note
    target = RecoveryTarget.parse(lsn=format_lsn(lsn), action="promote")
    return target, f"{target.describe()} (random)"


def drill_physical(
    repo: Repository,
    opts: DrillOptions,
    manifest: Manifest,
    ws: Workspace,
    result: DrillResult,
    t0: float,
    cancel: threading.Event | None,
    pg: PostgresDrivers,
) -> None:
    """The physical drill, its results added to ``result``; the server is ``ws.server``."""
    step = CheckLog(result.checks)
    d = manifest.details
    major = int(d.get("pg_version_num", 0)) // 10000
    archive = WalArchive(repo, opts.cluster)
    try:
        target, result.target = _physical_target(archive, manifest, opts, random.Random(opts.seed))
        owner = pg.scratch.owner()
        pg.scratch.check_reachable(ws.path, owner)
        bin_dir = pg.scratch.bin_dir(major, opts.pg_bin, opts.client_bin)
        ws.note(bin_dir=bin_dir)
        restored = restore_physical(
            repo,
            archive,
            PhysicalRestoreOptions(
                cluster=opts.cluster,
                backup=manifest.id,
                pgdata=ws.pgdata,
                target=target,
                tool=list(opts.tool),
                recovery=opts.recovery,
                owner=None if owner.is_me else owner.name,
                keep_archiving=False,
                concurrency=opts.concurrency,
                pg_bin=opts.client_bin or bin_dir,
            ),
            pg=pg,
        )
    except Exception as exc:  # noqa: BLE001 - a drill reports every failure as a check
        step.fail("restore", exc)
        return
    result.restored_bytes = restored.restored_bytes
    step.restore_passed(
        manifest.id,
        f"{restored.restored_bytes} bytes, {restored.files} files",
        restored.duration_seconds,
        then=(
            f", combined with pg_combinebackup from its native chain {', '.join(restored.chain)}"
            if restored.chain
            else ""
        )
        + f"; recovery to {target.describe()} on timeline {restored.timeline}",
    )
    t_verify = time.monotonic()
    progress.phase("pg_verifybackup", quiet_s=progress.UNMEASURED)
    verdict, detail = pg.scratch.verify_backup(ws.pgdata, bin_dir, opts.client_bin, major)
    step.add(CheckResult("pg_verifybackup", verdict, detail))
    not_rto = time.monotonic() - t_verify
    server = pg.scratch.server(
        ws.pgdata, ws.run_dir, bin_dir, owner, superuser=str(d.get("bootstrap_superuser") or "postgres")
    )
    ws.server = server
    dbname = manifest.database or "postgres"
    try:
        server.make_run_dir()
        server.configure()
        progress.phase("replaying WAL", quiet_s=progress.UNMEASURED)
        server.start()
        state = server.wait_ready(
            dbname, promoted=True, timeout=opts.ready_timeout, cancelled=cancel.is_set if cancel else None
        )
    except Exception as exc:  # noqa: BLE001 - a drill reports every failure as a check
        step.fail("recovery", exc)
        return
    result.rto_seconds = time.monotonic() - t0 - not_rto
    step.add(recovery_check(target, state, result.rto_seconds))
    progress.phase("checking", quiet_s=progress.UNMEASURED)
    step.extend(run_checks(pg.facts, server.conninfo(dbname), d, opts.checks_file, create_extensions=True))
    if opts.on_ready is not None:
        opts.on_ready(server.conninfo(dbname))


def recovery_check(target: RecoveryTarget, state: ServerState, rto: float) -> CheckResult:
    """Did recovery reach ``target``? PostgreSQL (13+) refuses to end recovery short of a target,
    so a promoted server has reached it; the replayed position and commit time are checked too."""
    where = f"recovery ended at {state.replay_lsn or '?'} on timeline {state.timeline}"
    if state.last_replayed_commit is not None:
        where += f", last replayed commit at {iso(state.last_replayed_commit)}"
    ready = f"; the server answered queries {rto:.1f}s after the drill started"
    if state.in_recovery:
        return CheckResult("recovery", "failed", f"the server is still in recovery: {where}")
    if (
        target.kind == "lsn"
        and target.lsn is not None
        and (state.replay_lsn is None or parse_lsn(state.replay_lsn) < target.lsn)
    ):
        return CheckResult("recovery", "failed", f"the target {target.describe()} was not reached: {where}")
    last = state.last_replayed_commit
    if target.kind == "time" and target.time is not None and last is not None and last > target.time:
        return CheckResult(
            "recovery", "failed", f"recovery went past the target {target.describe()}: {where}"
        )
    return CheckResult("recovery", "passed", f"reached {target.describe()}: {where}{ready}")
