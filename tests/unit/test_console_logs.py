"""Console log lines are one readable line per event: important fields first, long structures
(the settings of ``audit action=config_changed``, audit ``details``) summarized, never Python
reprs; JSON lines keep every field whole."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from contentflow_backupd.observability.logging import configure_logging, reset_logging

KEYS = {f"BACKUPD_SETTING_NUMBER_{i}": "0123456789abcdef" for i in range(60)}
CONFIG_CHANGED = {
    "seq": 3,
    "actor": "postgres@vm",
    "action": "config_changed",
    "outcome": "succeeded",
    "objects": list(KEYS),
    "details": {
        "settings_sha256": "f" * 64,
        "keys": KEYS,
        "added": list(KEYS),
        "removed": [],
        "changed": [],
        "first": True,
    },
}


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    reset_logging()


def emit(fmt: str, event: str, **fields: object) -> str:
    out = io.StringIO()
    configure_logging(fmt, stream=out)
    structlog.get_logger("test").info(event, **fields)
    return out.getvalue()


def test_config_changed_is_one_short_line_on_the_console() -> None:
    text = emit("console", "audit", **CONFIG_CHANGED)
    assert text.count("\n") == 1
    assert len(text) < 400, text  # 60 setting names and 60 digests were ~6,000 characters
    assert "action=config_changed" in text
    assert "+57 more" in text  # the changed settings: the first three, then a count
    assert "keys={60 entries}" in text and "added=[60 items]" in text
    assert "BACKUPD_SETTING_NUMBER_59" not in text
    assert "removed=" not in text  # empty values are left out


def test_audit_details_are_not_python_reprs() -> None:
    text = emit(
        "console",
        "audit",
        action="backup",
        outcome="succeeded",
        objects=["20261207T030600Z-incr-e9727f"],
        details={"cluster": "main", "kind": "incremental", "run_id": 6},
    )
    assert "{'" not in text and "['" not in text
    assert "{cluster=main, kind=incremental, run_id=6}" in text
    assert "20261207T030600Z-incr-e9727f" in text


def test_important_fields_come_first_and_errors_are_whole() -> None:
    error = "cannot connect to the database: " + "x" * 300
    text = emit("console", "backup_failed", zeta=1, run_id=7, backup_id="b1", kind="full", error=error)
    assert text.index("backup_id=") < text.index("kind=") < text.index("run_id=") < text.index("zeta=")
    assert error in text


def test_json_lines_keep_every_field_whole() -> None:
    record = json.loads(emit("json", "audit", **CONFIG_CHANGED))
    assert record["objects"] == list(KEYS)
    assert record["details"]["keys"] == KEYS
    assert record["details"]["removed"] == []
