"""ops/audit.py on a real SQLite catalog and an in-memory storage (a shipped fake, as code):
the repository copy, its restore into a new catalog, ``record_config`` and never-raising."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from contentflow_backupd.catalog.sql import SqlCatalog, open_catalog
from contentflow_backupd.ops.audit import (
    AUDIT_PREFIX,
    audited,
    flush_audit,
    read_repository_events,
    record_config,
    record_event,
    restore_audit,
    verify_audit,
)
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.storage.memory import MemoryStorage

PASS = KekSecret("passphrase", b"audit test passphrase", "test")
SMALL = ChunkerParams(avg_size=64 * 1024)


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStorage(), PASS, chunker=SMALL)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SqlCatalog]:
    opened = open_catalog(f"sqlite:///{tmp_path}/a/catalog.sqlite")
    yield opened
    opened.close()


def test_records_go_to_the_repository_encrypted_and_come_back(repo: Repository, catalog: SqlCatalog) -> None:
    record_event(catalog, action="backup", outcome="succeeded", objects=["b1"], details={"n": 1})
    record_event(catalog, action="migrate", outcome="applied", repo=repo)  # flushes both
    record_event(catalog, action="verify", outcome="failed", repo=repo)  # one more object
    keys = [i.key for i in repo.storage.list(AUDIT_PREFIX)]
    assert len(keys) == 2 and all(k.startswith("audit/") for k in keys)
    assert all(b"migrate" not in repo.storage.get(k) for k in keys)
    stored = read_repository_events(repo)
    assert stored == catalog.list_audit_events()
    assert json.loads(repo.get_object(sorted(keys)[0]))["records"][0]["objects"] == ["b1"]
    assert flush_audit(catalog, repo) == 0


def test_a_new_catalog_gets_the_history_back_and_continues_the_chain(
    repo: Repository, catalog: SqlCatalog, tmp_path: Path
) -> None:
    for action in ("backup", "restore", "expire"):
        record_event(catalog, action=action, outcome="succeeded", repo=repo)
    history = catalog.list_audit_events()
    fresh = open_catalog(f"sqlite:///{tmp_path}/b/catalog.sqlite")
    try:
        record_event(fresh, action="config_changed", outcome="succeeded")  # before the rebuild
        restored = restore_audit(fresh, repo)
        assert (restored.found, restored.imported, restored.rechained) == (3, 3, 1)
        events = fresh.list_audit_events()
        assert events[:3] == history and events[3].action == "config_changed"
        assert verify_audit(fresh).ok
        # the re-chained record reached the repository too
        assert [e.seq for e in read_repository_events(repo)] == [1, 2, 3, 4]
        # a catalog that never flushed adopts the history at its first flush
        record_event(fresh, action="drill", outcome="succeeded", repo=repo)
        assert [e.action for e in read_repository_events(repo)][-1] == "drill"
    finally:
        fresh.close()


def test_config_changes_are_recorded_with_the_keys_that_changed(catalog: SqlCatalog) -> None:
    view = {
        "BACKUPD_CLUSTER": "main",
        "BACKUPD_MODE": "logical",
        "BACKUPD_ENCRYPTION__PASSPHRASE": "********",
    }
    assert record_config(catalog, view) is True
    assert record_config(catalog, view) is False
    changed = {**view, "BACKUPD_MODE": "physical", "BACKUPD_NEW": "1"}
    del changed["BACKUPD_CLUSTER"]
    assert record_config(catalog, changed) is True
    last = catalog.list_audit_events()[-1]
    assert last.action == "config_changed"
    assert (last.details["added"], last.details["removed"], last.details["changed"]) == (
        ["BACKUPD_NEW"],
        ["BACKUPD_CLUSTER"],
        ["BACKUPD_MODE"],
    )
    assert "physical" not in json.dumps(last.to_json())


def test_audited_records_success_failure_and_a_set_outcome(catalog: SqlCatalog) -> None:
    with audited(catalog, "restore", objects=["b1"]) as scope:
        scope.details["bytes"] = 5
    with pytest.raises(RuntimeError), audited(catalog, "restore", objects=["b2"]):
        raise RuntimeError("boom")
    with audited(catalog, "verify") as scope:
        scope.outcome = "failed"
    with audited(None, "restore"):
        pass
    events = catalog.list_audit_events()
    assert [(e.action, e.outcome) for e in events] == [
        ("restore", "succeeded"),
        ("restore", "failed"),
        ("verify", "failed"),
    ]
    assert events[0].details == {"bytes": 5} and "boom" in events[1].details["error"]


class _Later:
    """An ``AuditLater`` as the restore command makes one (cli/restore.py), minus the thread:
    what was asked of it, and when."""

    def __init__(self, catalog: SqlCatalog | None) -> None:
        self.catalog = catalog
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def __call__(self) -> SqlCatalog | None:
        self.calls.append("get")
        return self.catalog


def test_audited_opens_a_later_catalog_when_the_block_begins_and_records_in_it(catalog: SqlCatalog) -> None:
    later = _Later(catalog)
    with audited(later, "restore", objects=["b1"]) as scope:
        assert later.calls == []  # nothing is opened before the operation's long part
        scope.begin()
        assert later.calls == ["start"]
    failing = _Later(catalog)
    with pytest.raises(RuntimeError), audited(failing, "restore", objects=["b2"]):
        raise RuntimeError("refused before it began")  # the record is still written
    unavailable = _Later(None)
    with audited(unavailable, "restore") as scope:
        scope.begin()
    with audited(catalog, "verify") as scope:
        scope.begin()  # a plain catalog: nothing to start
    assert (
        later.calls == ["start", "get"] and failing.calls == ["get"] and unavailable.calls == ["start", "get"]
    )
    events = catalog.list_audit_events()
    assert [(e.action, e.outcome, e.objects) for e in events] == [
        ("restore", "succeeded", ("b1",)),
        ("restore", "failed", ("b2",)),
        ("verify", "succeeded", ()),
    ]


def test_a_failure_to_audit_never_raises(catalog: SqlCatalog, capsys: pytest.CaptureFixture[str]) -> None:
    with catalog.engine.begin() as conn:
        conn.execute(text("drop table audit_events"))
    record_event(catalog, action="backup", outcome="succeeded")
    captured = capsys.readouterr()
    assert "audit_failed" in captured.out + captured.err
