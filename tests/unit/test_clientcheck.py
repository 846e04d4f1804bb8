"""The daemon's start-up check of the PostgreSQL client major against the server's
(``daemon/clientcheck.py``), with the client tools installed on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from contentflow_backupd.daemon.clientcheck import compare_majors
from contentflow_backupd.errors import ConfigError
from contentflow_backupd.source.tools import tool_major
from tests.support.pg import find_pg_bin


@pytest.fixture(scope="module")
def client() -> tuple[int, Path]:
    bin_dir = find_pg_bin()
    major = tool_major(bin_dir / "pg_dump")
    assert major is not None
    return major, bin_dir


def test_the_same_major_and_an_older_server_pass(client: tuple[int, Path]) -> None:
    major, bin_dir = client
    for server in (major, major - 1):
        result = compare_majors("pg_dump", server, bin_dir)
        assert result.client_major == major and result.server_major == server
        assert result.tool == bin_dir / "pg_dump"


def test_a_newer_server_is_refused_naming_both_majors_and_the_fix(client: tuple[int, Path]) -> None:
    major, bin_dir = client
    with pytest.raises(ConfigError) as err:
        compare_majors("pg_basebackup", major + 1, bin_dir, where="the server at db:5432")
    text = str(err.value)
    assert f"BACKUPD_PG_BIN={bin_dir} holds the PostgreSQL {major} client tools (pg_basebackup)" in text
    assert f"the server at db:5432 is PostgreSQL {major + 1}" in text
    assert f"--build-arg PG_MAJOR={major + 1}" in text
    assert err.value.exit_code == 2


def test_a_missing_tool_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        compare_majors("pg_dump", 15, tmp_path)
    assert "not found in BACKUPD_PG_BIN" in str(err.value) and "PostgreSQL 15" in str(err.value)
