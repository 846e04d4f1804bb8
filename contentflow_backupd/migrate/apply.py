"""Step 3 of ``migrate``: run the user's migration command with the database URL in its
environment, ``lock_timeout``/``statement_timeout`` in force for its sessions (as role settings,
see ``source/schema.py`` for why), its output streamed into our log and its progress logged.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import structlog

from contentflow_backupd.errors import UsageError
from contentflow_backupd.procs import stop_process
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.schema import RoleSettings, apply_role_settings, read_role_settings
from contentflow_backupd.source.tools import child_env

log = structlog.get_logger(__name__)

OUTPUT_TAIL_LINES = 40


@dataclass
class CommandResult:
    returncode: int
    duration_seconds: float
    output_tail: list[str] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    """The progress logger's summary (lock waits seen, longest statements)."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def pg_duration(seconds: float) -> str:
    """A PostgreSQL duration setting value, in milliseconds."""
    return f"{max(1, round(seconds * 1000))}ms"


def guarded_settings(
    current: RoleSettings, lock_timeout: float, statement_timeout: float | None
) -> RoleSettings:
    values: dict[str, str | None] = {"lock_timeout": pg_duration(lock_timeout)}
    values["statement_timeout"] = (
        pg_duration(statement_timeout)
        if statement_timeout is not None
        else current.values.get("statement_timeout")
    )
    return RoleSettings(current.role, current.database, values)


def run_command(
    command: Sequence[str],
    *,
    database_url: str,
    conninfo: ConnInfo,
    lock_timeout: float,
    statement_timeout: float | None,
    remember: Callable[[RoleSettings | None], None],
    progress: Callable[[], Any],
    cwd: str | None = None,
) -> CommandResult:
    """Run ``command`` until it exits. Before it starts, the role's settings in the database are
    saved through ``remember`` (the catalog keeps them until they are put back) and replaced by
    the guarded ones; they are put back when it ends, whatever happens (then ``remember(None)``).
    ``progress()`` returns a context manager that logs progress while the command runs and has a
    ``summary()``."""
    if not command:
        raise UsageError(
            "no migration command given", hint="put it after `--`, e.g. `-- npx prisma migrate deploy`"
        )
    previous = read_role_settings(conninfo)
    remember(previous)
    apply_role_settings(conninfo, guarded_settings(previous, lock_timeout, statement_timeout))
    log.info(
        "migration_settings_applied",
        role=previous.role,
        database=previous.database,
        lock_timeout=pg_duration(lock_timeout),
        statement_timeout=None if statement_timeout is None else pg_duration(statement_timeout),
    )
    try:
        return _run(command, database_url, progress, cwd)
    finally:
        apply_role_settings(conninfo, previous)
        remember(None)
        log.info("migration_settings_restored", role=previous.role, database=previous.database)


def _run(
    command: Sequence[str], database_url: str, progress: Callable[[], Any], cwd: str | None
) -> CommandResult:
    env = child_env({"DATABASE_URL": database_url})
    env.pop("PGOPTIONS", None)  # the role settings carry the timeouts; nothing else should differ
    t0 = time.monotonic()
    tail: list[str] = []
    lock = threading.Lock()
    try:
        proc = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=False,
        )
    except OSError as exc:
        raise UsageError(f"cannot run the migration command {command[0]!r}: {exc.strerror}") from None
    log.info("migration_command_started", command=_redacted(command, database_url), pid=proc.pid)

    bound = log.bind(**structlog.contextvars.get_contextvars())  # threads do not inherit them

    def pump(stream: IO[bytes], name: str) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            if database_url and database_url in line:
                line = line.replace(database_url, "<DATABASE_URL>")
            bound.info("migration_output", stream=name, line=line)
            with lock:
                tail.append(f"{name}: {line}")
                del tail[:-OUTPUT_TAIL_LINES]

    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=pump, args=(proc.stdout, "stdout"), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, "stderr"), daemon=True),
    ]
    for t in pumps:
        t.start()
    watcher = progress()
    try:
        with watcher:
            try:
                rc = proc.wait()
            except BaseException:
                stop_process(proc)
                raise
    finally:
        for t in pumps:
            t.join(timeout=5)
    duration = time.monotonic() - t0
    log.info("migration_command_finished", returncode=rc, duration_seconds=round(duration, 3))
    summary = watcher.summary() if hasattr(watcher, "summary") else {}
    return CommandResult(rc, duration, list(tail), summary)


def _redacted(command: Sequence[str], database_url: str) -> list[str]:
    return [("<DATABASE_URL>" if database_url and database_url in arg else arg) for arg in command]


def redact_command(command: Sequence[str], secrets_: Sequence[str]) -> list[str]:
    """The command as recorded in the catalog: arguments holding a known secret, or a URL with a
    password (``scheme://user:password@``), are replaced."""
    out = []
    for arg in command:
        if any(s and s in arg for s in secrets_):
            out.append("<redacted>")
        elif (
            "://" in arg and "@" in arg.split("://", 1)[1] and ":" in arg.split("://", 1)[1].split("@", 1)[0]
        ):
            out.append("<redacted url>")
        else:
            out.append(arg)
    return out


def actor() -> str:
    """Who runs this: the OS user (login name when known) and the host."""
    import pwd
    import socket

    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    login = os.environ.get("SUDO_USER")
    who = f"{login} (as {user})" if login and login != user else user
    return f"{who}@{socket.gethostname()}"
