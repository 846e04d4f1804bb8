"""Rows to records and back: one ``RecordMapping`` per record type, used by every query.

A record (a frozen dataclass of ``model``, ``catalog/records.py``, ``guard_records.py`` or
``audit_records.py``) is stored in the row class of the same name in ``catalog/models.py``: each
field of the record is the column of the same name. A field whose stored form differs names its
two conversions (a tuple of ids stored as a JSON list in text, a bool as an integer, a JSON
document copied so that the record never shares a mutable value with the session). Columns the
record does not carry (the repository id of a restore point or a verification state) are passed
as ``extra`` when writing; fields the database assigns (autoincrement ids) are left out of writes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from contentflow_backupd.catalog.audit_records import AuditEvent
from contentflow_backupd.catalog.guard_records import BatchCheckpoint, MigrationRunRecord
from contentflow_backupd.catalog.models import (
    AuditEventRow,
    BackupRow,
    Base,
    BatchCheckpointRow,
    CorruptObjectRow,
    DeletionRow,
    DrillRow,
    MigrationRunRow,
    RestorePointRow,
    RunRow,
    VerifyStateRow,
)
from contentflow_backupd.catalog.records import CorruptObject, DeletionRecord, DrillRecord, VerifyState
from contentflow_backupd.model import BackupRecord, RestorePoint, RunRecord

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")
W = TypeVar("W", bound=Base)


@dataclass(frozen=True)
class Stored:
    """How one field is stored: ``to_row`` turns the record's value into the column's,
    ``to_record`` the column's (None included) into the record's."""

    to_row: Callable[[Any], Any]
    to_record: Callable[[Any], Any]


class RecordMapping(Generic[R, W]):
    """The mapping between the record type ``R`` and its row type ``W``."""

    def __init__(
        self,
        record: type[R],
        row: type[W],
        stored: Mapping[str, Stored] | None = None,
        *,
        generated: Iterable[str] = (),
    ) -> None:
        self.record = record
        self.row = row
        self.fields = tuple(f.name for f in dataclasses.fields(record))
        self.stored = dict(stored or {})
        self.generated = frozenset(generated)
        columns = set(row.__table__.columns.keys())
        unknown = [n for n in (*self.fields, *self.stored, *self.generated) if n not in columns]
        if unknown or not set(self.stored) <= set(self.fields):
            raise TypeError(f"{row.__name__} has no column for {record.__name__} fields {unknown}")

    def to_record(self, row: W) -> R:
        """The record a row holds."""
        values: dict[str, Any] = {}
        for name in self.fields:
            value = getattr(row, name)
            how = self.stored.get(name)
            values[name] = value if how is None else how.to_record(value)
        return self.record(**values)

    def values(self, record: R, **extra: Any) -> dict[str, Any]:
        """The column values of a record (without the generated ones), plus ``extra``."""
        values: dict[str, Any] = {}
        for name in self.fields:
            if name in self.generated:
                continue
            value = getattr(record, name)
            how = self.stored.get(name)
            values[name] = value if how is None else how.to_row(value)
        values.update(extra)
        return values

    def new_row(self, record: R, **extra: Any) -> W:
        """A new row holding ``record`` (and ``extra``), not yet added to a session."""
        return self.row(**self.values(record, **extra))

    def update_row(self, row: W, record: R, **extra: Any) -> None:
        """Make ``row`` hold ``record`` (and ``extra``)."""
        for name, value in self.values(record, **extra).items():
            setattr(row, name, value)

    def save(self, existing: W | None, record: R, **extra: Any) -> W:
        """``existing`` updated to hold ``record``, or a new row when it is None."""
        if existing is None:
            return self.new_row(record, **extra)
        self.update_row(existing, record, **extra)
        return existing


def id_list(text: str | None) -> tuple[str, ...]:
    """Ids stored as a JSON list in text (a damaged value reads as no ids)."""
    try:
        ids = json.loads(text) if text else []
    except ValueError:
        ids = []
    return tuple(str(i) for i in ids) if isinstance(ids, list) else ()


def _id_text(ids: Iterable[str]) -> str:
    return json.dumps(sorted(set(ids)))


def _document(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


def _list(value: Iterable[Any] | None) -> list[Any]:
    return list(value or [])


def _tuple(value: Iterable[Any] | None) -> tuple[Any, ...]:
    return tuple(value or ())


IDS_AS_TEXT = Stored(_id_text, id_list)
DOCUMENT = Stored(_document, _document)
LIST = Stored(_list, _list)
TUPLE_AS_LIST = Stored(_list, _tuple)
CHECKS = Stored(
    lambda checks: [dict(c) for c in checks],
    lambda checks: tuple(dict(c) for c in (checks or [])),
)
BOOL_AS_INT = Stored(int, bool)

BACKUPS = RecordMapping(BackupRecord, BackupRow, {"details": DOCUMENT})
RUNS = RecordMapping(RunRecord, RunRow, generated=["id"])
RESTORE_POINTS = RecordMapping(RestorePoint, RestorePointRow)
"""Written with ``repository_id=`` as extra."""
DELETIONS = RecordMapping(DeletionRecord, DeletionRow, generated=["id"])
VERIFY_STATES = RecordMapping(VerifyState, VerifyStateRow, {"verified_backups": IDS_AS_TEXT})
"""Written with ``repository_id=`` as extra."""
CORRUPT_OBJECTS = RecordMapping(
    CorruptObject, CorruptObjectRow, {"backup_ids": IDS_AS_TEXT}, generated=["id"]
)
"""Written with ``repository_id=`` as extra."""
DRILLS = RecordMapping(DrillRecord, DrillRow, {"checks": CHECKS})
MIGRATION_RUNS = RecordMapping(
    MigrationRunRecord, MigrationRunRow, {"dry_run": BOOL_AS_INT, "command": LIST, "details": DOCUMENT}
)
BATCHES = RecordMapping(BatchCheckpoint, BatchCheckpointRow, {"details": DOCUMENT})
AUDIT_EVENTS = RecordMapping(AuditEvent, AuditEventRow, {"objects": TUPLE_AS_LIST, "details": DOCUMENT})

MAPPINGS: tuple[RecordMapping[Any, Any], ...] = (
    BACKUPS,
    RUNS,
    RESTORE_POINTS,
    DELETIONS,
    VERIFY_STATES,
    CORRUPT_OBJECTS,
    DRILLS,
    MIGRATION_RUNS,
    BATCHES,
    AUDIT_EVENTS,
)
"""Every mapping: each record type of the catalog has exactly one."""
