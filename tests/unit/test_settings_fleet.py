"""The ``fleet`` settings (top level only): ``member`` and its default (the host name and a hash
of the state directory, stable across restarts), ``lease_ttl`` and its lower bound, from the
environment and the TOML file. No server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.settings import FleetSettings, Settings, load_settings
from contentflow_backupd.statedir import default_member
from contentflow_backupd.timespec import parse_duration


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BACKUPD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def load(tmp_path: Path, text: str = "") -> Settings:
    cfg = tmp_path / "backupd.toml"
    cfg.write_text(text)
    settings, _ = load_settings(cfg, secret_dirs=[tmp_path / "no-secrets"])
    return settings


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUPD_STATE_DIR", str(tmp_path / "state"))
    s = load(tmp_path)
    assert (s.fleet.member, s.fleet.lease_ttl) == (None, "15s")
    assert s.fleet_member == default_member(tmp_path / "state")


def test_the_default_member_is_stable_and_differs_per_state_directory(tmp_path: Path) -> None:
    one = default_member(tmp_path / "a", host="db-host.example")
    assert one == default_member(str(tmp_path / "a"), host="db-host.example")  # a restart
    assert one.startswith("db-host.example-") and len(one) == len("db-host.example-") + 8
    assert default_member(tmp_path / "b", host="db-host.example") != one  # a second daemon
    assert default_member(tmp_path / "a", host="other") != one
    odd = default_member(tmp_path / "a", host="_my host/x")
    assert odd.startswith("my-host-x-")
    FleetSettings(member=odd)  # the default always passes the member pattern
    FleetSettings(member=default_member(tmp_path, host=""))


def test_from_the_environment_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load(tmp_path, '[fleet]\nmember = "backup-1"\nlease_ttl = "30s"\n')
    assert (s.fleet_member, parse_duration(s.fleet.lease_ttl)) == ("backup-1", 30.0)
    monkeypatch.setenv("BACKUPD_FLEET__MEMBER", "backup-2")
    monkeypatch.setenv("BACKUPD_FLEET__LEASE_TTL", "1m")
    s = load(tmp_path, '[fleet]\nmember = "backup-1"\n')
    assert (s.fleet_member, s.fleet.lease_ttl) == ("backup-2", "1m")


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("BACKUPD_FLEET__LEASE_TTL", "14s", "shorter than 3 x the lease renewal period"),
        ("BACKUPD_FLEET__LEASE_TTL", "soon", "not a duration"),
        ("BACKUPD_FLEET__MEMBER", "a/b", "BACKUPD_FLEET__MEMBER"),
        ("BACKUPD_FLEET__MEMBER", "-x", "BACKUPD_FLEET__MEMBER"),
    ],
)
def test_invalid_values_name_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=env) as caught:
        load(tmp_path)
    assert message in str(caught.value)


def test_the_shortest_ttl_is_three_renewals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUPD_FLEET__LEASE_TTL", "15s")
    assert load(tmp_path).fleet.lease_ttl == "15s"


def test_fleet_is_top_level_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"clusters\.orders\.fleet"):
        load(tmp_path, '[clusters.orders]\nmode = "logical"\n[clusters.orders.fleet]\nmember = "x"\n')
    monkeypatch.setenv("BACKUPD_CLUSTERS__ORDERS__FLEET__MEMBER", "x")
    with pytest.raises(ConfigError, match="BACKUPD_CLUSTERS__ORDERS__FLEET__MEMBER: unknown setting"):
        load(tmp_path)
