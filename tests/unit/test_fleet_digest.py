"""``Fleet.digest``: a cluster's resolved settings as one SHA-256, secrets hashed, daemon-level
keys apart, equal across processes. Real TOML files and credential directories; no server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contentflow_backupd.settings import load_settings
from contentflow_backupd.wiring.digest import _plain
from contentflow_backupd.wiring.fleet import Fleet

BASE = """
repository = "file:///srv/backups"
mode = "physical"
[http]
listen = "127.0.0.1:9847"
[schedule]
full = "0 3 * * *"
[clusters.orders]
database_url = "postgresql://backup:orders-s3cret@orders-db/orders"
[clusters.billing]
database_url = "postgresql://backup@billing-db/billing"
mode = "logical"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BACKUPD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def fleet(tmp_path: Path, text: str, secrets: Path | None = None) -> Fleet:
    cfg = tmp_path / "backupd.toml"
    cfg.write_text(text)
    settings, file_data = load_settings(cfg, secret_dirs=[secrets or tmp_path / "no-secrets"])
    return Fleet(settings, file_data)


def test_equal_settings_give_equal_digests_and_a_change_moves_only_its_part(tmp_path: Path) -> None:
    before = fleet(tmp_path, BASE)
    again = fleet(tmp_path, BASE)
    assert [before.digest(n) for n in before.names] == [again.digest(n) for n in again.names]
    assert len(before.digest("orders")) == 64
    assert before.digest("orders") != before.digest("billing")

    schedule = fleet(tmp_path, BASE + '[clusters.orders.schedule]\nincremental = "off"\n')
    assert schedule.digests("orders")[0] == before.digests("orders")[0]
    assert schedule.digests("orders")[1] != before.digests("orders")[1]
    assert schedule.digest("billing") == before.digest("billing")  # another cluster's change

    mode = fleet(tmp_path, BASE.replace('mode = "logical"', 'mode = "physical"'))
    assert mode.digests("billing")[0] != before.digests("billing")[0]
    assert mode.digests("billing")[1] == before.digests("billing")[1]
    assert mode.digest("orders") == before.digest("orders")

    inherited = fleet(tmp_path, BASE.replace('full = "0 3 * * *"', 'full = "0 4 * * *"'))
    assert all(inherited.digests(n)[1] != before.digests(n)[1] for n in before.names)


def test_daemon_level_keys_are_apart_from_the_clusters(tmp_path: Path) -> None:
    before = fleet(tmp_path, BASE)
    after = fleet(tmp_path, "max_concurrent_jobs = 8\n" + BASE.replace("127.0.0.1:9847", "127.0.0.1:9848"))
    assert [after.digest(n) for n in after.names] == [before.digest(n) for n in before.names]
    old, new = before.daemon_digests(), after.daemon_digests()
    assert sorted(k for k in old if old[k] != new[k]) == [
        "BACKUPD_HTTP__LISTEN",
        "BACKUPD_MAX_CONCURRENT_JOBS",
    ]
    assert "BACKUPD_CATALOG_URL" in old and "BACKUPD_STATE_DIR" in old and "BACKUPD_LOG__LEVEL" in old


def test_a_secret_changes_the_digest_and_is_never_in_clear(tmp_path: Path) -> None:
    before = fleet(tmp_path, BASE)
    rotated = fleet(tmp_path, BASE.replace("orders-s3cret", "orders-n3w"))
    assert rotated.digest("orders") != before.digest("orders")
    assert rotated.digest("billing") == before.digest("billing")
    hashed = json.dumps(_plain(before._settings.for_cluster("orders")))
    assert "orders-s3cret" not in hashed and "sha256" in hashed

    secrets = tmp_path / "creds"
    secrets.mkdir()
    (secrets / "BACKUPD_CLUSTERS__BILLING__DATABASE_URL").write_text("postgresql://backup:c1@billing-db/b\n")
    text = BASE.replace('database_url = "postgresql://backup@billing-db/billing"\n', "")
    first = fleet(tmp_path, text, secrets)
    (secrets / "BACKUPD_CLUSTERS__BILLING__DATABASE_URL").write_text("postgresql://backup:c2@billing-db/b\n")
    assert fleet(tmp_path, text, secrets).digest("billing") != first.digest("billing")  # re-read


def test_the_digest_is_the_same_in_another_process(tmp_path: Path) -> None:
    here = fleet(tmp_path, BASE)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from contentflow_backupd.settings import load_settings\n"
        "from contentflow_backupd.wiring.fleet import Fleet\n"
        "s, f = load_settings(Path(sys.argv[1]), secret_dirs=[Path(sys.argv[2])])\n"
        "fl = Fleet(s, f)\n"
        "print(' '.join(fl.digest(n) for n in fl.names))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BACKUPD_")}
    env["PYTHONHASHSEED"] = "12345"  # a different str hash: the digest must not depend on it
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "backupd.toml"), str(tmp_path / "no-secrets")],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.split()
    assert out == [here.digest(n) for n in here.names]


def test_the_implicit_cluster_has_a_digest(tmp_path: Path) -> None:
    one = fleet(tmp_path, 'repository = "file:///srv/backups"\n')
    assert one.names == ["main"]
    other = fleet(tmp_path, 'repository = "file:///srv/other"\n')
    assert one.digest("main") != other.digest("main")
