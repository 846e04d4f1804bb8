"""podman as the tests drive it: the image built by ``tests/container/images.sh``, run the way
docs/deployment.md says a sidecar runs (host network, a state volume, secrets under /run/secrets).

Every call goes through :func:`podman` with ``CONTAINERS_CONF`` pointing at the containers.conf
``images.sh`` writes (runc and explicit ulimits: crun fails on these machines).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("BACKUPD_CONTAINER_CACHE", "/var/cache/contentflow-backupd"))
IMAGE = os.environ.get("BACKUPD_TEST_IMAGE", "localhost/contentflow-backupd:test")
SYSTEMD_IMAGE = os.environ.get("BACKUPD_TEST_SYSTEMD_IMAGE", "localhost/contentflow-backupd-systemd:test")
CONTAINER_PREFIX = f"backupd-test-{os.getpid()}-"
"""Names of this process's containers (xdist workers run side by side: each cleans only its own)."""
UID = 10001
"""The image's user (Dockerfile: USER 10001:10001)."""


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CACHE / "containers.conf")}


def podman(
    *args: str, check: bool = True, timeout: float = 300, **kw: Any
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def image_exists(name: str) -> bool:
    try:
        return podman("image", "exists", name, check=False, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (OSError, AssertionError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


@contextmanager
def secrets(values: dict[str, str], *, uid: int = UID) -> Iterator[list[str]]:
    """podman secrets holding ``values``; yields ``--secret`` options that mount each one at
    ``/run/secrets/<name>``, owned by ``uid``, mode 0400.

    With ``--read-only``, podman 4.3 mounts secrets before the /run tmpfs and fails to create
    their mount points ("read-only file system"): a tmpfs on /run/secrets itself comes first."""
    created: list[str] = []
    options: list[str] = ["--tmpfs", "/run/secrets:rw,size=1m,mode=0755"]
    try:
        for name, value in values.items():
            secret = f"backupd-test-{uuid.uuid4().hex[:10]}"
            podman("secret", "create", secret, "-", input=value)
            created.append(secret)
            options += ["--secret", f"source={secret},target={name},uid={uid},gid={uid},mode=0400"]
        yield options
    finally:
        for secret in created:
            podman("secret", "rm", secret, check=False)


class Container:
    """One ``podman run -d`` of an image; removed on exit."""

    def __init__(self, image: str, options: Sequence[str], command: Sequence[str] = (), *, port: int) -> None:
        self.name = f"{CONTAINER_PREFIX}{uuid.uuid4().hex[:10]}"
        self.image = image
        self.options = list(options)
        self.command = list(command)
        self.port = port

    def start(self) -> Container:
        podman("run", "-d", "--name", self.name, *self.options, self.image, *self.command)
        return self

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)

    # -- state -----------------------------------------------------------------------------
    def inspect(self) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(podman("inspect", self.name).stdout)
        return data[0]

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def exit_code(self) -> int:
        return int(self.inspect()["State"]["ExitCode"])

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                out.append(parsed)
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("event") == name]

    def exec(
        self, *argv: str, check: bool = True, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        extra = ["--user", user] if user else []
        return podman("exec", *extra, self.name, *argv, check=check)

    # -- HTTP from outside the container -----------------------------------------------------
    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float | None:
        status, body = self.get("/metrics")
        assert status == 200, body
        wanted = set(labels.items())  # a subset: the series carry `cluster` too
        found = [
            float(sample.value)
            for family in text_string_to_metric_families(body)
            for sample in family.samples
            if sample.name == name and wanted <= set(sample.labels.items())
        ]
        if len(found) > 1:
            raise ValueError(f"{name}{labels} matches {len(found)} samples: name more labels")
        return found[0] if found else None

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
        def guarded() -> Any:
            if not self.running():
                raise RuntimeError(f"the container exited ({self.exit_code()}):\n{self.logs()[-4000:]}")
            return check()

        return wait_until(what, guarded, timeout=timeout)

    def stop(self, grace: int = 90) -> float:
        """``podman stop -t grace``; returns the seconds it took."""
        started = time.monotonic()
        podman("stop", "-t", str(grace), self.name, timeout=grace + 60)
        return time.monotonic() - started
