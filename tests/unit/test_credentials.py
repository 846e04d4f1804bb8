"""Secrets from credential directories ($CREDENTIALS_DIRECTORY, /run/secrets): names, precedence,
errors, and ``config show`` naming the source. Real files in temp directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.settings import credential_dirs, load_settings
from contentflow_backupd.wiring.configshow import describe_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("BACKUPD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    systemd, secrets = tmp_path / "creds", tmp_path / "run-secrets"
    systemd.mkdir()
    secrets.mkdir()
    return systemd, secrets


def test_credentials_fill_secret_settings_and_config_show_names_them(tmp_path: Path) -> None:
    systemd, secrets = dirs(tmp_path)
    (systemd / "BACKUPD_ENCRYPTION__PASSPHRASE").write_text("pass from systemd\n")
    (secrets / "BACKUPD_DATABASE_URL").write_text("postgresql://u:dbpw@db/app\r\n")
    (secrets / "BACKUPD_NOTIFY__WEBHOOK_URL").write_text("https://hooks.example/T0K3N")
    settings, file_data = load_settings(secret_dirs=[systemd, secrets])
    assert settings.encryption.passphrase is not None
    assert settings.encryption.passphrase.get_secret_value() == "pass from systemd"
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://u:dbpw@db/app"
    assert settings.notify.webhook_url is not None
    rows = {r["name"]: r for r in describe_settings(settings, file_data)}
    assert (
        rows["BACKUPD_ENCRYPTION__PASSPHRASE"]["source"]
        == f"credential {systemd}/BACKUPD_ENCRYPTION__PASSPHRASE"
    )
    assert rows["BACKUPD_DATABASE_URL"]["source"] == f"credential {secrets}/BACKUPD_DATABASE_URL"
    assert "dbpw" not in rows["BACKUPD_DATABASE_URL"]["value"]
    assert rows["BACKUPD_CATALOG_URL"]["source"] == "default"


@pytest.mark.parametrize(
    ("env", "toml", "in_systemd", "in_secrets", "want"),
    [
        ({"BACKUPD_ENCRYPTION__PASSPHRASE": "env"}, "", "systemd", "secrets", "env"),
        ({}, '[encryption]\npassphrase = "file"\n', "systemd", "secrets", "file"),
        ({}, "", "systemd", "secrets", "systemd"),
        ({}, "", None, "secrets", "secrets"),
        ({}, "", None, None, None),
    ],
)
def test_precedence_env_file_credentials_dir_run_secrets(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    toml: str,
    in_systemd: str | None,
    in_secrets: str | None,
    want: str | None,
) -> None:
    systemd, secrets = dirs(tmp_path)
    for folder, value in ((systemd, in_systemd), (secrets, in_secrets)):
        if value is not None:
            (folder / "BACKUPD_ENCRYPTION__PASSPHRASE").write_text(value)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config = None
    if toml:
        config = tmp_path / "c.toml"
        config.write_text(toml)
    settings, _ = load_settings(config, secret_dirs=[systemd, secrets])
    got = settings.encryption.passphrase.get_secret_value() if settings.encryption.passphrase else None
    assert got == want


def test_another_encryption_secret_in_env_hides_the_passphrase_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd, secrets = dirs(tmp_path)
    (systemd / "BACKUPD_ENCRYPTION__PASSPHRASE").write_text("from credential")
    monkeypatch.setenv("BACKUPD_ENCRYPTION__PASSPHRASE_FILE", "/etc/backupd/passphrase")
    settings, _ = load_settings(secret_dirs=[systemd, secrets])
    assert settings.encryption.passphrase is None
    assert settings.encryption.passphrase_file == Path("/etc/backupd/passphrase")


def test_key_file_credential_is_used_as_the_key_file_path(tmp_path: Path) -> None:
    systemd, secrets = dirs(tmp_path)
    (secrets / "BACKUPD_ENCRYPTION__KEY_FILE").write_bytes(b"\x00" * 32)
    settings, _ = load_settings(secret_dirs=[systemd, secrets])
    assert settings.encryption.key_file == secrets / "BACKUPD_ENCRYPTION__KEY_FILE"
    assert settings.encryption.passphrase is None
    # the first directory with any encryption secret wins for the whole group
    (systemd / "BACKUPD_ENCRYPTION__PASSPHRASE").write_text("p")
    settings, _ = load_settings(secret_dirs=[systemd, secrets])
    assert settings.encryption.key_file is None and settings.encryption.passphrase is not None


def test_two_encryption_secrets_in_one_directory_are_refused(tmp_path: Path) -> None:
    systemd, secrets = dirs(tmp_path)
    (systemd / "BACKUPD_ENCRYPTION__PASSPHRASE").write_text("p")
    (systemd / "BACKUPD_ENCRYPTION__KEY_FILE").write_bytes(b"k")
    with pytest.raises(ConfigError, match="keep one"):
        load_settings(secret_dirs=[systemd, secrets])


def test_empty_or_unreadable_credential_is_a_config_error(tmp_path: Path) -> None:
    systemd, secrets = dirs(tmp_path)
    (systemd / "BACKUPD_DATABASE_URL").write_text("\n")
    with pytest.raises(ConfigError, match=r"BACKUPD_DATABASE_URL is empty"):
        load_settings(secret_dirs=[systemd, secrets])
    (systemd / "BACKUPD_DATABASE_URL").unlink()
    (systemd / "BACKUPD_DATABASE_URL").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(secret_dirs=[systemd, secrets])


def test_credential_dirs_default_to_systemd_then_run_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    assert credential_dirs() == [Path("/run/secrets")]
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/contentflow-backupd.service")
    assert credential_dirs() == [Path("/run/credentials/contentflow-backupd.service"), Path("/run/secrets")]


def test_credentials_directory_from_the_environment_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd, _ = dirs(tmp_path)
    (systemd / "BACKUPD_CATALOG_URL").write_text("sqlite:////tmp/x.sqlite")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(systemd))
    settings, _ = load_settings()
    assert settings.catalog_sqlalchemy_url == "sqlite:////tmp/x.sqlite"
    assert settings.credential_sources == {"BACKUPD_CATALOG_URL": str(systemd / "BACKUPD_CATALOG_URL")}


def test_one_section_merges_from_env_the_file_and_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydantic-settings merges the sources per setting, not per section: env > file > credential
    files > defaults within [notify] and [s3] alike."""
    systemd, secrets = dirs(tmp_path)
    (secrets / "BACKUPD_NOTIFY__WEBHOOK_URL").write_text("https://hooks.example/T0K3N\n")
    config = tmp_path / "backupd.toml"
    config.write_text(
        '[notify]\ntimeout = "7s"\nretries = 2\n[s3]\nregion = "file"\nforce_path_style = true\n'
    )
    monkeypatch.setenv("BACKUPD_NOTIFY__RETRIES", "5")
    monkeypatch.setenv("BACKUPD_S3__REGION", "env")
    settings, file_data = load_settings(config, secret_dirs=[systemd, secrets])
    assert settings.notify.webhook_url is not None
    assert settings.notify.webhook_url.get_secret_value() == "https://hooks.example/T0K3N"
    assert (settings.notify.timeout, settings.notify.retries) == ("7s", 5)
    assert (settings.s3.region, settings.s3.force_path_style, settings.s3.endpoint_url) == ("env", True, None)
    assert file_data == {
        "notify": {"timeout": "7s", "retries": 2},
        "s3": {"region": "file", "force_path_style": True},
    }
