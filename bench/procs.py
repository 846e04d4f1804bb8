"""Run one command and measure it: wall time, peak RSS and CPU of the process and its children.

Peak RSS of the process itself comes from polling ``/proc/<pid>/status`` every 20 ms (``VmHWM``,
the high-water mark of that process alone, not its children). ``ru_maxrss`` from ``os.wait4`` is
not used for memory: it is the maximum over the process *and* its reaped descendants, and it
also counts the forked copy of this (large) benchmark process before ``exec``, so every command
would report at least the benchmark's own size. ``wait4`` does give the exact CPU time of the
process plus its descendants. Children (``pg_dump`` under ``contentflow-backupd``,
``pg_dump`` and ``gzip`` under ``bash``) are found through ``/proc/<pid>/task/<pid>/children``
and measured the same way. The PostgreSQL server's CPU is the delta of the postmaster's own and
reaped-children CPU plus its live children's CPU across the run.

Every command runs in its own session so that an interrupt can stop exactly its process group.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import machine_busy_seconds, wait_for_quiet

POLL_SECONDS = 0.02
_TICKS = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size of ``pid`` alone, in KiB."""
    text = _read(f"/proc/{pid}/status")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int, *, with_reaped_children: bool = False) -> float | None:
    """User + system CPU of ``pid`` (all threads), optionally plus its reaped children."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # After "pid (comm) ": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def children(pid: int) -> list[int]:
    text = _read(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in text.split()] if text else []


def comm(pid: int) -> str:
    return (_read(f"/proc/{pid}/comm") or "?").strip()


def server_cpu_seconds(postmaster_pid: int | None) -> float:
    """CPU used so far by a PostgreSQL server: the postmaster, its reaped and live children."""
    if postmaster_pid is None:
        return 0.0
    total = cpu_seconds(postmaster_pid, with_reaped_children=True) or 0.0
    for child in children(postmaster_pid):
        total += cpu_seconds(child) or 0.0
    return total


@dataclass
class ChildStats:
    name: str
    peak_rss_kib: int = 0
    cpu_seconds: float = 0.0


@dataclass
class Measured:
    """One finished command."""

    argv: list[str]
    name: str
    """The process's command name when last seen (``bash -c`` may exec its last command)."""
    returncode: int
    wall_seconds: float
    peak_rss_kib: int
    """VmHWM of the command's own process (polled)."""
    cpu_self_seconds: float
    """CPU of the process itself (all threads; last poll, so up to one poll interval short)."""
    cpu_total_seconds: float
    """CPU of the process and all its descendants (exact, from ``wait4``)."""
    server_cpu_seconds: float
    other_cpu_seconds: float
    """CPU the rest of the machine used meanwhile: noise (cores shared with other work)."""
    quiet_wait: tuple[float, float]
    """Seconds waited for a quiet machine before the run, and the busy cores seen last."""
    children: dict[str, ChildStats] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": self.argv,
            "name": self.name,
            "returncode": self.returncode,
            "wall_seconds": round(self.wall_seconds, 3),
            "peak_rss_kib": self.peak_rss_kib,
            "cpu_self_seconds": round(self.cpu_self_seconds, 2),
            "cpu_total_seconds": round(self.cpu_total_seconds, 2),
            "server_cpu_seconds": round(self.server_cpu_seconds, 2),
            "other_cpu_seconds": round(self.other_cpu_seconds, 2),
            "other_load_cores": round(self.other_cpu_seconds / self.wall_seconds, 2),
            "quiet_wait_seconds": round(self.quiet_wait[0], 1),
            "busy_cores_before": round(self.quiet_wait[1], 2),
            "children": {
                name: {"peak_rss_kib": c.peak_rss_kib, "cpu_seconds": round(c.cpu_seconds, 2)}
                for name, c in self.children.items()
            },
        }


class CommandError(RuntimeError):
    pass


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process group this module started for ``proc`` (its own session)."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                proc.returncode = -sig
                return
            time.sleep(0.05)


def run_measured(
    argv: list[str],
    *,
    env: dict[str, str],
    workdir: Path,
    postmaster_pid: int | None = None,
    check: bool = True,
    quiet_seconds: float = 0.0,
) -> Measured:
    """Run ``argv`` to completion, polling its memory and CPU; stdout and stderr are captured."""
    out_path = workdir / f"cmd-{time.monotonic_ns()}.out"
    err_path = out_path.with_suffix(".err")
    kids: dict[int, ChildStats] = {}
    peak = 0
    cpu_self = 0.0
    name = Path(argv[0]).name
    quiet = wait_for_quiet(quiet_seconds) if quiet_seconds > 0 else (0.0, -1.0)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        server0 = server_cpu_seconds(postmaster_pid)
        busy0 = machine_busy_seconds()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
        # Between samples, wait on the process itself (a pidfd), not a sleep: a sleep made every
        # wall time a multiple of POLL_SECONDS, which hid ~20 ms of a ~40 ms command.
        exited = select.poll()
        pidfd = os.pidfd_open(proc.pid)
        exited.register(pidfd, select.POLLIN)
        try:
            while True:
                peak = max(peak, vm_hwm_kib(proc.pid) or 0)
                cpu_self = cpu_seconds(proc.pid) or cpu_self
                seen = comm(proc.pid)
                name = name if seen == "?" else seen
                for child in children(proc.pid):
                    stats = kids.setdefault(child, ChildStats("?"))
                    seen = comm(child)  # refreshed: a forked child may exec later
                    stats.name = stats.name if seen == "?" else seen
                    stats.peak_rss_kib = max(stats.peak_rss_kib, vm_hwm_kib(child) or 0)
                    stats.cpu_seconds = cpu_seconds(child) or stats.cpu_seconds
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    wall = time.monotonic() - t0
                    break
                exited.poll(POLL_SECONDS * 1000)
        except BaseException:
            _stop_group(proc)
            raise
        finally:
            os.close(pidfd)
        server = server_cpu_seconds(postmaster_pid) - server0
        busy = machine_busy_seconds() - busy0
    proc.returncode = os.waitstatus_to_exitcode(status)
    by_name: dict[str, ChildStats] = {}
    for stats in kids.values():
        agg = by_name.setdefault(stats.name, ChildStats(stats.name))
        agg.peak_rss_kib = max(agg.peak_rss_kib, stats.peak_rss_kib)
        agg.cpu_seconds += stats.cpu_seconds
    result = Measured(
        argv=argv,
        name=name,
        returncode=proc.returncode,
        wall_seconds=wall,
        peak_rss_kib=peak,
        cpu_self_seconds=cpu_self,
        cpu_total_seconds=usage.ru_utime + usage.ru_stime,
        server_cpu_seconds=server,
        other_cpu_seconds=max(0.0, busy - server - (usage.ru_utime + usage.ru_stime)),
        quiet_wait=quiet,
        children=by_name,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )
    out_path.unlink()
    err_path.unlink()
    if check and result.returncode != 0:
        raise CommandError(
            f"command failed (exit {result.returncode}): {' '.join(argv)}\n{result.stderr[-4000:]}"
        )
    return result
