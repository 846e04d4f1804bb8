"""The commands the benchmark times: ours (``contentflow-backupd``) and the baselines.

Baselines get the database password through ``PGPASSWORD`` only; ours gets its settings as
``BACKUPD_*`` variables (its URL carries the password, which the tool hands to ``pg_dump`` in a
private passfile) and restore targets as password-free URLs plus ``PGPASSWORD``. No argv holds a
password, so argv can go into the results file as is.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Measured, run_measured
from tests.support.pg import PgCluster

PASSPHRASE = "bench passphrase: correct horse battery staple"
RESTORE_FLAGS = ["--no-password", "--exit-on-error", "--single-transaction"]
"""What our streaming restore passes to pg_restore; the baseline gets the same."""


def tool_command() -> str:
    here = Path(sys.executable).parent / "contentflow-backupd"
    if here.exists():
        return str(here)
    found = shutil.which("contentflow-backupd")
    if not found:
        raise RuntimeError("contentflow-backupd is not installed: run `make venv`")
    return found


def installed_tool(base: Path) -> str:
    """The command as users install it: a regular (not editable) install of this checkout in its
    own virtual environment under ``base``, its dependencies taken from this one (a ``.pth`` line
    naming this environment's site-packages, whose own ``.pth`` hooks are not run).

    The figures per WAL segment are mostly a Python start: the dev environment's editable install
    adds an import hook to every start (about 12 ms, as much as the rest of a ``wal fetch``), and
    an old pip's console script imports ``re`` (about 6 ms). Users run neither."""
    root = Path(__file__).resolve().parent.parent
    venv = base / "installed"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    site.mkdir(parents=True, exist_ok=True)
    (site / "bench-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    build = base / "installed-build"
    build.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-cache-dir", str(root)],
        check=True,
        env={**os.environ, "TMPDIR": str(build)},
    )
    shutil.rmtree(build, ignore_errors=True)
    tool = venv / "bin" / "contentflow-backupd"
    if not tool.exists():
        raise RuntimeError(f"installing this checkout into {venv} made no {tool.name} command")
    return str(tool)


def postmaster_pid(pg: PgCluster) -> int | None:
    try:
        return int((pg.datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Repo:
    """One local repository with its own state directory (SQLite catalog)."""

    root: Path

    @property
    def path(self) -> Path:
        return self.root / "repo"

    def stored_bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Bench:
    """Runs measured commands against one cluster, with scratch space under ``work``."""

    def __init__(self, pg: PgCluster, work: Path, quiet_seconds: float = 0.0) -> None:
        self.pg = pg
        self.quiet_seconds = quiet_seconds
        self.work = work
        self.tool = tool_command()
        self.pm_pid = postmaster_pid(pg)

    # -- environments ---------------------------------------------------------------------
    def _base_env(self) -> dict[str, str]:
        return {
            k: v for k, v in os.environ.items() if not k.startswith(("BACKUPD_", "PG")) and k != "PYTHONPATH"
        }

    def pg_env(self) -> dict[str, str]:
        return {**self._base_env(), "PGPASSWORD": self.pg.password}

    def tool_env(self, repo: Repo, db: str) -> dict[str, str]:
        return {
            **self.pg_env(),
            "BACKUPD_DATABASE_URL": self.pg.url(db),
            "BACKUPD_REPOSITORY": f"file://{repo.path}",
            "BACKUPD_STATE_DIR": str(repo.root / "state"),
            "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
            "BACKUPD_LOG__FORMAT": "json",
            "BACKUPD_PG_BIN": str(self.pg.bin),
        }

    def run(self, argv: list[str], env: dict[str, str], *, timed: bool = True) -> Measured:
        """Timed runs first wait (bounded) for the machine to be quiet."""
        quiet = self.quiet_seconds if timed else 0.0
        return run_measured(argv, env=env, workdir=self.work, postmaster_pid=self.pm_pid, quiet_seconds=quiet)

    # -- ours -------------------------------------------------------------------------------
    def new_repo(self, db: str) -> Repo:
        repo = Repo(self.work / f"repo-{uuid.uuid4().hex[:8]}")
        repo.root.mkdir()
        self.run([self.tool, "init", "--json"], self.tool_env(repo, db), timed=False)
        return repo

    def ours_backup(self, repo: Repo, db: str, kind: str = "full") -> tuple[Measured, dict[str, Any]]:
        m = self.run([self.tool, "backup", "--kind", kind, "--json"], self.tool_env(repo, db))
        return m, json.loads(m.stdout)

    def ours_restore(self, repo: Repo, source_db: str, target_db: str) -> tuple[Measured, dict[str, Any]]:
        argv = [
            self.tool, "restore", "latest",
            "--to-database", self.pg.url_without_password(target_db), "--create", "--json",
        ]  # fmt: skip
        m = self.run(argv, self.tool_env(repo, source_db))
        return m, json.loads(m.stdout)

    # -- baselines --------------------------------------------------------------------------
    def pg_dump_argv(self, db: str, *extra: str) -> list[str]:
        return [
            str(self.pg.bin / "pg_dump"),
            "--no-password",
            *extra,
            "--dbname",
            self.pg.url_without_password(db),
        ]

    def pg_dump_custom(self, db: str, out: str = "/dev/null", *, timed: bool = True) -> Measured:
        """``pg_dump -Fc -Z0 -f OUT``: what our backup runs, without our pipeline.

        ``/dev/null`` cannot be fsynced, so that case adds ``--no-sync`` (our backup reads
        pg_dump's stdout, which pg_dump never fsyncs either).
        """
        sync = ["--no-sync"] if out == "/dev/null" else []
        argv = self.pg_dump_argv(db, "-Fc", "-Z0", *sync, "-f", out)
        return self.run(argv, self.pg_env(), timed=timed)

    def pg_dump_gzip(self, db: str, out: Path) -> Measured:
        """The cron-job script: ``pg_dump DB | gzip > FILE`` (plain SQL, gzip's default level)."""
        script = f"set -o pipefail; {shlex.join(self.pg_dump_argv(db))} | gzip > {shlex.quote(str(out))}"
        return self.run(["bash", "-c", script], self.pg_env())

    def pg_restore_file(self, dump: Path, target_db: str) -> Measured:
        """``createdb`` then ``pg_restore --single-transaction --exit-on-error`` from a file."""
        url = self.pg.url_without_password(target_db)
        base = self.pg.url_without_password("postgres")
        script = (
            f"set -e; {shlex.quote(str(self.pg.bin / 'createdb'))} --no-password --maintenance-db "
            f"{shlex.quote(base)} {shlex.quote(target_db)}; "
            + shlex.join([str(self.pg.bin / "pg_restore"), *RESTORE_FLAGS, "--dbname", url, str(dump)])
        )
        return self.run(["bash", "-c", script], self.pg_env())
