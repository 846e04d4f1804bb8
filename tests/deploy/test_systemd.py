"""systemd/contentflow-backupd.service and its example environment file.

``systemd-analyze verify`` checks the unit (with ExecStart pointed at the installed command, which
verify requires to exist); the required directives are checked by parsing the file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from contentflow_backupd.daemon.lifecycle import LOOP_INTERVAL
from contentflow_backupd.errors import ConfigError
from contentflow_backupd.settings import Settings
from contentflow_backupd.timespec import parse_duration
from tests.support.cli import command_path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "contentflow-backupd.service"
ENV_EXAMPLE = ROOT / "systemd" / "contentflow-backupd.env.example"

Directives = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Directives:
    """Sections -> key -> every value in order (systemd allows repeated keys)."""
    out: Directives = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"directive outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def systemd_seconds(value: str) -> float:
    """A systemd time span such as ``90s``, ``10min``, ``1h 30min`` or ``60``, in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and "".join(n + u for n, u in parts) == value.replace(" ", ""), value
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def unit() -> Directives:
    return parse_unit(UNIT.read_text())


def one(unit: Directives, key: str, section: str = "Service") -> str:
    values = unit[section].get(key)
    assert values and len(values) == 1, f"{section}.{key}: {values}"
    return values[0]


def test_parse_unit_keeps_repeated_keys() -> None:
    parsed = parse_unit("[Service]\n# c\nEnvironment=A=1\nEnvironment=B=2\n[Install]\nWantedBy=x\n")
    assert parsed == {"Service": {"Environment": ["A=1", "B=2"]}, "Install": {"WantedBy": ["x"]}}
    assert systemd_seconds("90s") == 90 and systemd_seconds("10min") == 600 and systemd_seconds("60") == 60


def test_unit_is_a_notify_service_with_watchdog(unit: Directives) -> None:
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    watchdog = systemd_seconds(one(unit, "WatchdogSec"))
    assert watchdog >= 10 * LOOP_INTERVAL, "the daemon pings once per main-loop interval"
    assert one(unit, "ExecStart").endswith("contentflow-backupd run")
    assert one(unit, "Restart") == "on-failure"
    # invalid settings exit with ConfigError's code: restarting would not fix them
    assert one(unit, "RestartPreventExitStatus") == str(ConfigError.exit_code)
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_reload_sends_sighup_to_the_main_process_only(unit: Directives) -> None:
    """The daemon reloads on SIGHUP (daemon/reload.py); KillMode=mixed is about stopping, so
    the reload names the main process itself: a SIGHUP to pg_receivewal would end it."""
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_stop_leaves_room_for_the_shutdown_grace(unit: Directives) -> None:
    assert one(unit, "KillMode") == "mixed"
    grace = parse_duration(Settings.model_fields["shutdown_grace"].default)
    assert systemd_seconds(one(unit, "TimeoutStopSec")) > grace + 10


def test_runs_as_a_dedicated_user_with_state_dir_and_credential(unit: Directives) -> None:
    user = one(unit, "User")
    assert user not in ("root", "0", "postgres") and one(unit, "Group") == user
    assert "DynamicUser" not in unit["Service"]
    assert one(unit, "StateDirectory") == "contentflow-backupd"
    assert one(unit, "LoadCredential") == "passphrase:/etc/contentflow-backupd/passphrase"
    env = dict(v.split("=", 1) for v in unit["Service"]["Environment"])
    # %d: the credentials directory; the secret itself never enters the environment
    assert env["BACKUPD_ENCRYPTION__PASSPHRASE_FILE"] == "%d/passphrase"
    assert "BACKUPD_ENCRYPTION__PASSPHRASE" not in env
    assert one(unit, "EnvironmentFile") == "-/etc/contentflow-backupd/env"


def test_unit_is_hardened_without_breaking_child_processes(unit: Directives) -> None:
    s = unit["Service"]
    assert one(unit, "ProtectSystem") == "strict"
    for key in (
        "ProtectHome",
        "PrivateTmp",
        "NoNewPrivileges",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert one(unit, key) == "yes", key
    assert set(one(unit, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert s["SystemCallFilter"][0] == "@system-service"
    assert one(unit, "CapabilityBoundingSet") == ""
    # pg_dump & co. run as children: the whole tree must keep exec and W^X-free memory rules
    assert "MemoryDenyWriteExecute" not in s
    assert "NoExecPaths" not in s and "ProcSubset" not in s


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _verify_problems(path: Path) -> list[str]:
    proc = _verify(path)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if path.name in ln or str(path) in ln]
    if proc.returncode != 0:
        lines.append(f"exit {proc.returncode}: {proc.stderr.strip()}")
    return lines


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at the installed command (verify needs it to exist)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    exec_line = "ExecStart=/usr/local/bin/contentflow-backupd run"
    assert exec_line in text
    path = tmp_path / "contentflow-backupd.service"
    path.write_text(text.replace(exec_line, f"ExecStart={command_path()} run"))
    return path


def test_systemd_analyze_verify_accepts_the_unit(testable_unit: Path) -> None:
    assert _verify_problems(testable_unit) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Type=notify", "Type=notifyy"),
        ("KillMode=mixed", "KilMode=mixed"),
        ("WatchdogSec=60s", "WatchdogSec=x"),
    ],
)
def test_systemd_analyze_verify_catches_a_broken_unit(testable_unit: Path, old: str, new: str) -> None:
    testable_unit.write_text(testable_unit.read_text().replace(old, new))
    assert _verify_problems(testable_unit), "a broken directive must be reported"


def _env_example_assignments() -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if not line:
            continue
        m = re.match(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m is None:
            assert line.startswith("#"), f"not VAR=value or a comment: {raw!r}"
            continue
        out[m.group(1)] = m.group(2)
    return out


def test_env_example_names_real_settings_with_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assigned = _env_example_assignments()
    backupd = {k: v for k, v in assigned.items() if k.startswith("BACKUPD_") and k != "BACKUPD_CONFIG"}
    assert {"BACKUPD_REPOSITORY", "BACKUPD_DATABASE_URL", "BACKUPD_SCHEDULE__FULL"} <= set(backupd)
    for name in list(os.environ):
        if name.startswith("BACKUPD_"):
            monkeypatch.delenv(name)
    for name, value in backupd.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # extra="forbid": an unknown name or a bad value raises
    assert settings.schedule.full == backupd["BACKUPD_SCHEDULE__FULL"]
    assert settings.http.listen == backupd.get("BACKUPD_HTTP__LISTEN", settings.http.listen)
    # the unit sets the passphrase file; the example must not set another secret source
    assert not {k for k in backupd if k.startswith("BACKUPD_ENCRYPTION__")}
    assert parse_duration(settings.shutdown_grace) < systemd_seconds(
        one(parse_unit(UNIT.read_text()), "TimeoutStopSec")
    )
