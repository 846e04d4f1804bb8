"""Run ``contentflow-backupd run`` as a subprocess the way systemd does: a ``NOTIFY_SOCKET`` to
receive its notifications, its HTTP port to probe, its JSON log lines collected."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from contentflow_backupd.demo.cluster import free_port
from tests.support.cli import command_path


def daemon_env(tmp_path: Path, pg: Any, db: str, **extra: str) -> dict[str, str]:
    """Settings of a daemon on a local repository and SQLite catalog under ``tmp_path``, every
    schedule off unless ``extra`` turns it on."""
    from tests.conftest import PASSPHRASE

    env = {
        "BACKUPD_DATABASE_URL": pg.url(db),
        "BACKUPD_REPOSITORY": f"file://{tmp_path / 'repo'}",
        "BACKUPD_STATE_DIR": str(tmp_path / "state"),
        "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
        "BACKUPD_CHUNKING__AVG_SIZE": str(64 * 1024),
        "BACKUPD_SCHEDULE__FULL": "off",
        "BACKUPD_SCHEDULE__INCREMENTAL": "off",
        "BACKUPD_SCHEDULE__WAL": "off",
        "BACKUPD_SCHEDULE__RETENTION": "off",
        "BACKUPD_SCHEDULE__VERIFY": "off",
        "BACKUPD_SCHEDULE__RESTORE_TEST": "off",
        "BACKUPD_SHUTDOWN_GRACE": "5s",
    }
    env.update(extra)
    return env


def far_schedule(hours: int = 12) -> str:
    """A daily crontab schedule (UTC, the default time zone) whose next fire is about ``hours``
    from now: for a test that counts runs exactly. ``every 1h`` is aligned to the epoch, so it
    fires at every full hour: a test that ran across one found a second, ``scheduled`` run."""
    at = datetime.now(UTC) + timedelta(hours=hours)
    return f"{at.minute} {at.hour} * * *"


def sqlite_job_table(conn: Any) -> str:
    """The name of the one daemon's job table in a SQLite catalog (``apscheduler_jobs_<hash>``,
    contentflow_backupd.scheduling.scheduler.job_table)."""
    names = [
        row[0]
        for row in conn.execute(
            "select name from sqlite_master"
            " where type = 'table' and name like 'apscheduler\\_jobs\\_%' escape '\\'"
        )
    ]
    assert len(names) == 1, names
    return str(names[0])


def pick_sample(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, labels: dict[str, str]
) -> float | None:
    """``Daemon.metric()`` over ``samples`` (as ``Daemon.metrics()`` returns them)."""
    exact = samples.get((name, tuple(sorted(labels.items()))))
    if exact is not None:
        return exact
    wanted = set(labels.items())
    found = [(key, value) for key, value in samples.items() if key[0] == name and wanted <= set(key[1])]
    if len(found) > 1:
        raise AssertionError(f"{name}{labels} matches several samples: {[key for key, _ in found]}")
    return found[0][1] if found else None


class Daemon:
    def __init__(self, env: dict[str, str], *, port: int | None = None, user: str | None = None) -> None:
        self.port = port or free_port()
        self.user = user if os.geteuid() == 0 else None
        """Run as this OS user (tests run as root; a physical daemon runs as ``postgres``)."""
        self._dir = tempfile.TemporaryDirectory(prefix="backupd-daemon-")
        self.notify_path = str(Path(self._dir.name) / "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.notify_path)
        if self.user is not None:  # the daemon (another user) sends to the notify socket
            os.chmod(self._dir.name, 0o755)
            os.chmod(self.notify_path, 0o777)
        self._sock.settimeout(0.2)
        self.notifications: list[str] = []
        self.log_lines: list[dict[str, Any]] = []
        self.raw_stderr: list[str] = []
        base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPD_")}
        base.update({"BACKUPD_LOG__FORMAT": "json", "BACKUPD_HTTP__LISTEN": f"127.0.0.1:{self.port}"})
        base.update(env)
        base["NOTIFY_SOCKET"] = self.notify_path
        self.env = base
        self.proc: subprocess.Popen[str] | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._stall = threading.Event()
        self._stalled = threading.Event()

    # -- process -----------------------------------------------------------------------------
    def start(self) -> Daemon:
        self.proc = subprocess.Popen(
            [command_path(), "run"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            **({"user": self.user, "group": self.user} if self.user else {}),
        )
        for target in (self._read_stderr, self._read_notify):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw_stderr.append(line)
            with contextlib.suppress(ValueError):
                self.log_lines.append(json.loads(line))

    def _read_notify(self) -> None:
        while not self._stop.is_set():
            if self._stall.is_set():
                self._stalled.set()
                self._stop.wait(0.2)
                continue
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.notifications.extend(data.decode().splitlines())

    def stall_notify(self) -> int:
        """Play a service manager that stops reading its notify socket: stop reading, then fill
        the socket's queue until it refuses more (the daemon's next message would block a
        blocking sender). Returns how many filler datagrams were queued."""
        self._stall.set()
        assert self._stalled.wait(30), "the notify reader did not stop"
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        filler.setblocking(False)
        queued = 0
        try:
            while True:
                filler.sendto(b"FILLER=1", self.notify_path)
                queued += 1
        except BlockingIOError:
            return queued
        finally:
            filler.close()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 90) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def close(self) -> None:
        self.stop()
        self._stop.set()
        self._sock.close()
        self._dir.cleanup()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observing -------------------------------------------------------------------------
    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines if line.get("event") == name]

    def stderr(self) -> str:
        return "".join(self.raw_stderr)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.get("/metrics")
        assert status == 200, body
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float | None:
        """The sample ``name`` whose labels include ``labels``: the one with exactly these labels
        when there is one, else the only one that has them and more (a ``cluster`` label, say);
        None when none has them. Several candidates fail the test: the question is ambiguous."""
        return pick_sample(self.metrics(), name, labels)

    def wait_for(
        self, what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.5
    ) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) waiting for {what}:\n{self.stderr()[-4000:]}"
                )
            try:
                last = check()
            except (OSError, AssertionError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r}):\n{self.stderr()[-4000:]}")
