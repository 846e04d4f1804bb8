"""``make run`` keeps the previous demo (its database, repository, catalog and runs) unless asked
to start over (``make run FRESH=1``, i.e. ``--fresh``), and says which it does before doing it.
Runs the demo module as ``make run`` does, on a 1 MiB demo in a temp directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pg import free_port

pytestmark = pytest.mark.pg


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="backupd-demo-"))
    os.chmod(base, 0o755)  # the postgres user must reach <demo>/pg
    try:
        yield base / "demo"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def run_demo(demo_dir: Path, *args: str) -> str:
    """Start the demo, wait until the daemon is ready (its repository open), stop it with Ctrl-C (as a
    user does); return everything it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPD_")}
    env.update(
        {
            "BACKUPD_DEMO_DIR": str(demo_dir),
            "BACKUPD_DEMO_SIZE_MB": "1",
            "BACKUPD_SHUTDOWN_GRACE": "1s",  # Ctrl-C need not wait for the first backup
            "BACKUPD_HTTP__LISTEN": f"127.0.0.1:{free_port()}",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "contentflow_backupd.demo.daemon", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            lines.append(line)
            if "daemon_ready" in line:
                break
            assert time.monotonic() < deadline, "".join(lines)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=240)
        lines.append(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return "".join(lines)


def repository_id(demo_dir: Path) -> str:
    return (demo_dir / "repo" / "repo.json").read_text()


def test_make_run_keeps_the_previous_demo_unless_fresh(demo_dir: Path) -> None:
    first = run_demo(demo_dir)
    assert "keeping the previous demo" not in first
    repo = repository_id(demo_dir)

    again = run_demo(demo_dir)
    assert "keeping the previous demo" in again, again
    assert "removing" not in again, again
    assert repository_id(demo_dir) == repo, "the repository was replaced"
    assert "the demo repository and catalog stay" in again

    fresh = run_demo(demo_dir, "--fresh")
    assert f"removing the previous demo under {demo_dir}" in fresh, fresh
    assert fresh.index("removing the previous demo") < fresh.index("starting a disposable PostgreSQL")
    assert repository_id(demo_dir) != repo
