"""Drive the installed ``contentflow-backupd`` command the way a user does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def command_path() -> str:
    here = Path(sys.executable).parent / "contentflow-backupd"
    if here.exists():
        return str(here)
    found = shutil.which("contentflow-backupd")
    if not found:
        raise RuntimeError("contentflow-backupd is not installed: run `make test`")
    return found


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )


@dataclass
class Cli:
    """An environment (settings as BACKUPD_* variables) and a way to run commands in it."""

    env: dict[str, str] = field(default_factory=dict)
    history: list[Result] = field(default_factory=list)
    user: str | None = None
    """Run commands as this OS user (tests run as root; physical setups run as ``postgres``)."""

    def _user_kw(self) -> dict[str, str]:
        if self.user and os.geteuid() == 0:
            return {"user": self.user, "group": self.user}
        return {}

    def full_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPD_")}
        base.update({"BACKUPD_LOG__FORMAT": "json"})
        base.update(self.env)
        base.update(extra or {})
        return base

    def run(
        self,
        *args: str,
        check: bool = False,
        env: dict[str, str] | None = None,
        timeout: float = 600,
    ) -> Result:
        argv = [command_path(), *args]
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=self.full_env(env), timeout=timeout, **self._user_kw()
        )
        result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
        self.history.append(result)
        if check and proc.returncode != 0:
            raise AssertionError(str(result))
        return result

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [command_path(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.full_env(env),
            **self._user_kw(),
        )

    def ok_json(self, *args: str) -> Any:
        return self.run(*args, "--json", check=True).json()
