"""Connection strings without secrets: what may go on a command line, and what may not.

A libpq URI or key/value string is split into a password-free conninfo (safe for argv and logs)
and the password, which child processes get through a private ``PGPASSFILE``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import conninfo as pgconninfo

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.source.tools import child_env


@dataclass(frozen=True, repr=False)
class ConnInfo:
    """A parsed connection string; ``password`` is kept apart and never rendered."""

    params: dict[str, str]
    password: str | None = field(default=None)
    setting: str = field(default="BACKUPD_DATABASE_URL", compare=False)
    """The setting it came from, for messages (``BACKUPD_CLUSTERS__ORDERS__DATABASE_URL``)."""

    @classmethod
    def parse(cls, url: str | None, *, setting: str = "BACKUPD_DATABASE_URL") -> ConnInfo:
        if not url:
            return cls(params={}, setting=setting)
        try:
            params = {k: str(v) for k, v in pgconninfo.conninfo_to_dict(url).items() if v is not None}
        except psycopg.Error as exc:
            msg = str(exc).replace(url, "<url>")
            raise ConfigError(f"{setting}: not a valid PostgreSQL connection string ({msg})") from None
        password = params.pop("password", None)
        return cls(params=params, password=password, setting=setting)

    def with_database(self, dbname: str) -> ConnInfo:
        return ConnInfo(
            params={**self.params, "dbname": dbname}, password=self.password, setting=self.setting
        )

    @property
    def dbname(self) -> str | None:
        return self.params.get("dbname")

    def safe(self) -> str:
        """The conninfo without password: for argv (``-d``) and messages."""
        return pgconninfo.make_conninfo("", **self.params)

    def display(self) -> str:
        host = self.params.get("host", "(default host)")
        port = self.params.get("port", "5432")
        db = self.params.get("dbname", "(default database)")
        user = self.params.get("user")
        return f"{user + '@' if user else ''}{host}:{port}/{db}"

    def full(self) -> str:
        """With password: only for in-process psycopg connections."""
        extra = {"password": self.password} if self.password is not None else {}
        return pgconninfo.make_conninfo("", **self.params, **extra)

    def __repr__(self) -> str:
        return f"ConnInfo({self.display()})"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def libpq_env(info: ConnInfo, tmp_root: Path | None = None) -> Iterator[dict[str, str]]:
    """Environment for a libpq child: a private 0600 passfile holding the password, if any.

    Without a password in the URL the child keeps ``PGPASSWORD``/``PGPASSFILE``/``~/.pgpass`` of
    the invoking user, as libpq normally does. The passfile is removed when the block exits.
    """
    if info.password is None:
        keep = {k: os.environ[k] for k in ("PGPASSWORD", "PGPASSFILE") if k in os.environ}
        yield child_env(keep)
        return
    if tmp_root is not None:
        tmp_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmpdir = tempfile.mkdtemp(prefix="pgpass-", dir=tmp_root)
    try:
        os.chmod(tmpdir, 0o700)
        path = Path(tmpdir) / "pgpass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"*:*:*:*:{_escape(info.password)}\n")
        yield child_env({"PGPASSFILE": str(path)})
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
