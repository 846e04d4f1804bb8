"""deploy/kubernetes (loaded with pyyaml; rendered with ``kubectl kustomize`` where kubectl is
installed) and the Dockerfile (parsed; its HEALTHCHECK command run against a real HTTP server)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from contentflow_backupd import __version__
from contentflow_backupd.demo.cluster import free_port
from contentflow_backupd.settings import Settings
from contentflow_backupd.timespec import parse_duration

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE = f"contentflow-backupd:{__version__}"


# -- Kubernetes ------------------------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        objs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return objs


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in k8s_objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = find("StatefulSet")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod_spec()["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def config_env() -> dict[str, str]:
    data: dict[str, str] = find("ConfigMap", "contentflow-backupd")["data"]
    return data


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    for obj in k8s_objects():
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"], obj


# The Kubernetes versions the manifests are validated against: the oldest still common in managed
# clusters and the newest the validator ships (kubernetes-validate, a dev dependency).
K8S_VERSIONS = ("1.30.0", "1.37.0")


def kube_validate(doc: dict[str, Any], version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_pass_the_kubernetes_schemas(version: str) -> None:
    """Every object against the OpenAPI schema of its kind, strictly (unknown fields are errors).
    The ServiceMonitor is a CRD without a shipped schema: its fields are checked below."""
    checked = set()
    for obj in k8s_objects():
        if obj["kind"] == "ServiceMonitor":
            continue
        kube_validate(obj, version)
        checked.add(obj["kind"])
    assert checked == {"ConfigMap", "Secret", "Service", "StatefulSet"}


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.update(livenesProbe=c.pop("livenessProbe")), id="misspelt-field"),
        pytest.param(lambda c: c["ports"][0].update(containerPort="9847"), id="port-as-string"),
        pytest.param(lambda c: c["securityContext"].update(runAsUser="backupd"), id="user-as-name"),
    ],
)
def test_the_schema_check_catches_a_broken_manifest(mutate: Any) -> None:
    import kubernetes_validate

    sts = copy.deepcopy(find("StatefulSet"))
    backupd = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "backupd")
    mutate(backupd)
    with pytest.raises(kubernetes_validate.ValidationError):
        kube_validate(sts, K8S_VERSIONS[-1])


def test_statefulset_runs_postgres_with_the_daemon_as_sidecar() -> None:
    sts = find("StatefulSet")
    assert sts["spec"]["serviceName"] == find("Service", "postgres")["metadata"]["name"]
    assert (
        sts["spec"]["selector"]["matchLabels"].items()
        <= sts["spec"]["template"]["metadata"]["labels"].items()
    )
    assert {c["name"] for c in pod_spec()["containers"]} == {"postgres", "backupd"}
    backupd = container("backupd")
    assert backupd["image"] == IMAGE
    assert backupd.get("args", ["run"]) == ["run"] and "command" not in backupd
    grace = parse_duration(
        config_env().get("BACKUPD_SHUTDOWN_GRACE", Settings.model_fields["shutdown_grace"].default)
    )
    assert pod_spec()["terminationGracePeriodSeconds"] > grace
    # the daemon reaches the PostgreSQL container over the pod's loopback (the URL is a secret)
    assert "@127.0.0.1:5432/" in find("Secret")["stringData"]["BACKUPD_DATABASE_URL"]
    assert "BACKUPD_DATABASE_URL" not in config_env()  # it would win over the secret file
    assert any(p["containerPort"] == 5432 for p in container("postgres")["ports"])


def test_probes_hit_livez_and_readyz_on_the_metrics_port() -> None:
    backupd = container("backupd")
    ports = {p["name"]: p["containerPort"] for p in backupd["ports"]}
    listen_port = int(config_env()["BACKUPD_HTTP__LISTEN"].rpartition(":")[2])
    assert config_env()["BACKUPD_HTTP__LISTEN"].startswith("0.0.0.0:")
    assert ports == {"metrics": listen_port}
    assert backupd["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert backupd["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert backupd["startupProbe"]["httpGet"]["path"] == "/livez"


def test_secrets_are_files_under_run_secrets_named_as_the_daemon_reads_them() -> None:
    from contentflow_backupd.settings import CREDENTIAL_SETTINGS, SECRETS_DIR, env_name

    secret = find("Secret")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    backupd = container("backupd")
    for c in pod_spec()["containers"]:
        for env in c.get("env", []):
            assert "valueFrom" not in env, f"a secret in the environment of {c['name']}: {env}"
        for src in c.get("envFrom", []):
            assert find("ConfigMap", src["configMapRef"]["name"])
    mounts = {m["mountPath"]: m for m in backupd["volumeMounts"]}
    mount = mounts[str(SECRETS_DIR)]
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    files = {item["path"]: item["key"] for item in volume["secret"]["items"]}
    assert set(files.values()) <= keys
    credentials = {env_name(loc) for loc in CREDENTIAL_SETTINGS}
    assert {"BACKUPD_ENCRYPTION__PASSPHRASE", "BACKUPD_DATABASE_URL"} <= set(files)
    env = {e["name"]: e.get("value") for e in backupd["env"]}
    for path in files:
        # a credential the daemon reads by name, or a file a variable points at
        assert path in credentials or f"{SECRETS_DIR}/{path}" in env.values(), path
    # readable by the daemon's group only (kubelet owns them as root:fsGroup)
    assert volume["secret"]["defaultMode"] & 0o040 and not volume["secret"]["defaultMode"] & 0o007
    assert pod_spec()["securityContext"]["fsGroup"] == backupd["securityContext"]["runAsGroup"]
    # PostgreSQL's password: the official image's POSTGRES_PASSWORD_FILE
    pg_env = {e["name"]: e.get("value") for e in container("postgres")["env"]}
    pg_mounts = {m["name"]: m["mountPath"] for m in container("postgres")["volumeMounts"]}
    pg_volume = next(v for v in pod_spec()["volumes"] if v["name"] == "postgres-password")
    (item,) = pg_volume["secret"]["items"]
    assert item["key"] in keys
    assert pg_env["POSTGRES_PASSWORD_FILE"] == f"{pg_mounts['postgres-password']}/{item['path']}"
    # no secret in the ConfigMap
    assert not any(re.search(r"PASSPHRASE|PASSWORD|SECRET|DATABASE_URL", k) for k in config_env())


def test_volumes_resolve_and_state_dir_is_persistent() -> None:
    sts = find("StatefulSet")
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    volumes = {v["name"] for v in pod_spec()["volumes"]} | claims
    for c in pod_spec()["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, (c["name"], m)
    state = config_env()["BACKUPD_STATE_DIR"]
    state_mount = next(m for m in container("backupd")["volumeMounts"] if m["mountPath"] == state)
    assert state_mount["name"] in claims


def test_daemon_container_is_non_root_and_locked_down() -> None:
    sc = container("backupd")["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    # a read-only root needs a writable /tmp
    assert "/tmp" in {m["mountPath"] for m in container("backupd")["volumeMounts"]}


def test_configmap_holds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BACKUPD_"):
            monkeypatch.delenv(name)
    for name, value in config_env().items():
        assert name.startswith("BACKUPD_"), name
        monkeypatch.setenv(name, value)
    for e in container("backupd")["env"]:
        if e["name"].startswith("BACKUPD_") and "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    settings = Settings()  # unknown names and bad values raise
    assert settings.mode == config_env()["BACKUPD_MODE"]


def test_metrics_are_discoverable_by_service_monitor_and_annotations() -> None:
    svc = find("Service", "contentflow-backupd")
    pod_labels = find("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == "metrics" and port["name"] == "metrics"
    metrics_port = container("backupd")["ports"][0]["containerPort"]
    assert port["port"] == metrics_port
    mon = find("ServiceMonitor")
    assert mon["apiVersion"] == "monitoring.coreos.com/v1"
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in mon["spec"]["endpoints"]] == ["metrics"]
    assert mon["spec"]["endpoints"][0]["path"] == "/metrics"
    for scrape in (
        svc["metadata"]["annotations"],
        find("StatefulSet")["spec"]["template"]["metadata"]["annotations"],
    ):
        assert scrape["prometheus.io/scrape"] == "true"
        assert scrape["prometheus.io/port"] == str(metrics_port)
        assert scrape["prometheus.io/path"] == "/metrics"
    # the scrape job name alerts.yml expects is the Service's name (ServiceMonitor default)
    assert svc["metadata"]["name"] == "contentflow-backupd"


def test_kubectl_kustomize_renders_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert {d["kind"] for d in rendered} == {o["kind"] for o in k8s_objects()}
    sts = next(d for d in rendered if d["kind"] == "StatefulSet")
    images = {c["name"]: c["image"] for c in sts["spec"]["template"]["spec"]["containers"]}
    assert images["backupd"] == IMAGE


# -- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, args = full.partition(" ")
        out.append((word.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def args_of(word: str) -> list[str]:
    return [a for w, a in final_stage() if w == word]


def dockerfile_args() -> dict[str, str]:
    """Every ``ARG NAME=default`` of the Dockerfile (global and per stage)."""
    out: dict[str, str] = {}
    for word, args in dockerfile_instructions():
        if word == "ARG" and "=" in args:
            name, _, default = args.partition("=")
            out[name] = default
    return out


def test_dockerfile_base_and_postgres_client_version() -> None:
    args = dockerfile_args()
    assert args["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    froms = [a for w, a in dockerfile_instructions() if w == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    assert {"PG_MAJOR", "PG_CLIENT_VERSION", "BACKUPD_VERSION"} <= {a.split("=")[0] for a in args_of("ARG")}
    # the client package at an explicit version of the chosen major
    assert args["PG_CLIENT_VERSION"].startswith(args["PG_MAJOR"] + ".")
    runs = " ".join(args_of("RUN"))
    assert '"postgresql-client-${PG_MAJOR}=${PG_CLIENT_VERSION}"' in runs
    assert "apt.postgresql.org" in runs  # PGDG for majors Debian does not ship
    assert args["BACKUPD_VERSION"] == __version__
    labels = " ".join(args_of("LABEL"))
    assert 'org.opencontainers.image.version="${BACKUPD_VERSION}"' in labels
    assert 'io.contentflow.backupd.pg-major="${PG_MAJOR}"' in labels


def test_dockerfile_does_not_depend_on_the_base_images_python_layout() -> None:
    """python:3.11-slim has Python in /usr/local/bin, PYTHON_VERSION and LANG; the tests' stand-in
    base (debootstrap) has Debian's python3 in /usr/bin and neither variable: the Dockerfile
    uses only ``python3`` and its own virtual environment."""
    text = " ".join(a for _, a in dockerfile_instructions())
    assert "PYTHON_VERSION" not in text and "$LANG" not in text and "${LANG}" not in text
    assert not re.search(r"/usr/local/bin/python|/usr/bin/python", text)
    for word, args in dockerfile_instructions():
        if word == "RUN":
            assert not re.search(r"(^|[;&|]\s*)(python|pip|pip3) ", args), args  # bare python/pip of the base
    assert "LANG=C.UTF-8" in " ".join(args_of("ENV"))
    # every dependency pinned: requirements.txt holds name==version lines only
    for name in ("requirements.txt", "build-requirements.txt"):
        for line in (ROOT / "deploy" / "container" / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", line), line


def test_dockerfile_runs_the_daemon_as_non_root() -> None:
    assert json.loads(args_of("ENTRYPOINT")[0]) == ["contentflow-backupd"]
    assert json.loads(args_of("CMD")[0]) == ["run"]
    (user,) = args_of("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert args_of("EXPOSE") == ["9847"]
    env = " ".join(args_of("ENV"))
    assert "BACKUPD_HTTP__LISTEN=0.0.0.0:9847" in env
    assert "BACKUPD_STATE_DIR=/var/lib/contentflow-backupd" in env


def test_docker_build_context_keeps_what_the_dockerfile_copies() -> None:
    ignored = [
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    for word, args in dockerfile_instructions():
        if word == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), src
                assert src not in ignored, src
    assert {".git", ".venv", ".demo", "tests"} <= set(ignored)


def healthcheck_argv() -> list[str]:
    (spec,) = args_of("HEALTHCHECK")
    options, _, cmd = spec.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv: list[str] = json.loads(cmd)
    # exec form with the image's own Python: no shell, no curl in the image
    assert argv[:2] == ["/opt/contentflow-backupd/bin/python", "-c"]
    return argv


class _Livez(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/livez" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok\n" if code == 200 else b"no\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def livez_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Livez]]]:
    handler = type("Handler", (_Livez,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()


def _run_healthcheck(port: int) -> int:
    argv = healthcheck_argv()
    env = {**os.environ, "BACKUPD_HTTP__LISTEN": f"0.0.0.0:{port}"}
    proc = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30)
    return proc.returncode


def test_healthcheck_command_follows_livez(livez_server: tuple[ThreadingHTTPServer, type[_Livez]]) -> None:
    server, handler = livez_server
    port = server.server_address[1]
    assert _run_healthcheck(port) == 0
    handler.status = 503
    assert _run_healthcheck(port) != 0
    assert _run_healthcheck(free_port()) != 0  # nothing listening


# -- the manifests against what the image and the daemon actually use --------------------------


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of("ENV"):
        for item in re.findall(r"(\w+)=(\S+)", args):
            env[item[0]] = item[1]
    return env


def setting_env_names() -> set[str]:
    """Every BACKUPD_* variable the daemon reads (the names `config show` lists)."""
    from contentflow_backupd.wiring.configshow import describe_settings

    return {row["name"] for row in describe_settings(Settings(), {})}


def test_manifest_command_user_port_and_state_are_the_images() -> None:
    from contentflow_backupd.cli.parser import build_parser

    backupd = container("backupd")
    # command: the image's entrypoint with the manifest's args, a real subcommand
    assert backupd["args"] == json.loads(args_of("CMD")[0])
    assert build_parser().parse_args(backupd["args"]).command == "run"
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (image,) = kust["images"]
    assert backupd["image"].split(":")[0] == image["name"] and image["newTag"] == __version__
    # user and group: the image's USER; the pod's fsGroup makes the volumes its group's
    uid, gid = (int(x) for x in args_of("USER")[0].split(":"))
    sc = backupd["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], pod_spec()["securityContext"]["fsGroup"]) == (uid, gid, gid)
    # the port: EXPOSE, the image's listen address, the ConfigMap's, the container port
    env = dockerfile_env()
    (exposed,) = args_of("EXPOSE")
    port = int(env["BACKUPD_HTTP__LISTEN"].rpartition(":")[2])
    assert int(exposed) == port == int(config_env()["BACKUPD_HTTP__LISTEN"].rpartition(":")[2])
    assert backupd["ports"] == [{"name": "metrics", "containerPort": port}]
    # the state directory: the image's VOLUME and BACKUPD_STATE_DIR, the manifest's mount
    (volume,) = json.loads(args_of("VOLUME")[0])
    assert volume == env["BACKUPD_STATE_DIR"] == config_env().get("BACKUPD_STATE_DIR", volume)
    assert volume in {m["mountPath"] for m in backupd["volumeMounts"]}
    # the image's client tools: the manifest's PostgreSQL major is the image's PG_MAJOR
    postgres_image = container("postgres")["image"]
    assert postgres_image.startswith(f"postgres:{dockerfile_args()['PG_MAJOR']}")


def test_manifest_env_names_are_ones_the_daemon_reads() -> None:
    known = setting_env_names()
    external = {"AWS_SHARED_CREDENTIALS_FILE"}
    names = set(config_env()) | {e["name"] for e in container("backupd")["env"]}
    assert names, "no settings in the manifests"
    unknown = {n for n in names if n not in known and n not in external}
    assert not unknown, f"the daemon reads no such variables: {sorted(unknown)}"
    assert {n for n in dockerfile_env() if n.startswith("BACKUPD_")} <= known


def test_manifest_probes_and_healthcheck_hit_endpoints_the_daemon_serves() -> None:
    """A real HttpServer of the daemon answers each probe path; an unknown path is a 404, so the
    check would catch a misspelt path."""
    from contentflow_backupd.http.server import HttpServer
    from contentflow_backupd.observability.metrics import Metrics
    from tests.e2e.test_http import StubProbes

    backupd = container("backupd")
    paths = {backupd[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    (health_cmd,) = args_of("HEALTHCHECK")
    paths |= set(re.findall(r"/(?:livez|readyz|healthz|metrics)\b", health_cmd))
    paths.add(find("ServiceMonitor")["spec"]["endpoints"][0]["path"])
    assert paths == {"/livez", "/readyz", "/metrics"}
    server = HttpServer("127.0.0.1:0", Metrics(__version__), StubProbes())
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        for path in sorted(paths):
            with urllib.request.urlopen(base + path, timeout=10) as resp:
                assert resp.status == 200, path
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/livezz", timeout=10)
        assert missing.value.code == 404
    finally:
        server.stop()
