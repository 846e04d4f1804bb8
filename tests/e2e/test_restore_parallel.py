"""Parallel physical restore (issue 15): a restore written by several threads gives, byte for byte,
the data directory one thread gives, and that directory recovers to the source's data. The
number of writer threads comes from ``BACKUPD_RESTORE__PROCESS_MAX`` or ``--process-max`` and is
reported in the result and in ``restore_completed``. Real PostgreSQL, real files, the installed
command; run as ``postgres`` and as root for ``postgres``. No timing: speed is bench/restore.py's."""

from __future__ import annotations

import json
import os
import pwd
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.demo.checksums import table_checksums
from tests.e2e import helpers
from tests.e2e.physical import PhysicalSetup, physical_setup
from tests.e2e.pitr_helpers import Restored, switch_and_wait_archived
from tests.support.cli import Cli, Result

pytestmark = pytest.mark.pg


@dataclass
class Backed:
    setup: PhysicalSetup
    db: str
    backup: dict[str, Any]


@pytest.fixture(scope="module")
def backed() -> Iterator[Backed]:
    """A cluster with a few MiB of data and one full backup, in 64 KiB chunks (the setup's): most
    relation files span several chunks, and many files share one."""
    with physical_setup() as setup:
        db = setup.cluster.create_database("app")
        helpers.seed(setup.cluster, db, size_mb=6)
        backup = setup.cli.ok_json("backup", "--kind", "full")
        switch_and_wait_archived(setup.cluster)
        yield Backed(setup, db, backup)


def _cli(backed: Backed, user: str) -> tuple[Cli, list[str]]:
    """The CLI as ``user`` and the options that give the directory to postgres."""
    if user == "postgres":
        return backed.setup.cli, []
    if os.geteuid() != 0:
        pytest.skip("needs root to give the data directory to postgres")
    return Cli(env=dict(backed.setup.cli.env)), ["--owner", "postgres"]


def _restore(
    cli: Cli, pgdata: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[dict[str, Any], Result]:
    result = cli.run("restore", "latest", "--pgdata", str(pgdata), *args, "--json", env=env)
    assert result.returncode == 0, str(result)
    out: dict[str, Any] = result.json()
    return out, result


def _events(result: Result, name: str) -> list[dict[str, Any]]:
    found = []
    for line in result.stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


def _tree(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """Every entry under ``root``: mode, owner, group, and contents or link target. The comment
    lines of postgresql.auto.conf (the restore's own time) are left out, and ``root`` in it (the
    path of restore_command's settings directory) is replaced."""
    out: dict[str, tuple[int, int, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            body: bytes | str = os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            body = ""
        elif rel == "postgresql.auto.conf":
            text = path.read_bytes().replace(str(root).encode(), b"<pgdata>")
            body = b"\n".join(ln for ln in text.splitlines() if not ln.startswith(b"#"))
        else:
            body = path.read_bytes()
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, body)
    return out


@pytest.mark.parametrize("user", ["postgres", "root"])
def test_several_writers_restore_the_same_bytes_as_one(backed: Backed, user: str) -> None:
    cli, owner = _cli(backed, user)
    base = backed.setup.base
    one_dir, many_dir = base / f"one-{user}", base / f"many-{user}"
    # The same environment for both (a setting in the environment, not in the config file, makes
    # the restore write restore_command's own settings file): the option beats the setting.
    env = {"BACKUPD_RESTORE__PROCESS_MAX": "4"}
    one, _ = _restore(cli, one_dir, *owner, "--process-max", "1", env=env)
    many, result = _restore(cli, many_dir, *owner, env=env)
    assert one["writers"] == 1 and many["writers"] == 4
    assert [e["writers"] for e in _events(result, "restore_completed")] == [4]
    assert one["backup_id"] == many["backup_id"] == backed.backup["id"]
    assert one["files"] == many["files"] > 100

    tree = _tree(many_dir)
    assert tree == _tree(one_dir)
    postgres = pwd.getpwnam("postgres").pw_uid
    if os.geteuid() == 0:
        assert {uid for _, uid, _, _ in tree.values()} == {postgres}
    assert {stat.S_IMODE(mode) for mode, _, _, _ in tree.values() if stat.S_ISREG(mode)} == {0o600}

    source = backed.setup.cluster
    server = Restored(many_dir, source).start()
    try:
        server.wait_promoted()
        with source.connect(backed.db) as a, server.connect(backed.db) as b:
            assert table_checksums(b) == table_checksums(a)
    finally:
        server.stop()


def test_the_option_beats_the_setting_and_bad_values_are_refused(backed: Backed) -> None:
    cli = backed.setup.cli
    out, _ = _restore(
        cli, backed.setup.base / "option", "--process-max", "2", env={"BACKUPD_RESTORE__PROCESS_MAX": "3"}
    )
    assert out["writers"] == 2
    for bad in ("0", "33", "many"):
        result = cli.run(
            "restore", "latest", "--pgdata", str(backed.setup.base / f"bad-{bad}"), "--process-max", bad
        )
        assert result.returncode == 2 and "--process-max" in result.stderr, str(result)
        assert not (backed.setup.base / f"bad-{bad}").exists()
    result = cli.run(
        "restore",
        "latest",
        "--pgdata",
        str(backed.setup.base / "bad-env"),
        env={"BACKUPD_RESTORE__PROCESS_MAX": "0"},
    )
    assert result.returncode == 2 and "BACKUPD_RESTORE__PROCESS_MAX" in result.stderr, str(result)
    result = cli.run("restore", "latest", "--to-database", source_url(backed), "--process-max", "2")
    assert result.returncode == 2 and "--process-max: only with --pgdata" in result.stderr, str(result)


def source_url(backed: Backed) -> str:
    return backed.setup.cluster.url(backed.db)
