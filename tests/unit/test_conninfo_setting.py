"""A connection that fails names the setting its URL came from: ``BACKUPD_DATABASE_URL``, or a
named cluster's ``BACKUPD_CLUSTERS__<NAME>__DATABASE_URL`` (a daemon of several clusters
would otherwise send the operator to a variable that is not set)."""

from __future__ import annotations

import os
import socket

import pytest

from contentflow_backupd.errors import SourceError
from contentflow_backupd.settings import Settings
from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.postgres import connect
from contentflow_backupd.wiring.sources import source_conninfo


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_setting_survives_a_change_of_database() -> None:
    info = ConnInfo.parse("postgresql://u@h/db", setting="BACKUPD_CLUSTERS__ORDERS__DATABASE_URL")
    assert info.with_database("other").setting == "BACKUPD_CLUSTERS__ORDERS__DATABASE_URL"
    assert ConnInfo.parse(None, setting="X").setting == "X"
    assert ConnInfo.parse("postgresql://u@h/db").setting == "BACKUPD_DATABASE_URL"


@pytest.mark.parametrize(
    ("clusters", "expected"),
    [
        (None, "BACKUPD_DATABASE_URL"),
        (["orders", "billing"], "BACKUPD_CLUSTERS__ORDERS__DATABASE_URL"),
    ],
)
def test_a_refused_connection_names_the_setting_of_its_cluster(
    clusters: list[str] | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("BACKUPD_")]:
        monkeypatch.delenv(key)
    url = f"postgresql://nobody@127.0.0.1:{_closed_port()}/none?connect_timeout=5"
    if clusters is None:
        settings = Settings(database_url=url)
    else:
        settings = Settings(clusters={name: {"database_url": url} for name in clusters}).for_cluster("orders")
    info = source_conninfo(settings)
    with pytest.raises(SourceError) as caught:
        connect(info).close()
    assert expected in (caught.value.hint or ""), caught.value.hint
