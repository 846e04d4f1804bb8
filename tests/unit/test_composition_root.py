"""The composition root (``wiring``): the application is built from settings without opening
anything, each part opens when asked (and fails then, clearly), and the catalog block closes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from contentflow_backupd.errors import CatalogError, ConfigError
from contentflow_backupd.settings import Settings
from contentflow_backupd.wiring import App


def unreachable_settings(base: Path) -> Settings:
    """Settings whose every part would fail if opened: a repository and a key file that do not
    exist, a state directory not created yet, a catalog and a server nobody listens on."""
    return Settings(
        repository=f"file://{base / 'missing' / 'repo'}",
        state_dir=base / "missing" / "state",
        catalog_url="postgresql://backupd:catalog-pw@127.0.0.1:1/catalog",
        database_url="postgresql://app:db-pw@127.0.0.1:1/app",
        encryption={"key_file": str(base / "missing" / "key")},
        mode="physical",
    )


def test_the_app_is_built_without_opening_anything(tmp_path: Path) -> None:
    app = App(unreachable_settings(tmp_path))
    # What needs no I/O is there at once: plain values, parsed options, the parsed server address.
    assert (app.cluster, app.mode) == ("main", "physical")
    assert [spec.id for spec in app.job_specs][:2] == ["full", "incremental"]
    assert app.objectives.wal is not None  # physical mode: WAL freshness is an objective
    assert app.retention_policy.min_full == 1
    assert app.conninfo.display() == "app@127.0.0.1:1/app"
    probe = app.database_probe()  # bound, not run
    assert callable(probe)
    assert not (tmp_path / "missing").exists()  # no state directory, no repository, no catalog file
    app.close()  # nothing was opened: nothing to close


def test_each_part_fails_clearly_when_it_is_opened(tmp_path: Path) -> None:
    app = App(unreachable_settings(tmp_path))
    with pytest.raises(ConfigError, match=r"BACKUPD_ENCRYPTION__KEY_FILE: .* does not exist"):
        app.repository()
    with pytest.raises(ConfigError, match="BACKUPD_ENCRYPTION__KEY_FILE"):
        app.wal_archive()
    with pytest.raises(CatalogError, match=r"127\.0\.0\.1") as caught, app.catalog():
        pass
    assert "catalog-pw" not in str(caught.value)


def test_the_catalog_block_closes_the_catalog(tmp_path: Path) -> None:
    settings = Settings(repository=f"file://{tmp_path / 'repo'}", state_dir=tmp_path / "state")
    app = App(settings)
    with app.catalog() as catalog:
        catalog.set_meta("probe", "1")
        assert catalog.get_meta("probe") == "1"
    with app.catalog() as again:  # the first one was closed: SQLite allows the next open
        assert again.get_meta("probe") == "1"
    assert again is not catalog


# -- import rules ---------------------------------------------------------------------------------


# Who may import settings and wiring is enforced with the other import rules in
# tests/unit/test_architecture.py (test_only_the_composition_root_imports_settings_and_wiring).
