"""One rule for unknown setting names: an unknown ``BACKUPD_*`` variable and an unknown
config-file key are both errors (exit 2) that suggest the closest known name. Real files in temp
directories; the installed command for the exit code and the message."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from contentflow_backupd.errors import EXIT_USAGE, ConfigError
from contentflow_backupd.settings import (
    NOT_SETTINGS,
    env_name,
    load_settings,
    setting_paths,
    unknown_names,
)
from tests.support.cli import command_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BACKUPD_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("env", "file_data", "want"),
    [
        (
            {"BACKUPD_REPOSITRY": "x"},
            {},
            "BACKUPD_REPOSITRY: unknown setting (did you mean BACKUPD_REPOSITORY?)",
        ),
        (
            {"BACKUPD_ENCRYPTION__PASSPHRASE_FIEL": "/p"},
            {},
            "BACKUPD_ENCRYPTION__PASSPHRASE_FIEL: unknown setting "
            "(did you mean BACKUPD_ENCRYPTION__PASSPHRASE_FILE?)",
        ),
        ({"backupd_retention__ful": "1d"}, {}, "(did you mean BACKUPD_RETENTION__FULL?)"),
        ({}, {"repositry": "x"}, "config file key repositry: unknown setting (did you mean repository?)"),
        (
            {},
            {"encryption": {"passphrase_fiel": "/p"}},
            "config file key encryption.passphrase_fiel: unknown setting "
            "(did you mean encryption.passphrase_file?)",
        ),
        ({"BACKUPD_ZZZZZZZZZZZZ": "1"}, {}, "BACKUPD_ZZZZZZZZZZZZ: unknown setting"),
    ],
)
def test_unknown_names_are_reported_with_the_closest_known_name(
    env: dict[str, str], file_data: dict[str, object], want: str
) -> None:
    problems = unknown_names(env, file_data)
    assert len(problems) == 1, problems
    assert want in problems[0]


@pytest.mark.parametrize(
    ("env", "file_data"),
    [
        ({"BACKUPD_REPOSITORY": "file:///r", "BACKUPD_S3__REGION": "eu"}, {}),
        ({"BACKUPD_S3": '{"region": "eu"}'}, {}),  # a whole section as JSON
        ({name: "1" for name in NOT_SETTINGS}, {}),  # make run / tests, not settings
        ({"PGHOST": "db", "OTHER_BACKUPD_X": "1"}, {}),
        ({}, {"repository": "file:///r", "s3": {"region": "eu"}, "log": {"level": "debug"}}),
    ],
)
def test_known_names_pass(env: dict[str, str], file_data: dict[str, object]) -> None:
    assert unknown_names(env, file_data) == []


def test_env_and_file_typos_are_the_same_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUPD_REPOSITRY", "file:///r")
    with pytest.raises(ConfigError) as from_env:
        load_settings()
    monkeypatch.delenv("BACKUPD_REPOSITRY")
    config = tmp_path / "config.toml"
    config.write_text('repositry = "file:///r"\n')
    with pytest.raises(ConfigError) as from_file:
        load_settings(config)
    for exc in (from_env.value, from_file.value):
        assert exc.exit_code == EXIT_USAGE
        assert "unknown setting (did you mean" in exc.message


def test_every_setting_the_readme_names_is_known() -> None:
    sections, leaves = setting_paths()
    known = {env_name(p) for p in sections | leaves} | NOT_SETTINGS
    readme = (ROOT / "README.md").read_text()
    readme = re.sub(r"BACKUPD_\w+: unknown setting", "", readme)  # the README's example of a typo
    named = set(re.findall(r"BACKUPD_[A-Z0-9_]*[A-Z0-9]", readme))
    # `BACKUPD_SCHEDULE__FULL` / `__INCREMENTAL`: the table abbreviates siblings; check the full names.
    # A named cluster's settings (BACKUPD_CLUSTERS__BILLING__...) are checked as the command does.
    assert unknown_names(dict.fromkeys(named - known, "x"), {}) == []
    assert any(n.startswith("BACKUPD_CLUSTERS__") for n in named - known)  # the check above ran


def test_the_command_stops_with_exit_2_and_the_suggestion(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPD_")}
    env.update(
        {
            "BACKUPD_REPOSITRY": f"file://{tmp_path}/repo",
            "BACKUPD_ENCRYPTION__PASSPHRASE_FIEL": str(tmp_path / "passphrase"),
            "BACKUPD_STATE_DIR": str(tmp_path / "state"),
        }
    )
    proc = subprocess.run([command_path(), "list"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "BACKUPD_REPOSITRY: unknown setting (did you mean BACKUPD_REPOSITORY?)" in proc.stderr
    assert "(did you mean BACKUPD_ENCRYPTION__PASSPHRASE_FILE?)" in proc.stderr
    assert "is not set" not in proc.stderr  # one message, about the typo, not its consequence
