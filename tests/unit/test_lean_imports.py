"""``wal-push`` runs once per WAL segment as ``archive_command``: its import path stays lean.

A guard without timing: push a segment to a ``file://`` repository in a fresh interpreter and
check which modules it imported. Also: every lazily dispatched command resolves to a function.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from contentflow_backupd.cli.commands import LazyCommand
from contentflow_backupd.cli.parser import build_parser

# Libraries (and our layers) that wal-push to a local repository has no use for.
NOT_IMPORTED = (
    "sqlalchemy",
    "alembic",
    "apscheduler",
    "prometheus_client",
    "tqdm",  # the live progress line: only on a terminal, only for commands that move data
    "boto3",
    "botocore",
    "psycopg",
    "contentflow_backupd.catalog.sql",
    "contentflow_backupd.daemon",
    "contentflow_backupd.scheduling",
    "contentflow_backupd.http",
    "contentflow_backupd.observability.metrics",
    "contentflow_backupd.source",
    "contentflow_backupd.ops.backup.run",
    "contentflow_backupd.ops.restore.logical",
    "contentflow_backupd.ops.drill.run",
    "contentflow_backupd.cli.backups",
    "contentflow_backupd.cli.restore",
    "contentflow_backupd.cli.daemon",
)

# Runs the real command line in this interpreter, then reports what it imported.
DRIVER = """
import json, sys
from contentflow_backupd.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""

SEGMENT_SIZE = 1024 * 1024
SYSTEM_ID = 7_300_000_000_000_000_001


def wal_segment(path: Path) -> Path:
    """A WAL segment file: a long page header (timeline 1, our system id, 1 MiB segments)."""
    header = struct.pack("<HHIQIIQII", 0xD110, 0x0002, 1, 0, 0, 0, SYSTEM_ID, SEGMENT_SIZE, 8192)
    body = bytes(range(256)) * ((SEGMENT_SIZE - len(header)) // 256 + 1)
    path.write_bytes((header + body)[:SEGMENT_SIZE])
    return path


def run_cli(*args: str) -> tuple[dict[str, object], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPD_")}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    report: dict[str, object] = json.loads(lines[-1])
    assert report["rc"] == 0, proc.stderr
    return report, "\n".join(lines[:-1])


def imported(report: dict[str, object], name: str) -> bool:
    modules = report["modules"]
    assert isinstance(modules, list)
    return any(m == name or m.startswith(name + ".") for m in modules)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    cfg = tmp_path / "backupd.toml"
    cfg.write_text(
        f'repository = "file://{tmp_path / "repo"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[encryption]\nkey_file = "{key}"\n'
    )
    run_cli("--config", str(cfg), "init")
    return cfg


@pytest.mark.parametrize("push", [["wal", "push"], ["wal-push"]], ids=" ".join)
def test_wal_push_to_a_local_repository_imports_no_heavy_library(
    tmp_path: Path, config: Path, push: list[str]
) -> None:
    segment = wal_segment(tmp_path / "000000010000000000000001")
    report, out = run_cli("--config", str(config), *push, "--json", str(segment))
    assert json.loads(out) == {"file": segment.name, "status": "stored"}
    assert imported(report, "contentflow_backupd.repository.walarchive")  # the probe sees imports
    heavy = [name for name in NOT_IMPORTED if imported(report, name)]
    assert heavy == [], f"wal-push imported {heavy}: import them inside the functions that need them"


def test_the_pushed_segment_reads_back(tmp_path: Path, config: Path) -> None:
    segment = wal_segment(tmp_path / "000000010000000000000002")
    run_cli("--config", str(config), "wal-push", str(segment))
    dest = tmp_path / "fetched"
    report, _ = run_cli("--config", str(config), "wal-fetch", segment.name, str(dest))
    assert dest.read_bytes() == segment.read_bytes()
    heavy = [name for name in NOT_IMPORTED if imported(report, name)]
    assert heavy == [], f"wal-fetch imported {heavy}"
    again = tmp_path / "fetched-again"
    report, out = run_cli("--config", str(config), "wal", "fetch", "--json", segment.name, str(again))
    assert json.loads(out) == {"file": segment.name, "status": "fetched", "bytes": SEGMENT_SIZE}
    assert again.read_bytes() == segment.read_bytes()
    assert [name for name in NOT_IMPORTED if imported(report, name)] == []


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parsers(sub))
    return found


def test_every_lazy_command_resolves_to_a_function() -> None:
    lazy = [p.get_default("func") for p in _parsers(build_parser())]
    lazy = [f for f in lazy if isinstance(f, LazyCommand)]
    assert len(lazy) >= 20
    for command in lazy:
        assert callable(command.resolve()), command.target


def test_wal_push_of_a_named_cluster_imports_no_heavy_library(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    cfg = tmp_path / "backupd.toml"
    cfg.write_text(
        f'repository = "file://{tmp_path / "repo"}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[encryption]\nkey_file = "{key}"\n[clusters.a]\n[clusters.b]\nmode = "physical"\n'
    )
    run_cli("--config", str(cfg), "--cluster", "b", "init")
    segment = wal_segment(tmp_path / "000000010000000000000003")
    report, out = run_cli("--config", str(cfg), "wal", "push", "--cluster", "b", "--json", str(segment))
    assert json.loads(out) == {"file": segment.name, "status": "stored"}
    assert (tmp_path / "repo" / "b" / "wal").is_dir()
    heavy = [name for name in NOT_IMPORTED if imported(report, name)]
    assert heavy == [], f"wal push --cluster imported {heavy}"
