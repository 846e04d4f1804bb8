"""``pg_combinebackup``: a data directory rebuilt from a full backup and its native incrementals.

The tool must be of the backups' major version (it refuses others): ``BACKUPD_PG_BIN`` when set,
else ``/usr/lib/postgresql/<major>/bin``, else ``PATH``, each checked with ``--version``.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import structlog

from contentflow_backupd import procs
from contentflow_backupd.errors import SourceError
from contentflow_backupd.source.tools import tool_major

log = structlog.get_logger(__name__)


def find_combinebackup(major: int, bin_dir: Path | None) -> Path:
    """``pg_combinebackup`` of PostgreSQL ``major``, or ``SourceError`` naming what is needed."""
    name = "pg_combinebackup"
    if bin_dir is not None:
        candidates = [bin_dir / name]
    else:
        candidates = [Path(p) for p in glob.glob(f"/usr/lib/postgresql/{major}/bin/{name}")]
        on_path = shutil.which(name)
        if on_path:
            candidates.append(Path(on_path))
    seen: list[str] = []
    for path in candidates:
        if not path.exists():
            continue
        found = tool_major(path)
        if found == major:
            return path
        seen.append(f"{path} is version {found or 'unknown'}")
    where = f"BACKUPD_PG_BIN={bin_dir}" if bin_dir is not None else f"/usr/lib/postgresql/{major}/bin or PATH"
    also = f" ({'; '.join(seen)})" if seen else ""
    raise SourceError(
        f"restoring a native incremental backup needs pg_combinebackup of PostgreSQL {major}, "
        f"not found in {where}{also}; nothing was written",
        hint=f"install the PostgreSQL {major} client tools, or set BACKUPD_PG_BIN to their directory",
    )


def combine_backups(tool: Path, inputs: Sequence[Path], output: Path, *, link: bool) -> None:
    """Run ``pg_combinebackup`` on ``inputs`` (full first, then each incremental in order) into
    the empty directory ``output``. ``link``: hard-link unchanged files instead of copying them
    (PostgreSQL 18+; the inputs must be on the same file system and are removed afterwards)."""
    argv = [str(tool), "-o", str(output), *(str(p) for p in inputs)]
    if link:
        argv.insert(1, "--link")
    log.info("combine_started", backups=len(inputs), output=str(output))
    proc = procs.run(argv, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        out = " ".join((proc.stderr + " " + proc.stdout).split())
        raise SourceError(f"pg_combinebackup failed (exit {proc.returncode}): {out[-2000:]}")


def give_tree(root: Path, uid: int, gid: int) -> None:
    """Hand ``root`` and everything under it to ``uid``/``gid`` (pg_combinebackup's new files
    belong to whoever ran it)."""
    if os.geteuid() != 0 or uid == 0:
        return
    os.chown(root, uid, gid, follow_symlinks=False)
    for top, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.chown(os.path.join(top, name), uid, gid, follow_symlinks=False)
