"""A real Prometheus server (the Debian package's ``prometheus`` binary) for tests that scrape.

``prometheus_server(targets)`` starts it on a free loopback port with a temporary configuration
(one scrape job ``contentflow-backupd``, ``scrape_interval`` 1 s) and a temporary TSDB directory,
waits until ``/-/ready`` answers and yields the base URL; on exit it stops the server and removes
the directory. ``query`` and ``wait_for`` use the HTTP API (``/api/v1/query``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from contentflow_backupd.demo.cluster import free_port

JOB = "contentflow-backupd"


class PrometheusError(RuntimeError):
    """Prometheus could not be started, or its HTTP API answered with an error."""


def prometheus_binary() -> str | None:
    """Path of the ``prometheus`` server binary, or None (``make test`` installs it with apt)."""
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )


def write_config(
    path: Path,
    targets: list[str],
    *,
    job: str = JOB,
    scrape_interval: str = "1s",
    target_labels: dict[str, str] | None = None,
    metric_relabel_configs: list[dict[str, Any]] | None = None,
) -> None:
    """A Prometheus configuration scraping ``targets`` (``host:port``) as one job, with
    ``target_labels`` on its targets (as service discovery would add) and its
    ``metric_relabel_configs``. JSON is YAML."""
    static: dict[str, Any] = {"targets": list(targets)}
    if target_labels:
        static["labels"] = dict(target_labels)
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "metrics_path": "/metrics",
                "static_configs": [static],
                **({"metric_relabel_configs": metric_relabel_configs} if metric_relabel_configs else {}),
            }
        ],
    }
    path.write_text(json.dumps(config, indent=2))


@contextlib.contextmanager
def prometheus_server(
    targets: list[str],
    *,
    job: str = JOB,
    scrape_interval: str = "1s",
    timeout: float = 60.0,
    target_labels: dict[str, str] | None = None,
    metric_relabel_configs: list[dict[str, Any]] | None = None,
) -> Iterator[str]:
    """Run ``prometheus`` scraping ``targets``; yield its base URL (``http://127.0.0.1:<port>``).

    Raises PrometheusError when the binary is missing or the server does not become ready within
    ``timeout`` seconds (the message carries the end of its log). The server is stopped (SIGTERM,
    then SIGKILL after 10 s) and its temporary directory removed on exit, also on errors.
    """
    binary = prometheus_binary()
    if binary is None:
        raise PrometheusError("prometheus is not installed: run `make test` (installs the Debian package)")
    with tempfile.TemporaryDirectory(prefix="backupd-prometheus-") as tmp:
        workdir = Path(tmp)
        config = workdir / "prometheus.yml"
        write_config(
            config,
            targets,
            job=job,
            scrape_interval=scrape_interval,
            target_labels=target_labels,
            metric_relabel_configs=metric_relabel_configs,
        )
        log_path = workdir / "prometheus.log"
        last_error: PrometheusError | None = None
        for _attempt in range(3):  # a free port can be taken before prometheus binds it
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--storage.tsdb.retention.time=1d",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                )
            try:
                try:
                    _wait_ready(proc, url, timeout, log_path)
                except PrometheusError as exc:
                    last_error = exc
                    if proc.poll() is not None and "address already in use" in _tail(log_path):
                        continue
                    raise
                yield url
                return
            finally:
                _stop(proc)
        raise last_error or PrometheusError("prometheus did not start")


def _tail(log_path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise PrometheusError(
                f"prometheus exited with code {proc.returncode}; its log:\n{_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise PrometheusError(f"prometheus at {url} not ready after {timeout:.0f}s:\n{_tail(log_path)}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def api_get(url: str, path: str, params: dict[str, str] | None = None) -> Any:
    """GET ``/api/v1/<path>`` and return its ``data``; PrometheusError unless status is success."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=10) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:  # 400/422/503 carry the same JSON error body
        try:
            body = json.load(exc)
        except ValueError:
            raise PrometheusError(f"{path} {params}: HTTP {exc.code}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """Evaluate an instant query; return the result vector as ``[{"metric": {...}, "value": [t, "v"]}]``."""
    data = api_get(url, "query", {"query": promql})
    if data["resultType"] != "vector":
        raise PrometheusError(f"{promql!r} returned a {data['resultType']}, not a vector")
    result: list[dict[str, Any]] = data["result"]
    return result


def targets(url: str) -> list[dict[str, Any]]:
    """The active scrape targets with their ``health`` and ``lastError`` (for failure messages)."""
    active: list[dict[str, Any]] = api_get(url, "targets", {"state": "active"})["activeTargets"]
    return active


def wait_for(
    url: str,
    promql: str,
    predicate: Callable[[list[dict[str, Any]]], bool] = bool,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Poll ``query(url, promql)`` until ``predicate(result)`` holds (default: non-empty) and return
    the result; AssertionError with the last result and the targets' state after ``timeout``."""
    deadline = time.monotonic() + timeout
    result: list[dict[str, Any]] = []
    while True:
        result = query(url, promql)
        if predicate(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{promql!r} did not match within {timeout:.0f}s; last result {result}; "
                f"targets {[(t.get('scrapeUrl'), t.get('health'), t.get('lastError')) for t in targets(url)]}"
            )
        time.sleep(0.5)
