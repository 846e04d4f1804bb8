"""Progress as a person and a script see it: on a terminal (a pseudo-terminal here) backup,
restore, verify and catalog rebuild draw a live line naming the operation and its phase; off a
terminal, and with --no-progress or --json, no line is drawn, `progress` log events carry the
numbers, and stdout holds only the command's output."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import struct
import subprocess
import termios
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.helpers import seed
from tests.support.cli import Cli, command_path
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg


@dataclass
class TtyRun:
    rc: int
    terminal: str
    """Everything written to the terminal (stderr, and stdout unless it was a pipe)."""
    stdout: str | None
    """stdout when it was a pipe."""


def run_on_terminal(
    cli: Cli, *args: str, stdout_pipe: bool = False, env: dict[str, str] | None = None
) -> TtyRun:
    """Run the command with its stderr (and stdout, unless ``stdout_pipe``) on a pseudo-terminal."""
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal has a size
    proc = subprocess.Popen(
        [command_path(), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout_pipe else sub,
        stderr=sub,
        env={**cli.full_env(env), "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(sub)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError as exc:  # EIO: the last writer closed the terminal
            if exc.errno != errno.EIO:
                raise
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode() if proc.stdout is not None else None
    rc = proc.wait(timeout=600)
    os.close(main)
    return TtyRun(rc, b"".join(chunks).decode(errors="replace"), out)


def progress_events(stderr: str) -> list[dict[str, object]]:
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "progress":
                events.append(record)
    return events


def test_a_live_line_on_a_terminal(cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path) -> None:
    seed(pg, pg_db, size_mb=4)
    cli.run("init", check=True)
    cli.env["BACKUPD_LOG__FORMAT"] = "console"  # what a terminal gets by default

    backup = run_on_terminal(cli, "backup", "--kind", "full")
    assert backup.rc == 0, backup.terminal
    assert "backup: dumping" in backup.terminal, backup.terminal
    assert "\r" in backup.terminal  # redrawn in place
    assert '"event"' not in backup.terminal  # console log lines on a terminal, not JSON

    again = run_on_terminal(cli, "backup", "--kind", "incremental")
    assert again.rc == 0, again.terminal
    assert "backup: dumping" in again.terminal and "%" in again.terminal  # the total is known now

    restore = run_on_terminal(cli, "restore", "latest", "--to-file", str(tmp_path / "dump"))
    assert restore.rc == 0, restore.terminal
    assert "restore: restoring" in restore.terminal, restore.terminal

    verify = run_on_terminal(cli, "verify", "--all")
    assert verify.rc == 0, verify.terminal
    assert "verify: reading" in verify.terminal, verify.terminal

    rebuild = run_on_terminal(cli, "catalog", "rebuild")
    assert rebuild.rc == 0, rebuild.terminal
    assert "catalog rebuild: reading manifests" in rebuild.terminal, rebuild.terminal


def test_json_and_no_progress_keep_the_terminal_free_of_bars(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    seed(pg, pg_db, size_mb=4)
    cli.run("init", check=True)
    fast = {"BACKUPD_PROGRESS_INTERVAL": "0.2"}

    as_json = run_on_terminal(cli, "backup", "--kind", "full", "--json", stdout_pipe=True, env=fast)
    assert as_json.rc == 0, as_json.terminal
    assert as_json.stdout is not None
    assert json.loads(as_json.stdout)["kind"] == "full"  # stdout: the result and nothing else
    assert "backup: dumping" not in as_json.terminal

    quiet = run_on_terminal(cli, "backup", "--kind", "incremental", "--no-progress", env=fast)
    assert quiet.rc == 0, quiet.terminal
    assert "backup: dumping" not in quiet.terminal
    events = progress_events(quiet.terminal.replace("\r\n", "\n"))
    assert events and all(e["operation"] == "backup" for e in events), quiet.terminal


def test_off_a_terminal_progress_is_log_events(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    seed(pg, pg_db, size_mb=4)
    cli.run("init", check=True)
    fast = {"BACKUPD_PROGRESS_INTERVAL": "0.2"}
    cli.run("backup", "--kind", "full", check=True, env=fast)
    result = cli.run("backup", "--kind", "incremental", "--json", check=True, env=fast)
    assert json.loads(result.stdout)["kind"] == "incremental"
    assert "\r" not in result.stderr  # no bar
    events = progress_events(result.stderr)
    assert events, result.stderr
    for event in events:
        assert event["operation"] == "backup"
        assert {"phase", "done", "total", "unit", "rate", "elapsed_seconds", "eta_seconds"} <= set(event)
    status = cli.run("status", "--json")
    assert status.json()["running"] == []  # no daemon runs a job here


def test_migrate_batch_draws_the_live_line(cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path) -> None:
    pg.execute(
        "create table post (id bigint primary key, n int not null default 0);"
        " insert into post (id) select i from generate_series(1, 2000) i",
        pg_db,
    )
    sql = tmp_path / "change.sql"
    sql.write_text("UPDATE post SET n = n + 1 WHERE id >= :lo AND id < :hi\n")
    cli.env["BACKUPD_LOG__FORMAT"] = "console"
    run = run_on_terminal(
        cli, "migrate", "batch", "--sql", str(sql), "--table", "post", "--batch-size", "100"
    )
    assert run.rc == 0, run.terminal
    assert "migrate batch: batches" in run.terminal, run.terminal
    assert "rows changed" in run.terminal, run.terminal
    assert pg.execute("select count(*) from post where n = 1", pg_db) == [(2000,)]


def test_drill_and_recover_show_their_phases(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    seed(pg, pg_db, size_mb=2)
    cli.run("init", check=True)
    cli.run("backup", "--kind", "full", check=True)
    cli.env["BACKUPD_LOG__FORMAT"] = "console"

    drill = run_on_terminal(cli, "restore-test", env={"BACKUPD_DRILL__DATABASE_URL": pg.url("postgres")})
    assert drill.rc == 0, drill.terminal
    assert "restore-test: restoring" in drill.terminal and "restore-test: checking" in drill.terminal

    target = pg_db + "_recovered"
    try:
        recover = run_on_terminal(cli, "recover", "--to-database", pg.url(target))
        assert recover.rc == 0, recover.terminal
        assert "recover: restoring" in recover.terminal and "recover: checking" in recover.terminal
    finally:
        pg.drop_database(target)
