"""The import rules of docs/architecture.md, enforced: a small AST check over the package.

Every ``import`` and ``from ... import`` counts, at module level, inside functions and under
``TYPE_CHECKING`` alike. The tables below are the ones docs/architecture.md draws; change both
together. ``test_checker_*`` prove the checker fails on a violation (a synthetic package in
``tmp_path``), so a rule that silently stopped matching would be noticed.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import contentflow_backupd

PACKAGE = "contentflow_backupd"
ROOT = Path(contentflow_backupd.__file__).parent

# -- the layers: a unit (top-level module or subpackage) imports only units of a lower layer ---
# Leaves (layer 0) may import each other; on every other layer, siblings do not.
LAYERS: dict[str, int] = {
    "__main__": 9,
    "entry": 8,  # the command: the WAL fast paths (walconf, walsocket, walspool), else cli
    "cli": 7,
    "wiring": 6,
    "daemon": 5,
    "http": 4,
    "scheduling": 4,
    "migrate": 4,
    "demo": 4,  # demo and benchmark data (bench/, tests): psycopg of its own
    "ops": 3,
    "repository": 2,
    "source": 2,
    "catalog": 2,
    "storage": 1,
    "__init__": 0,  # the package itself: __version__
    "errors": 0,
    "model": 0,
    "wal": 0,
    "timespec": 0,
    "observability": 0,
    "signals": 0,
    "sdnotify": 0,
    "sqltext": 0,
    "backoff": 0,  # the retry/backoff policy of every loop (pure)
    "fsutil": 0,  # fsync of a directory (stdlib)
    "memtune": 0,  # glibc's allocator thresholds for a streaming command (stdlib ctypes)
    "procs": 0,  # is a pid alive, stop a process (stdlib)
    "statedir": 0,  # the default state directory (stdlib)
    "walsocket": 0,  # the WAL socket's protocol and lean client (stdlib only)
    "walconf": 0,  # the lean WAL clients' configuration and command line (stdlib only)
    "walspool": 0,  # the WAL prefetch spool (stdlib only)
    "settings": 0,  # a leaf by its imports; who may import it is ruled below
    "settings_clusters": 0,  # named clusters' inheritance (settings' own helper, same rules)
    "settings_sections": 0,  # the sections' models (settings' own part, same rules)
}

# -- what ops may import from the rest of the package (prefixes of module names) -------------
OPS_ALLOWED = (
    "contentflow_backupd.ops",
    "contentflow_backupd.model",
    "contentflow_backupd.errors",
    "contentflow_backupd.wal",
    "contentflow_backupd.timespec",
    "contentflow_backupd.signals",
    "contentflow_backupd.observability",
    "contentflow_backupd.sqltext",  # pure: split a SQL file into statements
    "contentflow_backupd.backoff",  # pure: retry/backoff policies
    "contentflow_backupd.fsutil",  # stdlib: fsync a directory
    "contentflow_backupd.procs",  # stdlib: is a pid alive, stop a process
    "contentflow_backupd.repository",  # the repository format: its protocols and pure helpers
    "contentflow_backupd.walspool",  # the WAL prefetch spool the prefetch helper fills (stdlib)
    "contentflow_backupd.catalog.base",  # catalog protocols and records
    "contentflow_backupd.catalog.audit_records",  # audit records (pure)
    "contentflow_backupd.source.base",  # PostgreSQL-side protocols and records
    "contentflow_backupd.storage.base",  # the Storage protocol
)
OPS_ALLOWED_EXACT = ("contentflow_backupd",)  # __version__

# -- where each third-party library may be imported (module names or package prefixes) --------
LIBRARIES: dict[str, tuple[str, ...]] = {
    "boto3": ("storage.s3", "repository.kms"),
    "botocore": ("storage.s3", "repository.kms"),
    "mypy_boto3_s3": ("storage.s3", "storage.s3_versions"),  # type stubs, TYPE_CHECKING only
    "cryptography": ("repository",),
    "blake3": ("repository",),
    "pyfastcdc": ("repository.chunker",),
    "zstandard": ("repository",),
    "psycopg": ("source", "demo"),
    "sqlalchemy": ("catalog",),
    "alembic": ("catalog",),
    "apscheduler": ("scheduling",),
    "prometheus_client": ("observability.metrics", "http"),
    "pglast": ("migrate.risk",),
    "pydantic": ("settings", "settings_clusters", "settings_sections", "wiring.configshow", "wiring.digest"),
    "pydantic_settings": ("settings",),
    "tqdm": ("observability.progress",),
}

# -- settings and wiring -----------------------------------------------------------------------
# cli: its __init__ (the entry point) only
SETTINGS_IMPORTERS = ("settings", "settings_clusters", "settings_sections", "wiring", "cli")
WIRING_IMPORTERS_LAYER = LAYERS["cli"]  # nothing below the command line imports wiring


@dataclass(frozen=True)
class Import:
    source: str
    """The importing module, e.g. ``contentflow_backupd.ops.backup.run``."""
    target: str
    """The imported module, absolute (``from pkg import mod`` names ``pkg.mod`` when it is one)."""
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}"


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _is_module(name: str, root: Path, package: str) -> bool:
    rel = Path(*name.split(".")[1:]) if name != package else Path()
    return name.split(".")[0] == package and (
        (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()
    )


def imports_of(root: Path, package: str) -> Iterator[Import]:
    """Every import in every module under ``root`` (the directory of ``package``)."""
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root, package)
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(source, alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = source.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    yield Import(source, sub if _is_module(sub, root, package) else module, node.lineno)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_violations(
    imports: list[Import], package: str, layers: Mapping[str, int], pending: frozenset[str] = frozenset()
) -> list[str]:
    """Imports that point up or sideways; ``pending``: "<module> -> <module>" pairs let through."""
    out: list[str] = []
    for imp in imports:
        if str(imp) in pending:
            continue
        if not imp.target.startswith(package + ".") and imp.target != package:
            continue
        src, dst = unit_of(imp.source), unit_of(imp.target)
        if src == dst:
            continue
        if src not in layers or dst not in layers:
            out.append(f"{imp} (line {imp.line}): {src if src not in layers else dst} has no layer")
            continue
        if layers[dst] > layers[src] or (layers[dst] == layers[src] and layers[src] != 0):
            out.append(f"{imp} (line {imp.line}): {src} (layer {layers[src]}) may not import {dst} "
                       f"(layer {layers[dst]})")  # fmt: skip
    return out


def ops_violations(imports: list[Import], package: str) -> list[str]:
    out: list[str] = []
    for imp in imports:
        if unit_of(imp.source) != "ops" or not (
            imp.target == package or imp.target.startswith(package + ".")
        ):
            continue
        allowed = imp.target in OPS_ALLOWED_EXACT or any(
            imp.target == p or imp.target.startswith(p + ".") for p in OPS_ALLOWED
        )
        if not allowed and f"{imp} (line {imp.line})" not in out:
            out.append(f"{imp} (line {imp.line})")
    return out


def library_violations(
    imports: list[Import], package: str, libraries: Mapping[str, tuple[str, ...]]
) -> list[str]:
    out = []
    for imp in imports:
        top = imp.target.split(".")[0]
        if top not in libraries:
            continue
        rel = imp.source[len(package) + 1 :]
        if not any(rel == place or rel.startswith(place + ".") for place in libraries[top]):
            out.append(f"{imp} (line {imp.line}): {top} belongs in {', '.join(libraries[top])}")
    return out


def settings_violations(imports: list[Import], package: str) -> list[str]:
    out = set()
    for imp in imports:
        rel = imp.source[len(package) + 1 :]
        wiring_or_root = rel in SETTINGS_IMPORTERS or rel.startswith("wiring.")
        settings_modules = (
            f"{package}.settings",
            f"{package}.settings_clusters",
            f"{package}.settings_sections",
        )
        if imp.target in settings_modules and not wiring_or_root:
            out.add(str(imp))
        if imp.target == f"{package}.wiring" or imp.target.startswith(f"{package}.wiring."):
            unit = unit_of(imp.source)
            if unit != "wiring" and LAYERS.get(unit, 0) < WIRING_IMPORTERS_LAYER:
                out.add(str(imp))
    return sorted(out)


def _package_imports() -> list[Import]:
    return list(imports_of(ROOT, PACKAGE))


# wiring builds; it does no I/O of its own ("beyond opening what it builds", issue 14): outside
# the package it imports only these pure modules (no subprocess, socket, psycopg, boto3,
# sqlalchemy, urllib.request: the modules it calls do their I/O when a command uses what was
# built). structlog: it configures logging (wiring/logs.py); pydantic: configshow and digest walk
# the model; hashlib and json: digest hashes the settings (pure, no I/O).
WIRING_OUTSIDE_IMPORTS = (
    "__future__", "argparse", "collections", "contextlib", "dataclasses", "datetime", "functools",
    "os", "pathlib", "re", "sys", "typing", "urllib.parse", "structlog", "pydantic", "hashlib", "json",
)  # fmt: skip


def wiring_io_violations(imports: list[Import], package: str) -> list[str]:
    return sorted(
        {
            f"{imp} (line {imp.line})"
            for imp in imports
            if unit_of(imp.source) == "wiring"
            and imp.target.split(".")[0] != package
            and not any(imp.target == a or imp.target.startswith(a + ".") for a in WIRING_OUTSIDE_IMPORTS)
        }
    )


# -- the rules, on the package ----------------------------------------------------------------
def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(p, ROOT, PACKAGE)) for p in ROOT.rglob("*.py")}
    assert sorted(units - set(LAYERS)) == []


def test_layers_point_down_only() -> None:
    assert layer_violations(_package_imports(), PACKAGE, LAYERS) == []


def test_ops_imports_only_protocols_records_and_pure_helpers() -> None:
    assert ops_violations(_package_imports(), PACKAGE) == []


def test_each_library_in_its_place() -> None:
    assert library_violations(_package_imports(), PACKAGE, LIBRARIES) == []


def test_only_the_composition_root_imports_settings_and_wiring() -> None:
    assert settings_violations(_package_imports(), PACKAGE) == []


def test_wiring_imports_no_io_library() -> None:
    assert wiring_io_violations(_package_imports(), PACKAGE) == []


def test_checker_finds_io_in_wiring(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "wiring/__init__.py": "",
            "wiring/app.py": "import os\nfrom typing import Any\n\ndef f():\n    import subprocess\n",
            "wiring/probe.py": "from psycopg import connect\nimport urllib.parse, urllib.request\n",
        },
    )
    found = wiring_io_violations(list(imports_of(root, "pkg")), "pkg")
    assert found == [
        "pkg.wiring.app -> subprocess (line 5)",
        "pkg.wiring.probe -> psycopg (line 1)",
        "pkg.wiring.probe -> urllib.request (line 2)",
    ]


def test_library_table_names_installed_libraries() -> None:
    """A misspelt library name would make its rule match nothing."""
    import importlib.util

    for name in LIBRARIES:
        assert importlib.util.find_spec(name) is not None, name
    assert not set(LIBRARIES) & set(sys.stdlib_module_names)


# -- the checker itself, on a synthetic package -----------------------------------------------
def _write(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_checker_finds_an_upward_import_inside_a_function(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "storage/__init__.py": "",
            "storage/base.py": "from pkg import errors\n",
            "ops/__init__.py": "",
            "ops/run.py": "from pkg.storage import base\n",
            # upward: storage (1) reaches ops (3), lazily and relatively
            "storage/local.py": "def f():\n    from ..ops.run import x\n",
        },
    )
    layers = {"__init__": 0, "errors": 0, "storage": 1, "ops": 3}
    found = layer_violations(list(imports_of(root, "pkg")), "pkg", layers)
    assert found == [
        "pkg.storage.local -> pkg.ops.run (line 2): storage (layer 1) may not import ops (layer 3)"
    ]


def test_checker_finds_siblings_ops_drivers_libraries_and_settings(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "settings.py": "",
            "wiring.py": "from pkg import settings\n",
            "source/__init__.py": "",
            "source/base.py": "",
            "source/scratch.py": "import psycopg\n",
            "catalog/__init__.py": "from pkg.source import base\n",  # sibling
            "ops/__init__.py": "",
            "ops/drill.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pkg.source.scratch import S\nfrom pkg.source.base import P\nimport psycopg\n",
            "daemon/__init__.py": "from pkg import wiring, settings\n",
        },
    )
    imports = list(imports_of(root, "pkg"))
    layers = {"__init__": 0, "settings": 0, "wiring": 6, "daemon": 5, "ops": 3, "source": 2, "catalog": 2}
    assert layer_violations(imports, "pkg", layers) == [
        "pkg.catalog -> pkg.source.base (line 1): catalog (layer 2) may not import source (layer 2)",
        "pkg.daemon -> pkg.wiring (line 1): daemon (layer 5) may not import wiring (layer 6)",
    ]
    assert library_violations(imports, "pkg", {"psycopg": ("source",)}) == [
        "pkg.ops.drill -> psycopg (line 5): psycopg belongs in source"
    ]
    assert settings_violations(imports, "pkg") == ["pkg.daemon -> pkg.settings", "pkg.daemon -> pkg.wiring"]


def test_checker_finds_a_driver_import_in_ops() -> None:
    imports = [
        Import("contentflow_backupd.ops.drill.run", "contentflow_backupd.source.scratch", 3),
        Import("contentflow_backupd.ops.drill.run", "contentflow_backupd.source.base", 4),
        Import("contentflow_backupd.ops.repo.check", "contentflow_backupd.storage.s3", 5),
        Import("contentflow_backupd.ops.repo.check", "contentflow_backupd.catalog.sql", 6),
        Import("contentflow_backupd.ops.repo.check", "contentflow_backupd", 7),
    ]
    assert ops_violations(imports, PACKAGE) == [
        "contentflow_backupd.ops.drill.run -> contentflow_backupd.source.scratch (line 3)",
        "contentflow_backupd.ops.repo.check -> contentflow_backupd.storage.s3 (line 5)",
        "contentflow_backupd.ops.repo.check -> contentflow_backupd.catalog.sql (line 6)",
    ]


def test_the_documented_layer_table_is_the_enforced_one() -> None:
    """docs/architecture.md draws LAYERS: a unit moved in one and not the other fails here."""
    doc = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawn: dict[str, int] = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            for name in re.findall(r"`([\w.]+)`", cells[1]):
                drawn[name] = int(cells[0])
            if "the package `__init__`" in cells[1]:
                drawn["__init__"] = int(cells[0])
    assert drawn == LAYERS
