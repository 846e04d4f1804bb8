"""``check``: can the configured role and credentials do what backups need?

``run_check`` gathers two lists of ``CheckItem``:

- ``database``: what ``database()`` returns (``source.privileges.role_privileges`` for the
  configured mode, through wiring);
- ``storage``: a put, get, list and delete of a scratch object ``SCRATCH_PREFIX<random>``
  under the repository root (removed again), the transport (a plain ``http://`` endpoint is a
  warning) and, when object lock is asked for, whether the bucket supports that mode.

A missing required item makes the report not ``ok`` (``check`` exits 1); a missing optional one
is a warning. Never raises for a refused operation: that is what it reports.

JSON (``check --json``)::

    {"ok": bool, "mode": "logical"|"physical",
     "database": [ITEM, ...], "storage": [ITEM, ...]}
    ITEM = {"name": str, "ok": bool, "required": bool, "detail": str, "fix": str | null}
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from contentflow_backupd.errors import BackupdError
from contentflow_backupd.storage.base import Storage

SCRATCH_PREFIX = ".backupd-check/"
"""Scratch objects live here: no cluster name can start with a dot."""


class _ItemLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def detail(self) -> str: ...
    @property
    def required(self) -> bool: ...
    @property
    def fix(self) -> str | None: ...


@dataclass(frozen=True)
class CheckItem:
    """One finding. ``required`` False: a warning, it does not fail the check."""

    name: str
    ok: bool
    detail: str
    required: bool = True
    fix: str | None = None

    @classmethod
    def of(cls, item: _ItemLike) -> CheckItem:
        return cls(item.name, item.ok, item.detail, item.required, item.fix)

    @property
    def failed(self) -> bool:
        return self.required and not self.ok


@dataclass(frozen=True)
class CheckReport:
    mode: str
    database: list[CheckItem]
    storage: list[CheckItem]

    @property
    def ok(self) -> bool:
        return not any(i.failed for i in (*self.database, *self.storage))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "mode": self.mode,
            "database": [asdict(i) for i in self.database],
            "storage": [asdict(i) for i in self.storage],
        }


@dataclass(frozen=True)
class ObjectLockState:
    """Whether the bucket supports the object lock mode asked for (``None``: not asked)."""

    ok: bool
    detail: str


def run_check(
    mode: str,
    database: Callable[[], Iterable[_ItemLike]],
    storage: Callable[[], Storage],
    *,
    endpoint_url: str | None = None,
    object_lock: Callable[[], ObjectLockState] | None = None,
    delete_required: bool = True,
) -> CheckReport:
    """Check the database side and the storage side. ``storage`` opens the storage (a failure to
    open it is reported, not raised); ``delete_required`` False (object lock expiring objects
    instead of retention deleting them) turns a refused delete into a warning."""
    db_items = [CheckItem.of(i) for i in database()]
    return CheckReport(mode, db_items, check_storage(storage, endpoint_url, object_lock, delete_required))


def check_storage(
    open_storage: Callable[[], Storage],
    endpoint_url: str | None = None,
    object_lock: Callable[[], ObjectLockState] | None = None,
    delete_required: bool = True,
) -> list[CheckItem]:
    """Put, get, list and delete a scratch object; each refusal is its own item."""
    items: list[CheckItem] = []
    if endpoint_url and endpoint_url.lower().startswith("http://"):
        items.append(
            CheckItem(
                "transport",
                False,
                f"{endpoint_url} is plain HTTP: objects (encrypted) and requests travel unprotected",
                required=False,
                fix="use an https:// endpoint (BACKUPD_S3__CA_BUNDLE for a private CA)",
            )
        )
    try:
        storage = open_storage()
    except BackupdError as exc:
        return [*items, CheckItem("open", False, exc.message, fix=exc.hint)]
    try:
        items += _round_trip(storage, delete_required)
        if object_lock is not None:
            state = object_lock()
            items.append(
                CheckItem(
                    "object lock",
                    state.ok,
                    state.detail,
                    fix=None
                    if state.ok
                    else "create a bucket with Object Lock enabled, or unset BACKUPD_S3__OBJECT_LOCK",
                )
            )
    finally:
        storage.close()
    return items


def _round_trip(storage: Storage, delete_required: bool) -> list[CheckItem]:
    key = SCRATCH_PREFIX + secrets.token_hex(8)
    where = f"{storage.url}/{key}"
    data = secrets.token_bytes(64)
    items: list[CheckItem] = []

    def attempt(name: str, action: Callable[[], str], required: bool = True) -> bool:
        try:
            detail = action()
        except BackupdError as exc:
            items.append(CheckItem(name, False, exc.message, required=required, fix=exc.hint))
            return False
        items.append(CheckItem(name, True, detail, required=required))
        return True

    def put() -> str:
        storage.put(key, io.BytesIO(data))
        return f"wrote {where}"

    def get() -> str:
        got = storage.get(key)
        if got != data:
            raise BackupdError(f"read back {len(got)} bytes from {where}, not the {len(data)} written")
        return f"read {where} back unchanged"

    def list_() -> str:
        if not any(o.key == key for o in storage.list(SCRATCH_PREFIX)):
            raise BackupdError(f"listing {storage.url}/{SCRATCH_PREFIX} does not show {key}")
        return f"listed {storage.url}/{SCRATCH_PREFIX}"

    def delete() -> str:
        storage.delete(key)
        return f"deleted {where}"

    if not attempt("put", put):
        return items
    attempt("get", get)
    attempt("list", list_)
    attempt("delete", delete, delete_required)
    return items
