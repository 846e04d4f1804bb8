"""Named clusters in the settings (``[clusters.<name>]``, ``BACKUPD_CLUSTERS__<NAME>__*``):
inheritance from the top level, the more specific key winning whatever its source, the
encryption secret inherited whole, names, errors, unknown names, credential files per cluster,
and the implicit configuration unchanged. Real TOML files and credential directories in temp
directories; no server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contentflow_backupd.errors import ConfigError
from contentflow_backupd.settings import Settings, load_settings, unknown_names
from contentflow_backupd.wiring.configshow import describe_settings
from contentflow_backupd.wiring.fleet import Fleet


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BACKUPD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def load(tmp_path: Path, text: str, secrets: Path | None = None) -> Settings:
    cfg = tmp_path / "backupd.toml"
    cfg.write_text(text)
    settings, _ = load_settings(cfg, secret_dirs=[secrets or tmp_path / "no-secrets"])
    return settings


TWO = """
repository = "file:///srv/backups"
mode = "physical"
[schedule]
full = "0 3 * * *"
incremental = "0 */4 * * *"
[retention]
full = "14d"
[clusters.orders]
database_url = "postgresql://backup@orders-db/orders"
[clusters.orders.schedule]
incremental = "off"
[clusters.billing]
database_url = "postgresql://backup@billing-db/billing"
repository = "s3://billing-backups/pg"
mode = "logical"
"""


def test_a_cluster_inherits_per_key_and_per_section(tmp_path: Path) -> None:
    s = load(tmp_path, TWO)
    assert s.cluster_names == ["billing", "orders"]
    orders = s.for_cluster("orders")
    assert (orders.cluster, orders.clusters, orders.mode) == ("orders", {}, "physical")
    assert orders.repository == "file:///srv/backups"  # shared: the cluster name is the prefix
    assert orders.database_url is not None
    assert orders.database_url.get_secret_value() == "postgresql://backup@orders-db/orders"
    # per key inside a section: its own incremental, the top level's full, the defaults' wal
    assert (orders.schedule.full, orders.schedule.incremental, orders.schedule.wal) == (
        "0 3 * * *",
        "off",
        "*/15 * * * *",
    )
    assert orders.retention.full == "14d"  # a section it does not name: the top level's whole
    billing = s.for_cluster("billing")
    assert (billing.repository, billing.mode) == ("s3://billing-backups/pg", "logical")
    assert billing.schedule.incremental == "0 */4 * * *"


def test_the_more_specific_key_wins_whatever_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKUPD_SCHEDULE__INCREMENTAL", "0 1 * * *")  # top level, env
    monkeypatch.setenv("BACKUPD_MODE", "logical")
    monkeypatch.setenv("BACKUPD_CLUSTERS__BILLING__SCHEDULE__FULL", "0 5 * * *")  # a cluster, env
    monkeypatch.setenv("BACKUPD_CLUSTERS__ORDERS__MODE", "physical")  # beats the TOML? none there
    s = load(tmp_path, TWO)
    orders = s.for_cluster("orders")
    # [clusters.orders.schedule] incremental in the file beats BACKUPD_SCHEDULE__INCREMENTAL
    assert orders.schedule.incremental == "off"
    assert orders.mode == "physical"  # its own variable beats BACKUPD_MODE
    billing = s.for_cluster("billing")
    assert billing.schedule.incremental == "0 1 * * *"  # not set for billing: the env's top level
    assert billing.schedule.full == "0 5 * * *"  # env and file merged within one cluster
    assert billing.mode == "logical"  # its file key beats the top-level variable


def test_env_and_file_merge_within_a_cluster_env_winning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKUPD_CLUSTERS__BILLING__REPOSITORY", "file:///elsewhere")
    monkeypatch.setenv("BACKUPD_CLUSTERS__NEW__DATABASE_URL", "postgresql://x@new/db")  # env only
    s = load(tmp_path, TWO)
    assert s.cluster_names == ["billing", "new", "orders"]
    assert s.for_cluster("billing").repository == "file:///elsewhere"
    assert s.for_cluster("billing").mode == "logical"  # the file's key is kept beside it
    assert s.for_cluster("new").mode == "physical"


def test_the_encryption_secret_is_inherited_whole(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
repository = "file:///srv/backups"
[encryption]
passphrase_file = "/etc/backupd/passphrase"
kms_region = "eu-west-1"
[clusters.a]
[clusters.b.encryption]
key_file = "/etc/backupd/b.key"
""",
    )
    a, b = s.for_cluster("a").encryption, s.for_cluster("b").encryption
    assert a.passphrase_file == Path("/etc/backupd/passphrase") and a.key_file is None
    # b names its own secret: the top level's passphrase_file is not inherited beside it
    # (EncryptionSettings would refuse two), the other keys of the section still are
    assert (b.key_file, b.passphrase_file, b.kms_region) == (Path("/etc/backupd/b.key"), None, "eu-west-1")


def test_two_secrets_in_one_cluster_are_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(
            tmp_path,
            '[clusters.a.encryption]\npassphrase_file = "/p"\nkey_file = "/k"\n',
        )
    assert "BACKUPD_CLUSTERS__A__ENCRYPTION: set only one of" in str(info.value)


@pytest.mark.parametrize(
    ("env", "text", "want"),
    [
        ({"BACKUPD_CLUSTERS__X__MODE": "bogus"}, "", "BACKUPD_CLUSTERS__X__MODE: Input should be"),
        ({}, "[clusters.x]\nupload_concurrency = 0\n", "BACKUPD_CLUSTERS__X__UPLOAD_CONCURRENCY:"),
        ({}, '[clusters.x.schedule]\nfull = "every day"\n', "BACKUPD_CLUSTERS__X__SCHEDULE__FULL:"),
        ({}, '[clusters.x]\nrepository = "/no/scheme"\n', "BACKUPD_CLUSTERS__X__REPOSITORY:"),
        ({}, '[clusters.x.wal]\nslot = "Bad-Slot"\n', "BACKUPD_CLUSTERS__X__WAL__SLOT:"),
        ({}, '[clusters."Orders"]\n', "'Orders' is not a valid cluster name"),
        ({}, '[clusters."a__b"]\n', "'a__b' is not a valid cluster name"),
        ({}, '[clusters."-a"]\n', "'-a' is not a valid cluster name"),
        ({}, f"[clusters.{'a' * 65}]\n", "is not a valid cluster name"),
        ({}, '[clusters]\nx = "not a table"\n', "BACKUPD_CLUSTERS__X: Input should be"),
    ],
    ids=["env-value", "bound", "schedule", "repository", "slot", "upper", "dunder", "dash", "long", "str"],
)
def test_invalid_cluster_settings_are_errors_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], text: str, want: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert info.value.exit_code == 2
    assert want in str(info.value)


def test_valid_names_pass(tmp_path: Path) -> None:
    s = load(tmp_path, '[clusters."a.b-c_9"]\n[clusters.0x]\n')
    assert s.cluster_names == ["0x", "a.b-c_9"]


@pytest.mark.parametrize(
    ("env", "file_data", "want"),
    [
        ({"BACKUPD_CLUSTERS__X__MODEE": "physical"}, {}, "(did you mean BACKUPD_CLUSTERS__X__MODE?)"),
        ({"BACKUPD_CLUSTERS__X__CATALOG_URL": "sqlite://"}, {}, "BACKUPD_CLUSTERS__X__CATALOG_URL: unknown"),
        ({"BACKUPD_CLUSTERS__X__SCHEDULE__FUL": "off"}, {}, "mean BACKUPD_CLUSTERS__X__SCHEDULE__FULL?"),
        ({}, {"clusters": {"x": {"state_dir": "/s"}}}, "config file key clusters.x.state_dir: unknown"),
        ({}, {"clusters": {"x": {"wal": {"slott": "s"}}}}, "did you mean clusters.x.wal.slot?"),
    ],
)
def test_unknown_names_under_a_cluster_are_reported(
    env: dict[str, str], file_data: dict[str, object], want: str
) -> None:
    problems = unknown_names(env, file_data)
    assert len(problems) == 1 and want in problems[0], problems


def test_known_names_under_a_cluster_are_not_reported() -> None:
    env = {
        "BACKUPD_CLUSTERS__ORDERS__DATABASE_URL": "x",
        "BACKUPD_CLUSTERS__ORDERS__SCHEDULE__FULL": "off",
        "BACKUPD_CLUSTERS__ORDERS__ENCRYPTION__KEY_FILE": "/k",
    }
    data = {"clusters": {"orders": {"mode": "physical", "wal": {"slot": "s"}, "retention": {"full": "1d"}}}}
    assert unknown_names(env, data) == []


def test_credential_files_per_cluster(tmp_path: Path) -> None:
    secrets = tmp_path / "creds"
    secrets.mkdir()
    (secrets / "BACKUPD_ENCRYPTION__PASSPHRASE").write_text("top secret\n")
    (secrets / "BACKUPD_CLUSTERS__BILLING__DATABASE_URL").write_text("postgresql://u:pw@billing/db\n")
    key = secrets / "BACKUPD_CLUSTERS__BILLING__ENCRYPTION__KEY_FILE"
    key.write_bytes(os.urandom(32))
    (secrets / "BACKUPD_CLUSTERS__NOT_CONFIGURED__DATABASE_URL").write_text("postgresql://z/z\n")
    s = load(tmp_path, TWO.replace('database_url = "postgresql://backup@billing-db/billing"\n', ""), secrets)
    billing, orders = s.for_cluster("billing"), s.for_cluster("orders")
    assert billing.database_url is not None
    assert billing.database_url.get_secret_value() == "postgresql://u:pw@billing/db"
    # billing's own key file replaces the top level's passphrase (the group is inherited whole)
    assert (billing.encryption.key_file, billing.encryption.passphrase) == (key, None)
    assert orders.encryption.passphrase is not None
    assert orders.encryption.passphrase.get_secret_value() == "top secret"
    # orders sets its database_url in the file: no credential file is looked up for it
    assert orders.database_url is not None and "orders-db" in orders.database_url.get_secret_value()
    assert s.cluster_names == ["billing", "orders"]  # a credential file alone names no cluster
    sources = s.credential_sources
    assert sources["BACKUPD_CLUSTERS__BILLING__DATABASE_URL"].endswith("BILLING__DATABASE_URL")
    assert "BACKUPD_CLUSTERS__NOT_CONFIGURED__DATABASE_URL" not in sources


def test_a_cluster_credential_yields_to_the_clusters_own_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "creds"
    secrets.mkdir()
    (secrets / "BACKUPD_CLUSTERS__ORDERS__ENCRYPTION__PASSPHRASE").write_text("from file\n")
    monkeypatch.setenv("BACKUPD_CLUSTERS__ORDERS__ENCRYPTION__KEY_FILE", "/etc/k")
    s = load(tmp_path, TWO, secrets)
    enc = s.for_cluster("orders").encryption
    assert (enc.key_file, enc.passphrase) == (Path("/etc/k"), None)


def test_config_show_names_each_clusters_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUPD_CLUSTERS__ORDERS__MODE", "logical")
    cfg = tmp_path / "backupd.toml"
    cfg.write_text(TWO)
    s, data = load_settings(cfg, secret_dirs=[])
    rows = {r["name"]: r for r in describe_settings(s, data)}
    assert rows["BACKUPD_CLUSTERS__ORDERS__MODE"]["source"] == "env"
    assert rows["BACKUPD_CLUSTERS__ORDERS__SCHEDULE__INCREMENTAL"] == {
        "name": "BACKUPD_CLUSTERS__ORDERS__SCHEDULE__INCREMENTAL",
        "value": "off",
        "source": f"file {cfg}",
    }
    assert rows["BACKUPD_CLUSTERS__ORDERS__SCHEDULE__FULL"]["source"] == "inherited"
    assert rows["BACKUPD_CLUSTERS__ORDERS__SCHEDULE__FULL"]["value"] == "0 3 * * *"
    assert rows["BACKUPD_CLUSTERS__BILLING__RETENTION__FULL"]["source"] == "inherited"
    assert "BACKUPD_CLUSTERS" not in rows
    only = {r["name"] for r in describe_settings(s, data, "billing")}
    assert "BACKUPD_CLUSTERS__BILLING__MODE" in only and "BACKUPD_STATE_DIR" in only
    assert not any(n.startswith("BACKUPD_CLUSTERS__ORDERS") for n in only)
    assert "BACKUPD_MODE" not in only  # a per-cluster key is shown as the cluster's


def test_the_implicit_configuration_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUPD_CLUSTER", "prod")
    s = load(tmp_path, 'repository = "file:///srv/backups"\n[schedule]\nfull = "0 1 * * *"\n')
    assert s.clusters == {} and s.cluster_names == ["prod"]
    assert s.for_cluster("prod") is s
    with pytest.raises(ConfigError, match="one cluster, 'prod'"):
        s.for_cluster("main")
    fleet = Fleet(s)
    assert (fleet.names, fleet.implicit, fleet.default) == (["prod"], True, "prod")
    assert fleet.choose(None) == "prod"
    assert fleet.app("prod").cluster == "prod"
    rows = [r["name"] for r in describe_settings(s, {})]
    assert not any(n.startswith("BACKUPD_CLUSTERS") for n in rows)


def test_the_fleet_chooses_a_configured_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(load(tmp_path, TWO))
    assert (fleet.names, fleet.implicit, fleet.default) == (["billing", "orders"], False, None)
    with pytest.raises(ConfigError, match=r"2 are configured \(billing, orders\): choose one") as info:
        fleet.require(None)
    assert info.value.exit_code == 2
    with pytest.raises(ConfigError, match=r"--cluster nope: no such cluster \(configured: billing, orders\)"):
        fleet.choose("nope")
    app = fleet.app("orders")
    assert fleet.app("orders") is app  # cached
    assert (app.cluster, app.mode, app.repository_url) == ("orders", "physical", "file:///srv/backups")
    monkeypatch.setenv("BACKUPD_CLUSTER", "billing")
    assert Fleet(load(tmp_path, TWO)).default == "billing"
    monkeypatch.setenv("BACKUPD_CLUSTER", "main")
    with pytest.raises(ConfigError, match="BACKUPD_CLUSTER: no cluster 'main'"):
        Fleet(load(tmp_path, TWO))


def test_one_named_cluster_needs_no_choice(tmp_path: Path) -> None:
    fleet = Fleet(load(tmp_path, '[clusters.only]\nrepository = "file:///r"\n'))
    assert fleet.default == "only" and fleet.require(None) == "only"


def test_two_physical_clusters_streaming_through_one_slot_of_one_server_are_refused(tmp_path: Path) -> None:
    text = """
mode = "physical"
[clusters.a]
database_url = "postgresql://backup@db1:5433/a"
[clusters.b]
database_url = "postgresql://backup@db1:5433/b"
[clusters.c]
database_url = "postgresql://backup@db2:5433/c"
"""
    with pytest.raises(ConfigError, match="clusters a and b would both stream WAL from db1:5433") as info:
        Fleet(load(tmp_path, text)).check_streams()
    assert info.value.exit_code == 2
    Fleet(load(tmp_path, text + '[clusters.b.wal]\nslot = "b_slot"\n')).check_streams()
    Fleet(load(tmp_path, text + '[clusters.b.wal]\nmethod = "archive_command"\n')).check_streams()
    Fleet(load(tmp_path, text.replace('mode = "physical"', 'mode = "logical"'))).check_streams()


def test_a_named_clusters_restore_command_gets_a_one_cluster_configuration(tmp_path: Path) -> None:
    from contentflow_backupd.wiring.sources import recovery_config

    s = load(tmp_path, TWO + '[encryption]\npassphrase_file = "/etc/backupd/passphrase"\n')
    assert s.config is not None and not s.named_cluster
    orders = s.for_cluster("orders")
    assert orders.named_cluster and orders.config == s.config
    # The file names two clusters: `wal fetch --config FILE` would not know which one.
    recovery = recovery_config(orders)
    assert recovery.config_file is None
    doc = recovery.document
    assert (doc["cluster"], doc["mode"], doc["repository"]) == ("orders", "physical", "file:///srv/backups")
    assert doc["schedule"]["incremental"] == "off" and "clusters" not in doc
    assert recovery.secret_file == Path("/etc/backupd/passphrase")
    implicit = load(tmp_path, 'repository = "file:///r"\n[encryption]\npassphrase_file = "/p"\n')
    assert recovery_config(implicit).config_file == implicit.config  # unchanged: the file as it is


def test_listings_over_every_cluster_report_a_cluster_they_cannot_read(tmp_path: Path) -> None:
    """The installed command, no server: `backup list` and `runs list --all-clusters` list what
    they can and exit 1 naming the cluster whose repository is missing."""
    import subprocess

    from tests.support.cli import command_path

    cfg = tmp_path / "backupd.toml"
    cfg.write_text(
        f'repository = "file://{tmp_path / "repo"}"\nstate_dir = "{tmp_path / "state"}"\n'
        '[encryption]\npassphrase = "unit test passphrase"\n'
        f'[clusters.a]\n[clusters.b]\nrepository = "file://{tmp_path / "repo-b"}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BACKUPD_")}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [command_path(), "--config", str(cfg), *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    assert run("init", "--cluster", "a").returncode == 0
    for listing in (["backup", "list"], ["runs", "list"]):
        res = run(*listing, "--all-clusters", "--json")
        assert (res.returncode, res.stdout.strip()) == (1, "[]"), res
        assert "error: cluster b: no repository at file://" in res.stderr
        assert "cluster a" not in res.stderr
        assert run(*listing, "--cluster", "a", "--json").returncode == 0
        res = run(*listing)
        assert res.returncode == 2 and "2 are configured (a, b): choose one" in res.stderr, res


def test_a_named_clusters_jobs_are_spread_by_default_the_implicit_ones_not(tmp_path: Path) -> None:
    """With named clusters the spread window defaults to 30 minutes (fifty clusters on one cron
    line do not start together); a configuration without them keeps its fire times."""
    from contentflow_backupd.wiring.app import App

    named = Fleet(load(tmp_path, TWO), {}).app("orders").job_specs
    full = next(spec for spec in named if spec.id == "full")
    assert (full.cluster, full.spread_s) == ("orders", 1800.0)
    implicit = App(load(tmp_path, 'repository = "file:///srv/backups"\n[schedule]\nfull = "0 3 * * *"\n'))
    full = next(spec for spec in implicit.job_specs if spec.id == "full")
    assert full.spread_s == 0.0
