"""PostgreSQL client programs as subprocesses: finding them, and streaming through them."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from pathlib import Path

from contentflow_backupd.errors import SourceError

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


def _major_of(binary: Path) -> int | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    m = _VERSION.search(out.stdout)
    return int(m.group(1)) if m else None


def find_tool(name: str, server_major: int | None, bin_dir: Path | None = None) -> Path:
    """The ``name`` binary to use against a server of ``server_major``.

    ``bin_dir`` (``BACKUPD_PG_BIN``) wins. Otherwise the Debian layout
    ``/usr/lib/postgresql/<major>/bin`` of the server's major version, then the newest one that
    is at least as new, then ``PATH``. ``pg_dump`` older than the server refuses to run, so an
    older one is reported here with a clear message.
    """
    if bin_dir is not None:
        path = bin_dir / name
        if not path.exists():
            raise SourceError(f"{name} not found in BACKUPD_PG_BIN={bin_dir}")
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
        for major, path in candidates:
            if major > server_major:
                return path
    elif candidates:
        return candidates[-1][1]
    on_path = shutil.which(name)
    if on_path:
        found_path = Path(on_path)
        path_major = _major_of(found_path)
        if server_major is None or path_major is None or path_major >= server_major:
            return found_path
        raise SourceError(
            f"{name} on PATH is version {path_major}, older than the server ({server_major})",
            hint=f"install the PostgreSQL {server_major} client tools or set BACKUPD_PG_BIN",
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


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Terminate a child, then kill it if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
