"""``verify_backups``: prove that backups can be read back, naming every faulty object.

Deep (default): every chunk is fetched, authenticated (AES-GCM tag), decompressed, its keyed hash
compared with its id, and each stream's digest recomputed. Quick: every object the manifest names
exists with the size it was stored with. In both, the manifest itself must open.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from contentflow_backupd.catalog.base import BackupAuditCatalog
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.observability import progress
from contentflow_backupd.ops.audit import audited
from contentflow_backupd.ops.backup.native import is_native
from contentflow_backupd.ops.verify.sweep_index import describe
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.manifest import ChunkRef, Manifest
from contentflow_backupd.repository.pipeline import ChunkReader, stream_digest
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.wal import DEFAULT_SEGMENT_SIZE, Segment, parse_segment

if TYPE_CHECKING:
    from contentflow_backupd.ops.verify.repo_check import RepositoryCheck

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Fault:
    backup_id: str
    key: str
    problem: str

    def to_json(self) -> dict[str, str]:
        return {"backup_id": self.backup_id, "key": self.key, "problem": self.problem}


@dataclass
class BackupCheck:
    backup_id: str
    objects_checked: int = 0
    bytes_read: int = 0
    faults: list[Fault] = field(default_factory=list)
    read_keys: set[str] = field(default_factory=set, repr=False)
    """Keys read in full (deep mode): the repository check does not read them again."""

    @property
    def ok(self) -> bool:
        return not self.faults

    def to_json(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "status": "ok" if self.ok else "faulty",
            "objects_checked": self.objects_checked,
            "bytes_read": self.bytes_read,
            "faults": [f.to_json() for f in self.faults],
        }


@dataclass
class VerifyReport:
    mode: str
    backups: list[BackupCheck]
    repository: RepositoryCheck | None = None
    """``verify --all``: every other object kind and the catalog (ops/verify/repo_check.py)."""

    @property
    def faults(self) -> list[Fault]:
        own = [f for b in self.backups for f in b.faults]
        if self.repository is not None:
            own += [Fault(f.needed_by, f.key, f.problem) for f in self.repository.faults]
        return own

    @property
    def ok(self) -> bool:
        return not self.faults

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "ok" if self.ok else "faulty",
            "mode": self.mode,
            "backups": [b.to_json() for b in self.backups],
            "faults": [f.to_json() for f in self.faults],
        }
        if self.repository is not None:
            out["repository"] = self.repository.to_json()
        return out


def ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int
) -> Iterator[tuple[T, R | BaseException]]:
    """``fn`` over ``items`` in parallel, results in input order, at most ``window`` in flight;
    an exception is yielded in place of its result."""
    pending: deque[tuple[T, Future[R]]] = deque()
    it = iter(items)

    def take() -> tuple[T, R | BaseException]:
        item, fut = pending.popleft()
        try:
            return item, fut.result()
        except Exception as exc:  # noqa: BLE001 - every fault is reported, not raised
            return item, exc

    for item in it:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            yield take()
    while pending:
        yield take()


def verify_backup(
    repo: Repository,
    cluster: str,
    backup_id: str,
    *,
    quick: bool,
    concurrency: int = 8,
    parent_check: Callable[[str], BackupCheck] | None = None,
) -> BackupCheck:
    """``parent_check``: how a native incremental's parent is checked (its chain is part of it:
    a fault of any backup it needs is reported for it too); default: verified here."""
    check = BackupCheck(backup_id)
    mkey = layout.manifest_key(cluster, backup_id)
    try:
        manifest = repo.read_manifest(cluster, backup_id)
    except BackupdError as exc:
        check.faults.append(Fault(backup_id, mkey, f"manifest unreadable: {exc.message}"))
        return check
    check.objects_checked += 1
    if quick:
        progress.phase(
            f"checking {backup_id}", total=len({r.id for r in manifest.chunk_refs()}), unit="objects"
        )
    else:
        progress.phase(f"reading {backup_id}", total=sum(s.size for s in manifest.streams))
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="verify") as pool:
        if quick:
            _quick(repo, manifest, check, pool, concurrency)
        else:
            _deep(repo, manifest, check, pool, concurrency)
        if manifest.mode == "physical":
            _consistency_wal(repo, manifest, check, pool, quick=quick)
    if is_native(manifest):
        _chain(repo, manifest, check, quick, concurrency, parent_check)
    if check.faults:
        log.error("backup_verification_failed", backup_id=backup_id, faults=len(check.faults))
    else:
        log.info("backup_verified", backup_id=backup_id, quick=quick, objects=check.objects_checked)
    return check


def _chain(
    repo: Repository,
    m: Manifest,
    check: BackupCheck,
    quick: bool,
    concurrency: int,
    parent_check: Callable[[str], BackupCheck] | None,
) -> None:
    """A native incremental is restored by combining it with its parent (and so on up to its
    base): a fault anywhere in that chain makes it unrestorable."""
    mkey = layout.manifest_key(m.cluster, m.id)
    if m.parent_id is None:
        check.faults.append(Fault(m.id, mkey, "native incremental backup names no parent backup"))
        return
    if parent_check is None:
        parent = verify_backup(repo, m.cluster, m.parent_id, quick=quick, concurrency=concurrency)
    else:
        parent = parent_check(m.parent_id)
    for fault in parent.faults:
        problem = f"its native chain needs backup {fault.backup_id}, which is faulty: {fault.problem}"
        check.faults.append(Fault(m.id, fault.key, problem))


def _quick(repo: Repository, m: Manifest, check: BackupCheck, pool: ThreadPoolExecutor, conc: int) -> None:
    reader = ChunkReader(repo, m.cluster, m.generation)
    packs = m.pack_sizes()
    expected: dict[str, int] = {}  # object key (a chunk's or a pack's) -> stored size
    for ref in m.chunk_refs():
        expected[reader.key_of(ref)] = ref.stored if ref.pack is None else packs.get(ref.pack, -1)
    for key, result in ordered_map(pool, repo.storage.stat, list(expected), conc * 4):
        check.objects_checked += 1
        progress.advance(1)
        if isinstance(result, BaseException):
            check.faults.append(Fault(m.id, key, describe(result)))
        elif result.size != expected[key]:
            check.faults.append(Fault(m.id, key, f"size {result.size}, expected {expected[key]}"))


def _deep(repo: Repository, m: Manifest, check: BackupCheck, pool: ThreadPoolExecutor, conc: int) -> None:
    reader = ChunkReader(repo, m.cluster, m.generation)
    mkey = layout.manifest_key(m.cluster, m.id)
    for stream in m.streams:
        digest = stream_digest()
        intact = True
        seen: set[str] = set()  # object keys (a pack holds many chunks)
        results = ordered_map(pool, reader.read_chunk, stream.chunks, conc * 2)
        for ref, result in results:
            key = reader.key_of(ref)
            first = key not in seen
            seen.add(key)
            if first:
                check.objects_checked += 1
                check.read_keys.add(key)
            if isinstance(result, BaseException):
                intact = False
                if not any(f.key == key for f in check.faults):
                    check.faults.append(Fault(m.id, key, describe(result)))
                continue
            check.bytes_read += len(result)
            progress.advance(len(result))
            if intact:
                digest.update(result)
        if intact and digest.hexdigest() != stream.digest:
            check.faults.append(Fault(m.id, mkey, f"stream {stream.name} does not match its digest"))


def _consistency_wal(
    repo: Repository, m: Manifest, check: BackupCheck, pool: ThreadPoolExecutor, *, quick: bool
) -> None:
    """A physical backup needs the WAL from its start to its stop LSN: it must be archived."""
    first, last = m.details.get("wal_first"), m.details.get("wal_last")
    if not first or not last:
        check.faults.append(Fault(m.id, layout.manifest_key(m.cluster, m.id), "manifest names no WAL range"))
        return
    size = int(m.details.get("wal_segment_size", DEFAULT_SEGMENT_SIZE))
    start, end = parse_segment(first, size), parse_segment(last, size)
    names = [Segment(start.timeline, n).name(size) for n in range(start.number, end.number + 1)]
    archive = WalArchive(repo, m.cluster)

    def probe(name: str) -> int:
        if quick:
            return repo.storage.stat(archive.key(name)).size
        return len(archive.fetch(name))

    for name, result in ordered_map(pool, probe, names, 8):
        check.objects_checked += 1
        if not quick:
            check.read_keys.add(archive.key(name))
        if isinstance(result, BaseException):
            check.faults.append(
                Fault(m.id, archive.key(name), f"WAL needed for consistency: {describe(result)}")
            )
        elif not quick:
            check.bytes_read += result


def verify_backups(
    repo: Repository,
    cluster: str,
    backup_ids: list[str],
    *,
    quick: bool,
    concurrency: int = 8,
    audit: BackupAuditCatalog | None = None,
    everything: bool = False,
) -> VerifyReport:
    """``audit``: the catalog to record the verification in (ops/audit.py) and, with
    ``everything``, to cross-check with the repository; None records nothing. ``everything``
    (``verify --all``, deep only): also read every other object kind (ops/verify/repo_check.py)."""
    from contentflow_backupd.ops.verify.repo_check import check_repository

    details: dict[str, Any] = {"cluster": cluster, "mode": "quick" if quick else "deep"}
    done: dict[str, BackupCheck] = {}

    def checked(backup_id: str) -> BackupCheck:
        """Each backup is read once, also when it is a link of several native chains."""
        if backup_id not in done:
            done[backup_id] = verify_backup(
                repo, cluster, backup_id, quick=quick, concurrency=concurrency, parent_check=checked
            )
        return done[backup_id]

    with audited(audit, "verify", objects=backup_ids, details=details, repo=repo) as recorded:
        report = VerifyReport(mode="quick" if quick else "deep", backups=[checked(b) for b in backup_ids])
        if everything and not quick:
            read = {k for b in report.backups for k in b.read_keys}
            report.repository = check_repository(
                repo, cluster, already_read=read, catalog=audit, concurrency=concurrency
            )
            recorded.details["scope"] = "all"
        if not report.ok:
            recorded.outcome = "failed"
            recorded.details["faults"] = [f"{f.backup_id} {f.key}: {f.problem}" for f in report.faults[:20]]
    return report


def missing_objects(repo: Repository, manifest: Manifest, concurrency: int = 8) -> list[Fault]:
    """Quick existence/size check of every object of ``manifest`` (used before a restore)."""
    check = BackupCheck(manifest.id)
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="stat") as pool:
        _quick(repo, manifest, check, pool, concurrency)
    return check.faults


__all__ = [
    "ChunkRef",
    "Fault",
    "VerifyReport",
    "missing_objects",
    "verify_backup",
    "verify_backups",
]
