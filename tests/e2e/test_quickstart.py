"""The README's quick start, run literally: its fenced block is extracted from README.md and run
by bash against a real PostgreSQL, with only the machine-specific values redirected (the
passphrase directory, the repository, the database URLs, the state directory). A step that
fails for a new user (the missing `mkdir -p` before writing the passphrase) fails here."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import checksums, seed
from tests.support.cli import command_path
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

ROOT = Path(__file__).resolve().parents[2]


def quick_start_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start with a real database", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found, "no ```sh block in the README's quick start"
    return found.group(1)


def redirect(block: str, replacements: dict[str, str]) -> str:
    """The block with each machine-specific value replaced (each must occur: a README edit that
    drops one makes the test say so) and `pip install` left out (the command is installed)."""
    for old, new in replacements.items():
        assert old in block, f"the quick start no longer mentions {old}"
        block = block.replace(old, new)
    return "\n".join(line for line in block.splitlines() if not line.startswith("pip install"))


@pytest.fixture
def workdir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="backupd-quickstart-"))
    os.chmod(base, 0o777)  # the postgres user works here too
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.mark.parametrize("user", ["root", "postgres"])
def test_readme_quick_start_runs_as_written(pg: PgCluster, pg_db: str, workdir: Path, user: str) -> None:
    if user == "postgres" and os.geteuid() != 0:
        pytest.skip("running as another user needs root")
    seed(pg, pg_db, size_mb=1)
    restored = f"qs_restored_{pg_db}"
    script = redirect(
        quick_start_block(),
        {
            "/etc/contentflow-backupd": f"{workdir}/etc/contentflow-backupd",
            "s3://my-bucket/pg/prod": f"file://{workdir}/repo",
            "postgresql://backup@db.internal:5432/contentflow": pg.url(pg_db),
            "postgresql://admin@db2/contentflow_restored": pg.url(restored),
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPD_")}
    env["PATH"] = f"{Path(command_path()).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["BACKUPD_STATE_DIR"] = f"{workdir}/state"
    kw = {"user": "postgres", "group": "postgres"} if user == "postgres" and os.geteuid() == 0 else {}
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            env=env,
            cwd=workdir,
            timeout=600,
            **kw,  # type: ignore[arg-type]
        )
        assert proc.returncode == 0, f"{script}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        passphrase = workdir / "etc" / "contentflow-backupd" / "passphrase"
        assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
        assert len(passphrase.read_text().strip()) == 44  # 32 random bytes in base64
        assert "full" in proc.stdout and "incremental" in proc.stdout  # `list` shows both backups
        assert checksums(pg, restored) == checksums(pg, pg_db)
    finally:
        pg.drop_database(restored)
