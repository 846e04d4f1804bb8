"""The audit trail: ``record_event`` (called by every operation), its copy in the repository,
``verify_audit`` and the restore used by ``catalog rebuild``.

Records live in the catalog (``audit_events``, chained by hash: catalog/audit_records.py) and
are copied to the repository, encrypted like every other object, one object per flush::

    audit/<yyyy-mm-dd>/<first-seq>-<last-seq>-<hash12>.json   {"format": 1, "records": [...]}

(the date is the first record's, the hash the last record's). ``record_event`` with a ``repo``
flushes every record the repository does not hold yet (a command or job ends by recording its
outcome, so the copy is written when it ends). The catalog remembers per repository id how far
it has flushed; a catalog that never flushed to a repository first adopts the repository's
history (``restore_audit``), so that a new catalog continues the chain instead of forking it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import structlog

from contentflow_backupd.catalog.audit_records import AuditEvent, ChainBreak, find_break
from contentflow_backupd.catalog.base import AuditCatalog
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.repository.repository import Repository

log = structlog.get_logger(__name__)

AUDIT_PREFIX = "audit/"
OBJECT_FORMAT = 1
_OBJECT_KEY = re.compile(r"^audit/\d{4}-\d{2}-\d{2}/(\d{12})-(\d{12})-[0-9a-f]{12}\.json$")


def actor() -> str:
    """``user@host`` of this process (the uid when the user has no name)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def record_event(
    catalog: AuditCatalog,
    *,
    action: str,
    outcome: str,
    objects: Sequence[str] = (),
    details: Mapping[str, Any] | None = None,
    repo: Repository | None = None,
) -> None:
    """Append an audit record (who: this process's ``user@host``; when: now), log it as an
    ``audit`` event and, with ``repo``, copy every record the repository lacks to it.

    Never raises: a failure to audit is logged as an error (``audit_failed``) and the operation
    being audited goes on. ``details`` must hold no secret (it is stored and logged)."""
    try:
        event = catalog.append_audit_event(
            action=action, outcome=outcome, actor=actor(), objects=tuple(objects), details=details
        )
    except Exception as exc:  # noqa: BLE001 - auditing must not break the audited operation
        log.error("audit_failed", action=action, outcome=outcome, error=_message(exc))
        return
    log.info(
        "audit",
        seq=event.seq,
        actor=event.actor,
        action=event.action,
        outcome=event.outcome,
        objects=list(event.objects),
        details=dict(event.details),
    )
    if repo is not None:
        try:
            flush_audit(catalog, repo)
        except Exception as exc:  # noqa: BLE001
            log.error("audit_flush_failed", repository=repo.id, error=_message(exc))


def _nothing() -> None:
    return None


@dataclass
class AuditScope:
    """What ``audited`` will record: the block may add ``details`` and set ``outcome`` (e.g.
    ``failed`` for a verification that found faults without raising). ``begin()``: the
    operation's long part starts now (an ``AuditLater`` starts to open its catalog)."""

    details: dict[str, Any]
    outcome: str = "succeeded"
    begin: Callable[[], None] = _nothing


@runtime_checkable
class AuditLater(Protocol):
    """An audit catalog that opens while the operation runs (``restore --pgdata``,
    ``cli/restore.py``): ``start()`` starts opening it (``AuditScope.begin``), which takes a
    while (SQLAlchemy's import), and must not delay the operation; called, it waits for it (and
    starts it first if need be) and gives it, or None when it could not be opened (then nothing
    is recorded)."""

    def start(self) -> None: ...

    def __call__(self) -> AuditCatalog | None: ...


AuditTo = AuditCatalog | AuditLater | None
"""Where ``audited`` records: a catalog, one that opens while the operation runs, or None."""


@contextmanager
def audited(
    catalog: AuditTo,
    action: str,
    *,
    objects: Sequence[str] = (),
    details: Mapping[str, Any] | None = None,
    repo: Repository | None = None,
) -> Iterator[AuditScope]:
    """Record ``action`` when the block ends: ``scope.outcome`` (default ``succeeded``), or
    ``failed`` (``interrupted`` for a signal) with the error, which propagates. With ``catalog``
    None (or an ``AuditLater`` that gives None) nothing is recorded (a command that could not
    open its catalog)."""
    opened: Callable[[], AuditCatalog | None]
    if isinstance(catalog, AuditLater):
        opened, scope = catalog, AuditScope(dict(details or {}), begin=catalog.start)
    else:
        plain = catalog
        opened, scope = (lambda: plain), AuditScope(dict(details or {}))
    if catalog is None:
        yield scope
        return
    try:
        yield scope
    except BaseException as exc:
        outcome = "failed" if isinstance(exc, Exception) else "interrupted"
        scope.details["error"] = _message(exc)
        target = opened()
        if target is not None:
            record_event(
                target, action=action, outcome=outcome, objects=objects, details=scope.details, repo=repo
            )
        raise
    target = opened()
    if target is not None:
        record_event(
            target, action=action, outcome=scope.outcome, objects=objects, details=scope.details, repo=repo
        )


def flush_audit(catalog: AuditCatalog, repo: Repository) -> int:
    """Write the records ``repo`` does not hold yet as one object; returns how many."""
    mark = catalog.get_audit_flushed_seq(repo.id)
    if mark is None:
        stored = read_repository_events(repo)
        if stored:
            catalog.merge_audit_events(stored)
        mark = max((e.seq for e in stored), default=0)
    pending = catalog.list_audit_events(after_seq=mark)
    if pending:
        first, last = pending[0], pending[-1]
        body = {"format": OBJECT_FORMAT, "records": [e.to_json() for e in pending]}
        repo.put_object(object_key(first, last), json.dumps(body, separators=(",", ":")).encode())
        log.debug("audit_flushed", repository=repo.id, first_seq=first.seq, last_seq=last.seq)
    catalog.set_audit_flushed_seq(repo.id, pending[-1].seq if pending else mark)
    return len(pending)


def settings_digest(settings: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The SHA-256 of the whole settings view, and a digest per key (values are not recorded:
    only which keys changed)."""
    per_key = {k: hashlib.sha256(str(v).encode()).hexdigest()[:16] for k, v in sorted(settings.items())}
    whole = hashlib.sha256(json.dumps(per_key, sort_keys=True).encode()).hexdigest()
    return whole, per_key


def record_config(catalog: AuditCatalog, settings: Mapping[str, str], repo: Repository | None = None) -> bool:
    """At daemon start: record ``config_changed`` when the resolved settings (``settings``: name
    -> value with secrets masked, as ``config show`` prints them) differ from the last recorded
    ones, with the keys added, removed and changed. Returns whether a record was made. Never
    raises (as ``record_event``)."""
    whole, per_key = settings_digest(settings)
    try:
        last = catalog.list_audit_events(action="config_changed", limit=1, newest_first=True)
    except Exception as exc:  # noqa: BLE001
        log.error("audit_failed", action="config_changed", error=_message(exc))
        return False
    before: dict[str, str] = {}
    if last:
        if last[0].details.get("settings_sha256") == whole:
            return False
        before = dict(last[0].details.get("keys") or {})
    added = sorted(set(per_key) - set(before))
    removed = sorted(set(before) - set(per_key))
    modified = sorted(k for k in per_key.keys() & before.keys() if per_key[k] != before[k])
    details = {
        "settings_sha256": whole,
        "keys": per_key,
        "added": added,
        "removed": removed,
        "changed": modified,
        "first": not last,
    }
    changed = [*added, *removed, *modified]
    record_event(
        catalog, action="config_changed", outcome="succeeded", objects=changed, details=details, repo=repo
    )
    return True


def object_key(first: AuditEvent, last: AuditEvent) -> str:
    return f"{AUDIT_PREFIX}{first.at:%Y-%m-%d}/{first.seq:012d}-{last.seq:012d}-{last.hash[:12]}.json"


def read_repository_events(repo: Repository) -> list[AuditEvent]:
    """Every audit record the repository holds, by seq (one copy of each seq; an unreadable
    object is logged and skipped: ``verify_audit`` then finds the gap)."""
    found: dict[int, AuditEvent] = {}
    for info in repo.storage.list(AUDIT_PREFIX):
        if not _OBJECT_KEY.match(info.key):
            continue
        try:
            doc = json.loads(repo.get_object(info.key))
            events = [AuditEvent.from_json(r) for r in doc["records"]]
        except (BackupdError, ValueError, KeyError, TypeError) as exc:
            log.error("audit_object_unreadable", key=info.key, error=_message(exc))
            continue
        for event in events:
            found.setdefault(event.seq, event)
    return [found[seq] for seq in sorted(found)]


@dataclass(frozen=True)
class AuditRestore:
    """What ``restore_audit`` did: records found in the repository, imported into the catalog,
    and catalog-only records appended again after the repository's history."""

    found: int
    imported: int
    rechained: int

    def to_json(self) -> dict[str, int]:
        return {"found": self.found, "imported": self.imported, "rechained": self.rechained}


def restore_audit(catalog: AuditCatalog, repo: Repository) -> AuditRestore:
    """``catalog rebuild``: bring the repository's audit records back into the catalog, then
    copy back whatever only the catalog held. Raises on storage or catalog errors."""
    stored = read_repository_events(repo)
    imported, rechained = catalog.merge_audit_events(stored) if stored else (0, 0)
    if stored:
        catalog.set_audit_flushed_seq(repo.id, stored[-1].seq)
    flush_audit(catalog, repo)
    log.info("audit_restored", found=len(stored), imported=imported, rechained=rechained)
    return AuditRestore(found=len(stored), imported=imported, rechained=rechained)


@dataclass(frozen=True)
class AuditVerification:
    records: int
    broken: ChainBreak | None
    last_seq: int | None
    last_hash: str | None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "broken": None if self.broken is None else self.broken.to_json(),
        }


def verify_audit(catalog: AuditCatalog) -> AuditVerification:
    """Recompute the whole chain of the catalog's records."""
    events = catalog.list_audit_events()
    last = events[-1] if events else None
    return AuditVerification(
        records=len(events),
        broken=find_break(events),
        last_seq=None if last is None else last.seq,
        last_hash=None if last is None else last.hash,
    )


def list_events(catalog: AuditCatalog, *, since: datetime | None = None) -> list[AuditEvent]:
    return catalog.list_audit_events(since=since)


def _message(exc: BaseException) -> str:
    if isinstance(exc, BackupdError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


# -- the repository's copy ----------------------------------------------------------------------
@dataclass(frozen=True)
class CopyProblem:
    """One thing wrong with the repository's copy of the audit trail: the object (None: the
    chain as a whole), the record seq when one is concerned, and what is wrong."""

    key: str | None
    seq: int | None
    problem: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "seq": self.seq, "problem": self.problem}


@dataclass
class CopyCheck:
    objects: int = 0
    records: int = 0
    problems: list[CopyProblem] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    """Keys under ``audit/`` that are not audit objects (reported, not read)."""
    first_difference: CopyProblem | None = None
    """The first record where the catalog and the repository differ (None: they agree)."""

    @property
    def ok(self) -> bool:
        return not self.problems and self.first_difference is None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "objects": self.objects,
            "records": self.records,
            "problems": [p.to_json() for p in self.problems],
            "unknown": list(self.unknown),
            "first_difference": None if self.first_difference is None else self.first_difference.to_json(),
        }


def _read_audit_object(repo: Repository, key: str, first: int, last: int) -> list[AuditEvent]:
    """The records of one audit object, proven to be the ones its name says (raises ValueError
    or ``BackupdError`` naming the fault)."""
    doc = json.loads(repo.get_object(key))
    if not isinstance(doc, dict) or doc.get("format") != OBJECT_FORMAT:
        raise ValueError(f"not an audit object of format {OBJECT_FORMAT}")
    events = [AuditEvent.from_json(r) for r in doc["records"]]
    if not events:
        raise ValueError("holds no records")
    if events[0].seq != first or events[-1].seq != last or len(events) != last - first + 1:
        raise ValueError(
            f"its name says records {first}..{last}, it holds {events[0].seq}..{events[-1].seq} "
            f"({len(events)} records)"
        )
    if key != object_key(events[0], events[-1]):
        raise ValueError("its name does not match its records (date or last hash)")
    return events


def check_audit_copy(repo: Repository, catalog: AuditCatalog | None) -> CopyCheck:
    """Read every audit object of the repository and prove the copy: each object authenticates
    (AES-GCM under its own name) and holds the records its name says; together they form one
    unbroken chain from record 1; and, with ``catalog``, every record the catalog says it copied
    to this repository is there, identical to the catalog's (the first difference is named)."""
    check = CopyCheck()
    stored: dict[int, AuditEvent] = {}
    # How far the catalog has copied, read *before* the listing: a flush (another cluster's job
    # on this repository) puts its object, then moves the mark, so every record up to a mark read
    # first is in the listing. Read after it, a flush in between made its records "missing".
    flushed = None if catalog is None else catalog.get_audit_flushed_seq(repo.id)
    for info in repo.storage.list(AUDIT_PREFIX):
        match = _OBJECT_KEY.match(info.key)
        if match is None:
            check.unknown.append(info.key)
            continue
        check.objects += 1
        try:
            events = _read_audit_object(repo, info.key, int(match.group(1)), int(match.group(2)))
        except (BackupdError, ValueError, KeyError, TypeError) as exc:
            check.problems.append(CopyProblem(info.key, None, f"unreadable: {_message(exc)}"))
            continue
        for event in events:
            other = stored.setdefault(event.seq, event)
            if other.hash != event.hash:
                check.problems.append(
                    CopyProblem(info.key, event.seq, f"record {event.seq} differs from another copy of it")
                )
    chain = [stored[seq] for seq in sorted(stored)]
    check.records = len(chain)
    broken = find_break(chain)
    if broken is not None:
        check.problems.append(CopyProblem(None, broken.seq, f"record {broken.seq}: {broken.problem}"))
    if catalog is not None:
        check.first_difference = _first_difference(catalog, flushed, stored)
    return check


def _first_difference(
    catalog: AuditCatalog, flushed: int | None, stored: Mapping[int, AuditEvent]
) -> CopyProblem | None:
    if flushed is None:
        return None  # this catalog never copied its records to this repository
    mine = {e.seq: e for e in catalog.list_audit_events() if e.seq <= flushed}
    for seq in range(1, flushed + 1):
        ours, theirs = mine.get(seq), stored.get(seq)
        if ours is None and theirs is None:
            continue
        if theirs is None:
            return CopyProblem(
                None, seq, f"record {seq} is in the catalog but missing from the repository's copy"
            )
        if ours is None:
            return CopyProblem(None, seq, f"record {seq} is in the repository's copy but not in the catalog")
        if ours.to_json() != theirs.to_json():
            a, b = ours.to_json(), theirs.to_json()
            fields = [name for name in a if a[name] != b.get(name)]
            return CopyProblem(
                None,
                seq,
                f"record {seq} differs between the catalog and the repository ({', '.join(fields)})",
            )
    return None
