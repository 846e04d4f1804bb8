"""The WAL hand-off socket (walsocket.py, daemon/walservice.py) without PostgreSQL: the client's
argv and configuration rules as tables, then the real client (a fresh interpreter running the
installed entry point) against a real ``WalService`` on a local repository.

The end-to-end tests with PostgreSQL's archiver and a real daemon, and the kill tests, are in
tests/e2e/test_wal_socket.py.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from contentflow_backupd.daemon.walservice import WalService
from contentflow_backupd.observability.metrics import ClusterMetrics, Metrics
from contentflow_backupd.repository.chunker import ChunkerParams
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.storage.local import LocalStorage
from contentflow_backupd.walconf import Fallback, client_config, parse_push, socket_path
from tests.unit.test_lean_imports import NOT_IMPORTED, wal_segment

SECRET = "socket test passphrase"

# -- argv: which command lines take the fast path ------------------------------------------------
PUSH_FORMS = [
    (["wal", "push", "pg_wal/X"], (None, None, "pg_wal/X", False)),
    (["wal-push", "X"], (None, None, "X", False)),
    (["--config", "/c.toml", "wal", "push", "X"], ("/c.toml", None, "X", False)),
    (["--config=/c.toml", "wal-push", "--json", "X"], ("/c.toml", None, "X", True)),
    (["wal", "push", "X", "--json"], (None, None, "X", True)),
    (["--cluster", "a", "wal", "push", "X"], (None, "a", "X", False)),
    (["--cluster=a", "--config", "/c.toml", "wal-push", "X"], ("/c.toml", "a", "X", False)),
    (["wal", "push", "--cluster", "b", "X"], (None, "b", "X", False)),
    (["--cluster", "a", "wal", "push", "X", "--cluster=b"], (None, "b", "X", False)),  # last wins
    (["wal", "push", "X", "--cluster"], None),
    (["wal", "push", "--cluster", "--json", "X"], None),
    (["--cluster", "a", "--cluster", "b", "wal", "push", "X"], None),
    (["wal", "fetch", "X", "Y"], None),
    (["wal", "push"], None),
    (["wal", "push", "X", "Y"], None),
    (["wal", "push", "--help"], None),
    (["--config", "wal", "push", "X"], None),  # --config takes "wal": argparse's business
    (["--config=", "wal-push", "X"], None),
    (["--version", "wal-push", "X"], None),
    (["backup", "create"], None),
]


@pytest.mark.parametrize(("argv", "expected"), PUSH_FORMS, ids=[" ".join(a) for a, _ in PUSH_FORMS])
def test_which_command_lines_take_the_fast_path(argv: list[str], expected: object) -> None:
    assert parse_push(argv) == expected


# -- the client's configuration: env over file over defaults, like the settings -----------------
def test_the_environment_wins_over_the_file_and_names_are_case_insensitive(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'repository = "file:///from/file"\ncluster = "filecluster"\nstate_dir = "/state"\n'
        '[s3]\nendpoint_url = "http://file"\n'
    )
    got = client_config(str(cfg), {"backupd_cluster": "envcluster"})
    assert got == {
        "identity": {
            "repository": "file:///from/file",
            "cluster": "envcluster",
            "s3_endpoint_url": "http://file",
        },
        "socket": "/state/wal.sock",
        "prefetch": 8,
        "prefetch_dir": "/state/wal-prefetch/envcluster",
    }
    got = client_config(None, {"BACKUPD_CONFIG": str(cfg), "BACKUPD_WAL__SOCKET": "/run/x.sock"})
    assert got["socket"] == "/run/x.sock"
    assert got["identity"]["cluster"] == "filecluster"


def test_defaults_are_the_settings_defaults(tmp_path: Path) -> None:
    env = {"BACKUPD_REPOSITORY": "file:///r", "STATE_DIRECTORY": str(tmp_path)}
    os_env = dict(os.environ)
    try:
        os.environ["STATE_DIRECTORY"] = str(tmp_path)
        got = client_config(None, env)
    finally:
        os.environ.clear()
        os.environ.update(os_env)
    assert got["identity"] == {"repository": "file:///r", "cluster": "main", "s3_endpoint_url": None}
    assert got["socket"] == str(tmp_path / "wal.sock")


def test_the_lean_defaults_are_the_settings_defaults() -> None:
    from contentflow_backupd.settings import Settings
    from contentflow_backupd.walconf import DEFAULT_CLUSTER, DEFAULT_PREFETCH

    assert Settings.model_fields["cluster"].default == DEFAULT_CLUSTER
    wal = Settings.model_fields["wal"].default
    assert wal.prefetch == DEFAULT_PREFETCH and wal.socket is None


def test_the_socket_can_be_turned_off() -> None:
    assert socket_path("off", "/state") is None
    assert socket_path(" OFF ", None) is None
    assert socket_path(None, "/state") == "/state/wal.sock"


@pytest.mark.parametrize(
    ("env", "file_text", "quiet"),
    [
        ({}, None, True),  # no repository: the direct path says so
        ({"BACKUPD_WAL": '{"socket": "/x"}'}, None, False),  # a section as JSON: not read here
        ({"BACKUPD_REPOSITORY": "file:///r"}, "not = [valid", False),  # the direct path names the error
    ],
    ids=["no-repository", "json-section", "invalid-toml"],
)
def test_what_the_lean_reader_does_not_handle_goes_direct(
    tmp_path: Path, env: dict[str, str], file_text: str | None, quiet: bool
) -> None:
    config = None
    if file_text is not None:
        config = str(tmp_path / "c.toml")
        Path(config).write_text(file_text)
    with pytest.raises(Fallback) as info:
        client_config(config, env)
    assert info.value.quiet is quiet


# -- the real client against a real service --------------------------------------------------
DRIVER = """
import sys
before = set(sys.modules)
from contentflow_backupd.entry import main
rc = main(sys.argv[1:])
added = sorted(set(sys.modules) - before)
import json
print(json.dumps({"rc": rc, "modules": sorted(sys.modules), "added": added}))
"""
STARTUP_COSTLY = ("socket", "selectors", "enum", "re", "pathlib", "contextlib", "typing", "collections")
"""Standard-library modules that each add milliseconds to a Python start: a served ``wal push`` or
``wal fetch`` (a call per WAL segment) imports none of them (``_socket``, not ``socket``)."""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPD_")}
    env.update(
        {
            "BACKUPD_REPOSITORY": f"file://{tmp_path / 'repo'}",
            "BACKUPD_STATE_DIR": str(tmp_path / "state"),
            "BACKUPD_ENCRYPTION__PASSPHRASE": SECRET,
            "BACKUPD_LOG__FORMAT": "json",
        }
    )
    env.update(extra)
    return env


def push(tmp_path: Path, segment: Path, **env: str) -> tuple[int, dict[str, object], str, str]:
    """Run ``wal push --json SEGMENT`` in a fresh interpreter: exit code, report, stdout, stderr."""
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, "wal", "push", "--json", str(segment)],
        capture_output=True,
        text=True,
        env=_env(tmp_path, **env),
        timeout=120,
    )
    lines = proc.stdout.strip().splitlines()
    report: dict[str, object] = json.loads(lines[-1])
    return int(str(report["rc"])), report, "\n".join(lines[:-1]), proc.stderr


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(tmp_path / "repo")
    return Repository.init(
        storage, KekSecret("passphrase", SECRET.encode(), "t"), chunker=ChunkerParams(avg_size=64 * 1024)
    )


def _metrics() -> ClusterMetrics:
    return Metrics("test").add_cluster("main")


@pytest.fixture
def service(tmp_path: Path, repo: Repository) -> Iterator[WalService]:
    identity = {"repository": f"file://{tmp_path / 'repo'}", "cluster": "main", "s3_endpoint_url": None}
    svc = WalService(tmp_path / "state" / "wal.sock", WalArchive(repo, "main"), identity, _metrics())
    assert svc.start()
    yield svc
    svc.stop()


def _count(service: WalService, result: str) -> float:
    value = service.metrics.parent.registry.get_sample_value(
        "backupd_wal_socket_pushes_total", {"cluster": "main", "result": result}
    )
    return value or 0.0


def test_a_push_through_the_daemon_imports_nothing_heavy_and_stores_the_segment(
    tmp_path: Path, service: WalService, repo: Repository
) -> None:
    segment = wal_segment(tmp_path / "000000010000000000000001")
    rc, report, out, err = push(tmp_path, segment)
    assert rc == 0, err
    assert json.loads(out) == {"file": segment.name, "status": "stored"}
    assert _count(service, "stored") == 1
    assert WalArchive(repo, "main").fetch(segment.name) == segment.read_bytes()
    modules = report["modules"]
    assert isinstance(modules, list)
    lean_not = (
        *NOT_IMPORTED,
        "pydantic",
        "pydantic_settings",
        "structlog",
        "cryptography",
        "zstandard",
        "argparse",
    )
    heavy = [n for n in lean_not if any(m == n or m.startswith(n + ".") for m in modules)]
    assert heavy == [], f"the fast path imported {heavy}"
    assert "contentflow_backupd.cli" not in modules
    costly = [m for m in report["added"] if m.split(".")[0] in STARTUP_COSTLY]
    assert costly == [], f"the fast path imported {costly}"
    # The same file again: a duplicate, stored nothing new.
    rc, _, out, err = push(tmp_path, segment)
    assert rc == 0, err
    assert json.loads(out)["status"] == "duplicate"
    assert _count(service, "duplicate") == 1


def test_the_daemon_refuses_for_good_what_the_direct_path_refuses(
    tmp_path: Path, service: WalService, repo: Repository
) -> None:
    segment = wal_segment(tmp_path / "000000010000000000000002")
    assert push(tmp_path, segment)[0] == 0
    other = tmp_path / "other" / segment.name
    other.parent.mkdir()
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    other.write_bytes(bytes(data))
    rc, report, _, err = push(tmp_path, other)
    assert rc == 1
    assert f"a different {segment.name} is already archived" in err
    assert "contentflow_backupd.cli" not in report["modules"]  # answered by the daemon
    assert _count(service, "error") == 1
    assert WalArchive(repo, "main").fetch(segment.name) == segment.read_bytes()  # unchanged
    not_wal = tmp_path / "notes.txt"
    not_wal.write_text("hello")
    rc, _, _, err = push(tmp_path, not_wal)
    assert rc == 2 and "is not a WAL file" in err


def test_a_client_of_another_repository_or_cluster_pushes_by_itself(
    tmp_path: Path, service: WalService, repo: Repository
) -> None:
    segment = wal_segment(tmp_path / "000000010000000000000003")
    rc, report, out, err = push(tmp_path, segment, BACKUPD_CLUSTER="other")
    assert rc == 0, err
    assert json.loads(out)["status"] == "stored"
    assert "contentflow_backupd.cli" in report["modules"]  # the direct path ran
    assert "this daemon serves another cluster" in err  # logged: wal_socket_fallback
    assert _count(service, "refused") == 1
    assert WalArchive(repo, "other").fetch(segment.name) == segment.read_bytes()
    assert not WalArchive(repo, "main").exists(segment.name)


def test_no_daemon_and_a_stale_socket_go_direct(tmp_path: Path, repo: Repository) -> None:
    segment = wal_segment(tmp_path / "000000010000000000000004")
    rc, report, _, err = push(tmp_path, segment)
    assert rc == 0, err
    assert "contentflow_backupd.cli" in report["modules"]
    assert "wal_socket_fallback" not in err  # no daemon runs: expected, not a warning
    # A socket file nothing accepts on (a daemon killed with -9).
    stale = tmp_path / "state" / "wal.sock"
    stale.parent.mkdir(exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))
    segment2 = wal_segment(tmp_path / "000000010000000000000005")
    rc, _, _, err = push(tmp_path, segment2)
    assert rc == 0, err
    assert "wal_socket_fallback" in err and "no daemon answers" in err
    # The next daemon replaces it and serves.
    identity = {"repository": f"file://{tmp_path / 'repo'}", "cluster": "main", "s3_endpoint_url": None}
    svc = WalService(stale, WalArchive(repo, "main"), identity, _metrics())
    assert svc.start()
    try:
        segment3 = wal_segment(tmp_path / "000000010000000000000006")
        rc, report, _, err = push(tmp_path, segment3)
        assert rc == 0, err
        assert "contentflow_backupd.cli" not in report["modules"]
    finally:
        svc.stop()
    assert not stale.exists()  # removed at stop


def test_a_socket_another_daemon_serves_and_a_file_in_the_way_are_left_alone(
    tmp_path: Path, service: WalService, repo: Repository
) -> None:
    second = WalService(service.path, WalArchive(repo, "main"), service.identity, _metrics())
    assert not second.start()
    second.stop()
    assert service.path.exists()  # the first daemon's socket stays
    segment = wal_segment(tmp_path / "000000010000000000000007")
    rc, report, _, err = push(tmp_path, segment)
    assert rc == 0 and "contentflow_backupd.cli" not in report["modules"], err
    in_the_way = tmp_path / "state" / "not-a-socket"
    in_the_way.write_text("keep me")
    third = WalService(in_the_way, WalArchive(repo, "main"), service.identity, _metrics())
    assert not third.start()
    assert in_the_way.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another user")
def test_a_peer_of_another_user_is_refused_and_pushes_by_itself(
    tmp_path: Path, service: WalService, repo: Repository
) -> None:
    """The socket is 0600: another user cannot even connect. Opened up by hand, the daemon still
    refuses the peer (``SO_PEERCRED``), and the client pushes by itself (here it may not: the
    repository is root's, so the direct push fails, and nothing was stored for it)."""
    with tempfile.TemporaryDirectory() as shared:
        base = Path(shared)
        base.chmod(0o755)
        opened = WalService(base / "wal.sock", WalArchive(repo, "main"), service.identity, service.metrics)
        assert opened.start()
        try:
            os.chmod(opened.path, 0o666)
            segment = wal_segment(base / "000000010000000000000008")
            segment.chmod(0o644)
            proc = subprocess.run(
                [sys.executable, "-c", DRIVER, "wal", "push", str(segment)],
                capture_output=True,
                text=True,
                env=_env(tmp_path, BACKUPD_WAL__SOCKET=str(opened.path)),
                user="nobody",
                group="nogroup",
                extra_groups=[],
                timeout=120,
            )
        finally:
            opened.stop()
    assert json.loads(proc.stdout.strip().splitlines()[-1])["rc"] != 0  # the direct push failed
    assert "neither this daemon's user, nor in its group, nor root" in proc.stderr, proc.stderr
    assert _count(service, "refused") == 1
    assert not WalArchive(repo, "main").exists(segment.name)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another user")
def test_a_member_of_the_daemons_group_hands_segments_over(tmp_path: Path, repo: Repository) -> None:
    """The systemd layout: the daemon's group (here root's, gid 0) may use the socket (0660)."""
    import grp

    with tempfile.TemporaryDirectory() as shared:
        base = Path(shared)
        base.chmod(0o755)
        identity = {"repository": f"file://{tmp_path / 'repo'}", "cluster": "main", "s3_endpoint_url": None}
        svc = WalService(base / "wal.sock", WalArchive(repo, "main"), identity, _metrics())
        assert svc.start()
        try:
            assert stat.S_IMODE(os.stat(svc.path).st_mode) == 0o660
            segment = wal_segment(base / "000000010000000000000009")
            segment.chmod(0o644)
            data = segment.read_bytes()
            proc = subprocess.run(
                [sys.executable, "-c", DRIVER, "wal", "push", "--json", str(segment)],
                capture_output=True,
                text=True,
                env=_env(tmp_path, BACKUPD_WAL__SOCKET=str(svc.path)),
                user="nobody",
                group=grp.getgrgid(os.getegid()).gr_name,
                extra_groups=[],
                timeout=120,
            )
        finally:
            svc.stop()
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1])["rc"] == 0, proc.stderr
    assert json.loads("\n".join(lines[:-1]))["status"] == "stored"
    assert WalArchive(repo, "main").fetch(segment.name) == data


# -- named clusters: the lean reader resolves the chosen cluster as the settings do ----------
CLUSTERS_TOML = """
repository = "file:///shared"
state_dir = "/state"
[clusters.a]
[clusters.b]
repository = "file:///b-own"
[clusters.b.wal]
prefetch = 0
"""


def test_the_lean_reader_takes_the_chosen_clusters_own_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CLUSTERS_TOML)
    a = client_config(str(cfg), {}, "a")
    assert a["identity"] == {"repository": "file:///shared", "cluster": "a", "s3_endpoint_url": None}
    # a named cluster's socket is its own: one daemon serves every named cluster
    assert (a["prefetch"], a["prefetch_dir"], a["socket"]) == (
        8,
        "/state/wal-prefetch/a",
        "/state/wal-a.sock",
    )
    b = client_config(str(cfg), {"BACKUPD_CLUSTER": "b"})
    assert b["identity"]["repository"] == "file:///b-own" and b["prefetch"] == 0
    # the cluster's own variable beats its file key and the top level's variable
    env = {"BACKUPD_CLUSTERS__A__REPOSITORY": "file:///a-env", "BACKUPD_WAL__PREFETCH": "3"}
    a = client_config(str(cfg), env, "a")
    assert (a["identity"]["repository"], a["prefetch"]) == ("file:///a-env", 3)
    b = client_config(str(cfg), {**env, "BACKUPD_CLUSTERS__B__WAL__PREFETCH": "5"}, "b")
    assert (b["identity"]["repository"], b["prefetch"]) == ("file:///b-own", 5)
    # a cluster named only in the environment
    c = client_config(str(cfg), {"BACKUPD_CLUSTERS__C__MODE": "physical"}, "c")
    assert c["identity"] == {"repository": "file:///shared", "cluster": "c", "s3_endpoint_url": None}


@pytest.mark.parametrize(
    ("env", "cluster"),
    [
        ({}, None),  # several clusters, none chosen: the full command names the choices
        ({}, "nope"),  # not configured: the full command says so
        ({"BACKUPD_CLUSTER": "nope"}, None),
        ({"BACKUPD_CLUSTERS__A__WAL": '{"prefetch": 0}'}, "a"),  # a section as JSON
    ],
)
def test_the_lean_reader_leaves_cluster_errors_to_the_full_command(
    tmp_path: Path, env: dict[str, str], cluster: str | None
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CLUSTERS_TOML)
    with pytest.raises(Fallback) as info:
        client_config(str(cfg), env, cluster)
    assert not info.value.quiet


def test_without_named_clusters_only_the_implicit_one_is_taken(tmp_path: Path) -> None:
    env = {"BACKUPD_REPOSITORY": "file:///r", "BACKUPD_STATE_DIR": "/s"}
    assert client_config(None, env, "main")["identity"]["cluster"] == "main"
    assert client_config(None, {**env, "BACKUPD_CLUSTER": "x"}, "x")["identity"]["cluster"] == "x"
    with pytest.raises(Fallback):
        client_config(None, env, "other")


def test_one_named_cluster_needs_no_choice(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('repository = "file:///r"\n[clusters.only]\n')
    assert client_config(str(cfg), {})["identity"]["cluster"] == "only"
