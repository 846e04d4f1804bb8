"""The command line's NOUN VERB grammar and the old spellings kept as hidden aliases, through the
installed command: the same output and exit codes for both spellings; ``archive_command`` with
``wal push`` and with ``wal-push``; read-only commands leave the catalog's bytes as they were."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.catalog.sql import INTERRUPTED_ERROR, open_catalog
from tests.e2e.helpers import repository_scope, seed
from tests.e2e.physical import physical_setup
from tests.e2e.pitr_helpers import switch_and_wait_archived
from tests.support.cli import Cli, command_path
from tests.support.daemon import daemon_env
from tests.support.moto_server import free_port
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

# Commands that only read: each must leave the catalog file exactly as it was.
READ_ONLY: list[list[str]] = [
    ["list"],
    ["list", "--all"],
    ["backup", "list"],
    ["backup", "list", "--attempts"],
    ["show", "latest"],
    ["backup", "show", "latest"],
    ["runs"],
    ["runs", "list", "--job", "full"],
    ["status"],
    ["restore-point", "list"],
    ["list-restore-points"],
    ["audit"],
    ["audit", "list"],
    ["audit", "verify"],
    ["migrate", "list"],
    ["migrate", "history"],
    ["keys", "list"],
    ["config", "show"],
    ["wal", "verify"],
]


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def same(cli: Cli, old: list[str], new: list[str]) -> Any:
    """Both spellings: same exit code, same JSON output; returns it."""
    a, b = cli.run(*old, "--json"), cli.run(*new, "--json")
    assert a.returncode == b.returncode == 0, (str(a), str(b))
    assert a.json() == b.json(), (old, new)
    return a.json()


def test_logical_commands_by_both_spellings_and_reads_that_never_write(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    seed(pg, pg_db, size_mb=1)
    catalog_file = tmp_path / "state" / "catalog.sqlite"
    cli.run("init", check=True)
    # Before anything was recorded, a read creates no catalog.
    assert cli.ok_json("list") == [] and cli.ok_json("runs", "list") == []
    assert not catalog_file.exists()

    full = cli.ok_json("backup", "create", "--kind", "full")
    incr = cli.ok_json("backup", "--kind", "incremental")
    assert (full["kind"], incr["kind"]) == ("full", "incremental")

    listed = same(cli, ["list"], ["backup", "list"])
    assert [b["id"] for b in listed] == [full["id"], incr["id"]]
    same(cli, ["list", "--all"], ["backup", "list", "--attempts"])
    assert same(cli, ["show", "latest"], ["backup", "show", "latest"])["id"] == incr["id"]
    # --job filters before --limit: the newest full run, though an incremental ran after it.
    runs = same(
        cli, ["runs", "--limit", "1", "--job", "full"], ["runs", "list", "--limit", "1", "--job", "full"]
    )
    assert [(r["job"], r["backup_id"]) for r in runs] == [("full", full["id"])]
    same(cli, ["audit"], ["audit", "list"])
    same(cli, ["migrate", "history"], ["migrate", "list"])

    # A drill by both spellings (the backup named by the old --backup, and by the positional).
    drill_env = {"BACKUPD_DRILL__DATABASE_URL": pg.url("postgres")}
    for spelling in (["restore-test", "--backup", full["id"]], ["drill", full["id"]]):
        result = cli.run(*spelling, "--json", env=drill_env)
        assert result.returncode == 0, str(result)
        assert (result.json()["status"], result.json()["backup_id"]) == ("succeeded", full["id"])

    # A run left `running` by a process that is gone: shown interrupted, written by no read.
    scope = repository_scope(cli.env)
    with open_catalog(f"sqlite:///{catalog_file}") as catalog:
        ghost = catalog.start_run(scope, "full", "manual", pid=dead_pid(), host=socket.gethostname())
    before = fingerprint(catalog_file)
    for argv in READ_ONLY:
        result = cli.run(*argv)
        assert result.returncode == 0, str(result)
        assert fingerprint(catalog_file) == before, f"{argv} wrote to the catalog"
    shown = next(r for r in cli.ok_json("runs") if r["id"] == ghost.id)
    assert (shown["status"], shown["error"], shown["finished_at"]) == ("interrupted", INTERRUPTED_ERROR, None)
    assert fingerprint(catalog_file) == before

    # The next command that writes records it.
    cli.ok_json("backup", "--kind", "incremental")
    recorded = next(r for r in cli.ok_json("runs") if r["id"] == ghost.id)
    assert recorded["status"] == "interrupted" and recorded["finished_at"] is not None


@pytest.mark.parametrize("push", ["wal push", "wal-push"])
def test_archive_command_with_either_spelling_and_fetch_by_both(push: str) -> None:
    with physical_setup(push=push) as setup:
        pg, cli = setup.cluster, setup.cli
        pg.execute("create table w(x int); insert into w values (1)")
        name = str(pg.execute("select pg_walfile_name(pg_current_wal_lsn())")[0][0])
        switch_and_wait_archived(pg)
        work = setup.base / "fetched"
        work.mkdir()
        work.chmod(0o777)
        for i, fetch in enumerate((["wal", "fetch"], ["wal-fetch"])):
            dest = work / f"{name}.{i}"
            result = cli.run(*fetch, "--json", name, str(dest))
            assert result.returncode == 0, str(result)
            assert result.json() == {"file": name, "status": "fetched", "bytes": dest.stat().st_size}
            missing = cli.run(*fetch, "--json", "0000000100000000000000FE", str(work / "missing"))
            assert missing.returncode == 1, str(missing)
            assert missing.json() == {
                "file": "0000000100000000000000FE",
                "status": "not_archived",
                "bytes": None,
            }
        assert (work / f"{name}.0").read_bytes() == (work / f"{name}.1").read_bytes()

        # Restore points: created by both spellings, listed the same by both.
        cli.ok_json("restore-point", "create", "by-the-verb")
        cli.ok_json("restore-point", "by-the-old-spelling")
        points = same(cli, ["list-restore-points"], ["restore-point", "list"])
        assert [p["name"] for p in points] == ["by-the-verb", "by-the-old-spelling"]


def test_run_json_writes_its_log_lines_as_json(pg: PgCluster, pg_db: str, tmp_path: Path) -> None:
    """The daemon prints no result: its --json is the log format, over a console setting."""
    cli = Cli(env=daemon_env(tmp_path, pg, pg_db, BACKUPD_HTTP__LISTEN=f"127.0.0.1:{free_port()}"))
    cli.run("init", check=True)
    env = cli.full_env({"BACKUPD_LOG__FORMAT": "console"})
    proc = subprocess.Popen(
        [command_path(), "run", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        events = [json.loads(proc.stderr.readline())["event"]]  # every line a JSON object
        while events[-1] != "daemon_ready":  # its signal handling is in place from here on
            events.append(json.loads(proc.stderr.readline())["event"])
        assert events[0] == "daemon_starting", events
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out == ""
