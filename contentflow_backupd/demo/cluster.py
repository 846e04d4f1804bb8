"""Disposable PostgreSQL clusters: ``initdb`` and ``pg_ctl`` on a free loopback port.

Used by the tests, the ``make run`` demo and the benchmarks. When they run as root, the cluster
runs as the ``postgres`` OS user (PostgreSQL refuses to run as root). Host connections use
SCRAM passwords, so tests exercise the way the tool passes passwords to its children.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

SUPERUSER = "postgres"


def find_pg_bin() -> Path:
    """The newest PostgreSQL server bin directory on this machine (``BACKUPD_TEST_PG_BIN`` wins)."""
    env = os.environ.get("BACKUPD_TEST_PG_BIN")
    if env:
        return Path(env)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries not found: `make test` or `make run` installs them")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres() -> dict[str, Any]:
    if os.geteuid() == 0:
        return {"user": "postgres", "group": "postgres"}
    return {}


def chown_for_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def bin_major(bin_dir: Path) -> int:
    """The major version of the PostgreSQL server in ``bin_dir`` (``postgres --version``)."""
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    m = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if not m:
        raise RuntimeError(f"{bin_dir / 'postgres'} --version printed no version: {out!r}")
    return int(m.group(1))


class PgCluster:
    """One disposable PostgreSQL cluster (the newest server on this machine unless ``bin_dir``
    names the directory of ``initdb``, ``pg_ctl`` and ``postgres`` to use)."""

    def __init__(
        self,
        base: Path,
        *,
        password: str | None = None,
        conf: dict[str, str] | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        """``bin_dir``: the server binaries to use (default: ``find_pg_bin()``)."""
        self.base = base
        self.bin = bin_dir or find_pg_bin()
        self.datadir = base / "data"
        self.sockdir = base / "sock"
        self.logfile = base / "postgres.log"
        self.port = free_port()
        self.password = password or "pw-" + uuid.uuid4().hex[:12]
        self.extra_conf = conf or {}
        self.version = int(self.bin.parent.name) if self.bin.parent.name.isdigit() else bin_major(self.bin)

    # -- lifecycle -------------------------------------------------------------------------
    def init(self) -> PgCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        for p in (self.base, self.sockdir):
            chown_for_postgres(p)
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        chown_for_postgres(pwfile)
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **_as_postgres(),
        )
        pwfile.unlink()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockdir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "on",
            "max_connections": "60",
            "shared_buffers": "64MB",
            "logging_collector": "off",
        }
        conf.update(self.extra_conf)
        with open(self.datadir / "postgresql.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        with open(self.datadir / "pg_hba.conf", "a") as f:
            f.write("host replication all 127.0.0.1/32 scram-sha-256\n")
        return self

    def start(self) -> PgCluster:
        subprocess.run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
            **_as_postgres(),
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ],
            check=False,
            capture_output=True,
            **_as_postgres(),
        )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # -- access ----------------------------------------------------------------------------
    def url(self, dbname: str = "postgres", *, user: str = SUPERUSER, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{quote(user)}:{quote(pw, safe='')}@127.0.0.1:{self.port}/{dbname}"

    def url_without_password(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{quote(user)}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(dbname), autocommit=True, **kw)

    def execute(self, sql: str, dbname: str = "postgres", params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str | None = None) -> str:
        name = name or "db_" + uuid.uuid4().hex[:10]
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("select 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@contextlib.contextmanager
def running_cluster(prefix: str = "backupd-pg-", **kw: Any) -> Iterator[PgCluster]:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)  # noqa: S103 - the postgres user must reach its data directory
    cluster = PgCluster(base / "cluster", **kw).init().start()
    try:
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


_DEMO_STATE = "demo.json"


def reopen_demo_cluster(demo_dir: Path, keep: tuple[str, ...]) -> PgCluster | None:
    """``make run`` without ``FRESH=1``: the previous demo's cluster under ``demo_dir/pg``,
    started again on a free port, with its data; None when there is no whole previous demo to
    keep (no cluster, no saved password, or one of ``keep`` (paths under ``demo_dir``) missing)."""
    state = demo_dir / "pg" / _DEMO_STATE
    cluster_dir = demo_dir / "pg"
    if not state.is_file() or not (cluster_dir / "data" / "PG_VERSION").is_file():
        return None
    if not all((demo_dir / name).exists() for name in keep):
        return None
    cluster = PgCluster(cluster_dir, password=json.loads(state.read_text())["password"])
    if (cluster.datadir / "postmaster.pid").exists():
        cluster.stop("immediate")  # left running by a demo that was killed
    with open(cluster.datadir / "postgresql.conf", "a") as f:
        f.write(f"port = {cluster.port}\n")  # the last setting wins; the old port may be taken
    print(f"==> starting the previous demo's PostgreSQL under {cluster_dir} again", flush=True)
    return cluster.start()


def fresh_demo_cluster(demo_dir: Path, size_mb: int) -> PgCluster:
    """``make run`` / ``make demo``: a new cluster under ``demo_dir/pg`` (whatever was under
    ``demo_dir`` is removed first) with a ``contentflow`` database of about ``size_mb`` MiB."""
    from contentflow_backupd.demo import datagen

    if demo_dir.exists():
        print(
            f"==> removing the previous demo under {demo_dir} (its database, repository and catalog)",
            flush=True,
        )
        old = PgCluster(demo_dir / "pg")
        if (old.datadir / "postmaster.pid").exists():
            old.stop("immediate")
        shutil.rmtree(demo_dir)
    demo_dir.mkdir(parents=True)
    os.chmod(demo_dir, 0o755)  # noqa: S103 - the postgres user must reach <demo>/pg
    print(f"==> starting a disposable PostgreSQL under {demo_dir}/pg", flush=True)
    cluster = PgCluster(demo_dir / "pg").init()
    # What reopen_demo_cluster needs to connect again (a demo's throwaway superuser password).
    fd = os.open(demo_dir / "pg" / _DEMO_STATE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"password": cluster.password}, f)
    cluster.start()
    cluster.execute('create database "contentflow"')
    t0 = time.monotonic()
    print(f"==> generating about {size_mb} MiB of sample ContentFlow data", flush=True)
    with cluster.connect("contentflow") as conn:
        datagen.create_schema(conn)
        datagen.populate(conn, size_mb)
    print(f"    done in {time.monotonic() - t0:.1f}s", flush=True)
    return cluster
