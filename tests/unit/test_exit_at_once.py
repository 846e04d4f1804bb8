"""``backup`` run as the program ends the process itself once the command has returned
(``cli._exit_at_once``): no interpreter teardown, but nothing a normal exit does is lost.

Real processes: the exit is observed from outside, through a pipe, as a caller sees it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contentflow_backupd.cli.parser import parse_args

PROGRAM = """
import atexit, logging, sys
from contentflow_backupd.cli import _exit_at_once

handler = logging.FileHandler(sys.argv[1])
logging.getLogger("t").addHandler(handler)
logging.getLogger("t").warning("logged before the exit")
atexit.register(lambda: open(sys.argv[2], "w").write("ran"))
print("printed before the exit")  # a pipe: block-buffered, only flushed by the exit
sys.stderr.write("written to stderr")
_exit_at_once(3)
print("after the exit")
"""


def test_the_exit_keeps_code_output_logs_and_exit_handlers(tmp_path: Path) -> None:
    log, marker = tmp_path / "log", tmp_path / "marker"
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(log), str(marker)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3
    assert proc.stdout == "printed before the exit\n"
    assert proc.stderr == "written to stderr"
    assert marker.read_text() == "ran"
    assert log.read_text() == "logged before the exit\n"


@pytest.mark.parametrize(
    ("argv", "at_once"),
    [
        (["backup", "--kind", "full"], True),
        (["backup", "create", "--kind", "incremental"], True),
        (["backup", "list"], False),
        (["restore", "latest", "--pgdata", "/nowhere"], False),
        (["wal-push", "/nowhere/000000010000000000000001"], False),
    ],
)
def test_only_a_backup_asks_for_it(argv: list[str], at_once: bool) -> None:
    assert bool(getattr(parse_args(argv), "exit_at_once", False)) is at_once
