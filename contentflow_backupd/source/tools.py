"""PostgreSQL client programs as subprocesses: finding them, and streaming through them."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

from contentflow_backupd.errors import SourceError

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


PIPE_SIZE = 1024 * 1024
"""The stdout pipe of pg_dump and pg_basebackup (Linux default 64 KiB): a larger one lets the
program run ahead while we chunk, and lets us read in larger pieces (fewer reads and wake-ups on
both sides)."""


def widen_pipe(fd: int) -> None:
    """Best effort: ``F_SETPIPE_SZ`` may be refused (``/proc/sys/fs/pipe-max-size``, the per-user
    limit) or missing (not Linux); the default size only costs speed."""
    setsz = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsz is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setsz, PIPE_SIZE)


SECRET_ENV_PREFIXES = ("BACKUPD_",)
SECRET_ENV_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a PostgreSQL child program: ours, minus every secret it does not need
    (every ``BACKUPD_*`` setting, AWS secrets, ``PGPASSWORD``)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SECRET_ENV_PREFIXES) and k not in SECRET_ENV_NAMES
    }
    env.update(extra or {})
    return env


def tool_major(binary: Path) -> int | None:
    """The PostgreSQL major version of a client or server program (``--version``)."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, env=child_env()
        )
    except OSError:
        return None
    m = _VERSION.search(out.stdout)
    return int(m.group(1)) if m else None


def _fits(found: int | None, wanted: int | None, exact: bool) -> bool:
    if wanted is None or found is None:
        return True
    return found == wanted if exact else found >= wanted


def _refuse(name: str, where: str, found: int | None, wanted: int, exact: bool, setting: str) -> SourceError:
    if exact:
        return SourceError(
            f"{name} {where} is version {found}; this needs PostgreSQL {wanted} exactly "
            f"(a data directory of PostgreSQL {wanted} runs only under a server of that major)",
            hint=f"install the PostgreSQL {wanted} server binaries, or set {setting} to their directory",
        )
    return SourceError(
        f"{name} {where} is version {found}, older than the server ({wanted})",
        hint=f"install the PostgreSQL {wanted} client tools (or newer) or set {setting} to their directory",
    )


def find_tool(
    name: str, server_major: int | None, bin_dir: Path | None = None, *, exact: bool = False
) -> Path:
    """The ``name`` binary to use against a server (or data directory) of ``server_major``.

    ``bin_dir`` (``BACKUPD_PG_BIN``) wins. Otherwise the Debian layout
    ``/usr/lib/postgresql/<major>/bin`` of the server's major version, then the newest one that
    is at least as new, then ``PATH``. Client tools may be newer than the server (pg_dump of 18
    dumps a 15 server), never older: pg_dump and pg_basebackup older than the server refuse to
    run or would miss what they do not know, so an older one is refused here, before anything is
    written, naming the major needed. ``exact``: the program runs a server on a data directory
    (``pg_ctl``), which only that major can do.
    """
    if bin_dir is not None:
        path = bin_dir / name
        if not path.exists():
            raise SourceError(f"{name} not found in BACKUPD_PG_BIN={bin_dir}")
        if server_major is not None:
            found_major = tool_major(path)
            if not _fits(found_major, server_major, exact):
                raise _refuse(
                    name, f"in BACKUPD_PG_BIN={bin_dir}", found_major, server_major, exact, "BACKUPD_PG_BIN"
                )
        return path
    candidates: list[tuple[int, Path]] = []
    for found in glob.glob(f"/usr/lib/postgresql/*/bin/{name}"):
        major_dir = Path(found).parent.parent.name
        if major_dir.isdigit():
            candidates.append((int(major_dir), Path(found)))
    candidates.sort()
    if server_major is not None:
        for major, path in candidates:
            if major == server_major:
                return path
        if not exact:
            for major, path in candidates:
                if major > server_major:
                    return path
    elif candidates:
        return candidates[-1][1]
    on_path = shutil.which(name)
    if on_path:
        found_path = Path(on_path)
        path_major = tool_major(found_path)
        if _fits(path_major, server_major, exact):
            return found_path
        assert server_major is not None
        raise _refuse(name, "on PATH", path_major, server_major, exact, "BACKUPD_PG_BIN")
    if server_major is not None and candidates:
        have = ", ".join(str(m) for m, _ in candidates)
        need = f"PostgreSQL {server_major}" + ("" if exact else " or newer")
        raise SourceError(
            f"{name} of {need} not found: /usr/lib/postgresql has only {have}",
            hint=f"install the PostgreSQL {server_major} client tools or set BACKUPD_PG_BIN to their "
            "directory",
        )
    raise SourceError(
        f"{name} not found",
        hint="install the PostgreSQL client tools (Debian: postgresql-client) or set BACKUPD_PG_BIN",
    )


class StderrTail:
    """Drains a child's stderr in a thread, keeping the last few KB for error messages."""

    def __init__(self, proc: subprocess.Popen[bytes], limit: int = 16384) -> None:
        import threading

        self._buf = bytearray()
        self._limit = limit
        self._thread = threading.Thread(target=self._drain, args=(proc,), daemon=True)
        self._thread.start()

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, b""):
            self._buf += line
            if len(self._buf) > self._limit:
                del self._buf[: len(self._buf) - self._limit]

    def text(self) -> str:
        self._thread.join(timeout=10)
        return self._buf.decode("utf-8", errors="replace").strip()
