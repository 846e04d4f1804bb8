"""``check_repository``: what ``verify --all`` reads besides the backups themselves.

Every object kind of the repository is read and proven, not only the chunks and manifests of
backups:

- ``repo.json``: parses, is this repository (its id), and equals what ``repo.seal`` recorded;
- ``repo.seal`` (repository/seal.py): authenticates; the key files and ``repo.json`` match it;
- key files ``keys/<kek-id>.json``: well formed, named after their id; the key that opened the
  repository unwraps the master key again from the file as it is now;
- keyset versions ``keys/keyset/<seq>.json``: each opens under the master key and its own seq
  (a version replayed under another name does not);
- everything under ``<cluster>/`` that the backups did not already read: WAL segments (a segment
  header of this cluster, the right size), ``.history`` and ``.backup`` files, ``identity.json``,
  chunks no manifest names; the WAL archive has no gap, every timeline after the first has its
  ``.history`` file, and WAL without ``identity.json`` is a fault;
- the audit objects ``audit/...`` (ops/audit.py ``check_audit_copy``), also against the catalog;
- the catalog against the repository: a backup the catalog records as succeeded (and retention
  has not expired: expiring removes the row) whose manifest is gone is a fault naming it; a
  manifest the catalog does not know is a warning (``catalog rebuild`` adds it).

A fault here is something a kept backup, the WAL chain, a key or the audit trail needs; a bad
object nothing needs (a chunk of a crashed backup) is a warning.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from contentflow_backupd.catalog.base import AuditCatalog, BackupAuditCatalog, BackupCatalog
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.model import Scope
from contentflow_backupd.ops.audit import check_audit_copy
from contentflow_backupd.ops.verify.backups import ordered_map
from contentflow_backupd.ops.verify.sweep_index import (
    IDENTITY,
    ClusterIndex,
    build_index,
    check_object,
    describe,
    is_fault,
)
from contentflow_backupd.ops.wal.archive import check_wal_chain
from contentflow_backupd.repository import layout
from contentflow_backupd.repository.crypto import open_keyset, unwrap_master
from contentflow_backupd.repository.keys import KEYSET_PREFIX, USED_PREFIX
from contentflow_backupd.repository.repository import Repository, RepositoryConfig
from contentflow_backupd.repository.seal import SEAL_KEY, check_seal, write_seal
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.wal import (
    DEFAULT_SEGMENT_SIZE,
    Segment,
    classify,
    history_name,
    parse_lsn,
    parse_segment,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RepoFault:
    key: str
    problem: str
    needed_by: str
    """Who needs the object: backup ids, ``the WAL archive``, ``the keys``, ``the audit trail``,
    ``the repository``, or ``the catalog``."""

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "problem": self.problem, "needed_by": self.needed_by}


@dataclass
class RepositoryCheck:
    objects_checked: int = 0
    bytes_read: int = 0
    faults: list[RepoFault] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    """Objects read per kind."""

    @property
    def ok(self) -> bool:
        return not self.faults

    def fault(self, key: str, problem: str, needed_by: str) -> None:
        self.faults.append(RepoFault(key, problem, needed_by))

    def count(self, kind: str, n: int = 1) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + n
        self.objects_checked += n

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "faulty",
            "objects_checked": self.objects_checked,
            "objects_by_kind": dict(sorted(self.kinds.items())),
            "bytes_read": self.bytes_read,
            "faults": [f.to_json() for f in self.faults],
            "warnings": list(self.warnings),
        }


def catalog_backup_ids(catalog: BackupCatalog, scope: Scope) -> list[str]:
    """The backups the catalog records as succeeded for this repository and cluster (retention
    removes the rows of the backups it expires; rows of another repository are not this one's).
    The one place ``verify`` asks the catalog for its backups."""
    return [r.id for r in catalog.list_backups(scope, ["succeeded"])]


def check_repository(
    repo: Repository,
    cluster: str,
    *,
    already_read: Collection[str] = (),
    catalog: BackupAuditCatalog | None = None,
    concurrency: int = 8,
) -> RepositoryCheck:
    """Read and prove every object kind (see the module docstring). ``already_read``: keys the
    backup verification read in full (not read twice). Storage errors propagate."""
    index = build_index(repo, cluster)
    check = check_metadata(repo, cluster, index, catalog)
    _read_cluster_objects(repo, cluster, index, check, set(already_read), concurrency)
    _log(check)
    return check


def check_metadata(
    repo: Repository, cluster: str, index: ClusterIndex, catalog: BackupAuditCatalog | None
) -> RepositoryCheck:
    """Everything but reading the objects under ``<cluster>/``: ``repo.json`` and its seal, the
    keys and keyset versions, the audit objects, the shape of the WAL archive (gaps, history
    files, identity) from ``index``'s listing, and the catalog against the manifests. Small and
    read in full on every run of ``verify --since-last`` too."""
    check = RepositoryCheck()
    _check_config_and_seal(repo, check)
    _check_keys(repo, check)
    _check_wal_chain(repo, cluster, index.listing.keys(), index.wal_starts, check)
    if catalog is not None:
        _cross_check_catalog(
            Scope(repo.id, cluster), catalog, set(index.manifests) | set(index.unreadable), check
        )
    _check_audit(repo, catalog, check)
    return check


def _log(check: RepositoryCheck) -> None:
    for f in check.faults:
        log.error("repository_object_faulty", key=f.key, problem=f.problem, needed_by=f.needed_by)
    for w in check.warnings:
        log.warning("repository_check_warning", warning=w)


def _check_config_and_seal(repo: Repository, check: RepositoryCheck) -> None:
    key = layout.REPO_FILE
    check.count("repo.json")
    try:
        config = RepositoryConfig.parse(repo.storage.get(key), repo.storage.url)
    except (BackupdError, KeyError, TypeError, ValueError) as exc:
        check.fault(key, f"unreadable: {describe(exc)}", "the repository")
        config = None
    if config is not None and config.repository_id != repo.id:
        check.fault(key, f"names repository {config.repository_id}, not {repo.id}", "the repository")
    check.count("repo.seal")
    seal = check_seal(repo)
    if not seal.present:
        write_seal(repo)
        check.warnings.append(
            f"{SEAL_KEY} was missing (a repository created before it existed, or the object was "
            f"removed): it now records the current {key} and key files"
        )
    for what, problem in seal.problems.items():
        check.fault(what, f"{problem} ({SEAL_KEY})", "the keys" if what != key else "the repository")


def _check_keys(repo: Repository, check: RepositoryCheck) -> None:
    opened = repo.opened_keys
    for info in repo.storage.list(layout.KEYS_PREFIX):
        key = info.key
        if key.startswith(USED_PREFIX):
            continue  # last-use marks: descriptive, nothing needs them
        if key.startswith(KEYSET_PREFIX):
            check.count("keyset")
            _check_keyset_version(repo, key, check)
            continue
        rest = key[len(layout.KEYS_PREFIX) :]
        if "/" in rest or not rest.endswith(".json"):
            check.warnings.append(f"{key}: not a key file, a keyset version or a last-use mark")
            continue
        check.count("key file")
        kek_id = rest[: -len(".json")]
        try:
            doc = json.loads(repo.storage.get(key))
            if not isinstance(doc, dict) or doc.get("id") != kek_id:
                raise ValueError(f"it does not describe key {kek_id}")
            if not isinstance(doc.get("kdf"), dict) or not isinstance(doc.get("kind"), str):
                raise ValueError("it has no kind or key derivation")
            wrapped = doc.get("wrapped_master") or doc.get("wrapped_keyset")
            if not isinstance(wrapped, str):
                raise ValueError("it holds no wrapped key")
            mine = opened is not None and kek_id == opened.kek_id and opened.master is not None
            if mine and opened is not None:
                master = unwrap_master(str(doc["wrapped_master"]), opened.kek, repo.id, kek_id)
                if master != opened.master:
                    raise ValueError("it wraps another master key")
        except (BackupdError, ValueError, KeyError, TypeError) as exc:
            check.fault(key, f"key file unreadable: {describe(exc)}", "the keys")


def _check_keyset_version(repo: Repository, key: str, check: RepositoryCheck) -> None:
    name = key[len(KEYSET_PREFIX) :]
    opened = repo.opened_keys
    try:
        if not name.endswith(".json") or not name[:-5].isdigit():
            raise ValueError("not a keyset version name")
        seq = int(name[:-5])
        doc = json.loads(repo.storage.get(key))
        if not isinstance(doc, dict) or doc.get("seq") != seq or doc.get("format") != 2:
            raise ValueError(f"it does not describe keyset version {seq}")
        if opened is not None and opened.master is not None:
            keyset = open_keyset(str(doc["wrapped_keyset"]), opened.master, repo.id, seq)
            if seq == opened.seq and keyset.to_bytes() != opened.keyset.to_bytes():
                raise ValueError("it differs from the keyset this process opened")
    except (BackupdError, ValueError, KeyError, TypeError) as exc:
        check.fault(key, f"keyset version unreadable: {describe(exc)}", "the keys")


def _kind_of(cluster: str, key: str) -> str:
    rest = key[len(cluster) + 1 :]
    if rest.startswith("chunks/"):
        return "pack index" if key.endswith(layout.PACK_INDEX) else "chunk"
    if rest.startswith("wal/"):
        return {"history": ".history", "backup": "WAL .backup"}.get(
            str(classify(key.rsplit("/", 1)[-1])), "WAL"
        )
    if rest == IDENTITY:
        return IDENTITY
    if layout.backup_id_from_manifest_key(cluster, key):
        return "manifest"
    return "other"


def _read_cluster_objects(
    repo: Repository,
    cluster: str,
    index: ClusterIndex,
    check: RepositoryCheck,
    already_read: set[str],
    concurrency: int,
) -> None:
    keys = [k for k in index.listing if k not in already_read and k not in index.manifest_keys]
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="verify-repo") as pool:
        for key, outcome in ordered_map(pool, lambda k: check_object(repo, index, k), keys, concurrency * 2):
            check.count(_kind_of(cluster, key))
            if isinstance(outcome, BaseException):
                if not is_fault(outcome):
                    raise outcome
                needed, ids = index.needed_by(key)
                if needed:
                    check.fault(key, describe(outcome), ", ".join(ids) or "the WAL archive")
                else:
                    check.warnings.append(f"{key}: {describe(outcome)} (no kept backup needs it)")
            else:
                check.bytes_read += outcome


def _check_wal_chain(
    repo: Repository,
    cluster: str,
    listed: Collection[str],
    wal_starts: list[tuple[str, str]],
    check: RepositoryCheck,
) -> None:
    archive = WalArchive(repo, cluster)
    names = [k.rsplit("/", 1)[-1] for k in listed if k.startswith(archive.prefix())]
    segments = [n for n in names if classify(n) == "segment"]
    if segments and f"{cluster}/{IDENTITY}" not in listed:
        check.fault(
            f"{cluster}/{IDENTITY}", "missing, while the WAL archive holds segments", "the WAL archive"
        )
    starts = sorted(first for first, _bid in wal_starts)
    start = parse_segment(starts[0], DEFAULT_SEGMENT_SIZE) if starts else None
    report = check_wal_chain(archive, start)
    for gap in report.gaps:
        check.fault(
            archive.key(gap.missing_from),
            f"WAL archive gap on timeline {gap.timeline}: {gap.missing_from} .. {gap.missing_to} missing",
            "the WAL archive",
        )
    timelines = {parse_segment(n, DEFAULT_SEGMENT_SIZE).timeline for n in segments}
    for tli in sorted(t for t in timelines if t > 1):
        if history_name(tli) not in names:
            check.fault(
                archive.key(history_name(tli)),
                f"missing: timeline {tli} has segments but no history file",
                "the WAL archive",
            )
    _check_switch_points(archive, names, segments, check)


def _check_switch_points(
    archive: WalArchive, names: list[str], segments: list[str], check: RepositoryCheck
) -> None:
    """Every timeline a ``.history`` file branches from holds its WAL up to the switch point (the
    last segment before the one the switch happened in: recovery follows the parent timeline up
    to there), and the new timeline's WAL starts with the segment of the switch."""
    newest: dict[int, int] = {}
    oldest: dict[int, int] = {}
    for n in segments:
        seg = parse_segment(n, DEFAULT_SEGMENT_SIZE)
        newest[seg.timeline] = max(newest.get(seg.timeline, -1), seg.number)
        oldest[seg.timeline] = min(oldest.get(seg.timeline, seg.number), seg.number)
    for name in names:
        if classify(name) != "history":
            continue
        try:
            lines = [ln.split() for ln in archive.fetch(name).decode().splitlines() if ln.strip()]
            parent, switch = int(lines[-1][0]), parse_lsn(lines[-1][1])
        except (BackupdError, ValueError, IndexError, UnicodeDecodeError):
            continue  # a damaged history file is reported when it is read
        child = int(name[:8], 16)
        first = switch // DEFAULT_SEGMENT_SIZE  # the new timeline starts in this segment
        if child in oldest and oldest[child] > first:
            check.fault(
                archive.key(Segment(child, first).name(DEFAULT_SEGMENT_SIZE)),
                f"missing: timeline {child} starts at {lines[-1][1]} ({name}), but its segments begin "
                f"at {oldest[child]:X}",
                "the WAL archive",
            )
        needed = first - 1  # the switch's own segment is the new timeline's
        if parent in newest and newest[parent] < needed:
            missing = Segment(parent, newest[parent] + 1).name(DEFAULT_SEGMENT_SIZE)
            check.fault(
                archive.key(missing),
                f"missing: timeline {parent} ends at segment {newest[parent]:X}, before its switch to a "
                f"new timeline in {name} (WAL up to {lines[-1][1]} is needed)",
                "the WAL archive",
            )


def _cross_check_catalog(
    scope: Scope, catalog: BackupCatalog, stored: set[str], check: RepositoryCheck
) -> None:
    cluster = scope.cluster
    recorded = set(catalog_backup_ids(catalog, scope))
    for bid in sorted(recorded - stored):
        check.fault(
            layout.manifest_key(cluster, bid),
            f"backup {bid} is recorded in the catalog as succeeded, but its manifest is gone "
            "from the repository (the backup is lost)",
            "the catalog",
        )
    unknown = sorted(stored - recorded)
    if unknown:
        check.warnings.append(
            f"{len(unknown)} backup(s) in the repository are not in the catalog ({', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}): run `contentflow-backupd catalog rebuild`"
        )


def _check_audit(repo: Repository, catalog: AuditCatalog | None, check: RepositoryCheck) -> None:
    copy = check_audit_copy(repo, catalog)
    check.count("audit", copy.objects)
    for p in copy.problems:
        check.fault(p.key or "audit/", p.problem, "the audit trail")
    if copy.first_difference is not None:
        check.fault("audit/", copy.first_difference.problem, "the audit trail")
    for key in copy.unknown:
        check.warnings.append(f"{key}: not an audit object name (not read)")
