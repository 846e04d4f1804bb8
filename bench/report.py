"""Machine description, the results table and ``latest.json``."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MB = 1_000_000
MiB = 1024 * 1024


def machine(pg_bin: Path, server_version: str, tool: str) -> dict[str, Any]:
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(argv: list[str]) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (out.stdout or out.stderr).strip()

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_mib": mem_kib // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql_server": server_version,
        "pg_dump": version([str(pg_bin / "pg_dump"), "--version"]),
        "gzip": version(["gzip", "--version"]).splitlines()[0],
        "tool": version([tool, "--version"]),
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def best(values: Sequence[float]) -> float:
    """The figure compared: the minimum of the repeats (least disturbed by noise)."""
    return min(values)


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


@dataclass
class Row:
    measurement: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    key: str
    raw: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "measurement": self.measurement,
            "ours": self.ours,
            "baseline": self.baseline,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "target": self.target,
            "met": self.met,
            **self.raw,
        }


def secs(value: float) -> str:
    return f"{value:.1f} s"


def mib(n_bytes: float) -> str:
    return f"{n_bytes / MiB:.1f} MiB"


def _met(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "NO")


def table(rows: Sequence[Row]) -> str:
    header = ("measurement", "ours", "baseline", "ratio", "target", "met?")
    cells = [
        (
            r.measurement,
            r.ours,
            r.baseline,
            "" if r.ratio is None else f"{r.ratio:.2f}",
            r.target,
            _met(r.met),
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]

    def fmt(c: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + " |"

    lines = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(c) for c in cells]
    return "\n".join(lines)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
