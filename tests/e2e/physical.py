"""A PostgreSQL cluster whose archive_command is this tool, and a CLI environment that runs as
the same OS user, the way a physical setup runs in production."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.cli import Cli, command_path
from tests.support.pg import PgCluster

PASSPHRASE = "physical test passphrase"


@dataclass
class PhysicalSetup:
    base: Path
    cluster: PgCluster
    cli: Cli
    config: Path

    @property
    def repo(self) -> Path:
        return self.base / "repo"

    def restore_dir(self, name: str) -> Path:
        path = self.base / name
        return path


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _check_postgres_can_run_the_tool() -> None:
    """archive_command runs the tool as the postgres user: it must be able to execute it."""
    if os.geteuid() != 0:
        return
    probe = subprocess.run(
        [command_path(), "--version"], capture_output=True, text=True, user="postgres", group="postgres"
    )
    if probe.returncode != 0:
        raise RuntimeError(
            f"the postgres user cannot run {command_path()} ({probe.stderr.strip()[-300:]}): build the "
            "venv with a Python every user can read (`make test` uses /usr/bin/python3) in a directory "
            "the postgres user can reach"
        )


@contextmanager
def physical_setup(
    extra_conf: dict[str, str] | None = None,
    archive: bool = True,
    bin_dir: Path | None = None,
    push: str = "wal-push",
) -> Iterator[PhysicalSetup]:
    """``bin_dir``: the PostgreSQL binaries of the cluster, also the tool's ``pg_bin`` (default:
    the newest Debian server, with the tool finding its own). ``push``: the spelling of the
    archive_command's verb (``wal-push``, as in configurations in the wild, or ``wal push``)."""
    _check_postgres_can_run_the_tool()
    base = Path(tempfile.mkdtemp(prefix="backupd-phys-"))
    os.chmod(base, 0o755)  # the postgres user works here
    _chown(base)
    passfile = base / "passphrase"
    passfile.write_text(PASSPHRASE + "\n")
    passfile.chmod(0o600)
    _chown(passfile)
    cluster = PgCluster(base / "cluster", bin_dir=bin_dir)
    config = base / "backupd.toml"
    config.write_text(
        f'repository = "file://{base / "repo"}"\n'
        f'state_dir = "{base / "state"}"\n'
        f'database_url = "{cluster.url("postgres")}"\n'
        'mode = "physical"\n'
        + (f'pg_bin = "{bin_dir}"\n' if bin_dir is not None else "")
        + "[chunking]\navg_size = 65536\n"
        f'[encryption]\npassphrase_file = "{passfile}"\n'
        "[wal]\narchive_timeout = 30\n"
    )
    config.chmod(0o600)
    _chown(config)
    conf = {
        "wal_level": "replica",
        "archive_mode": "on" if archive else "off",
        "archive_command": f"'{command_path()} --config {config} {push} %p'",
        "max_wal_senders": "10",
    }
    conf.update(extra_conf or {})
    cluster.extra_conf = conf
    cli = Cli(env={"BACKUPD_CONFIG": str(config)}, user="postgres")
    try:
        cli.run("init", check=True)
        cluster.init().start()
        yield PhysicalSetup(base=base, cluster=cluster, cli=cli, config=config)
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
