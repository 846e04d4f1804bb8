"""``verify --all`` reads every object kind and cross-checks the catalog; ``audit verify``
compares the catalog's chain with the repository's copy; ``verify --since-last`` covers the same
kinds. Through the installed command, on a local repository."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.e2e.helpers import change, seed
from tests.support.cli import Cli
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg


def _repo(cli: Cli) -> Path:
    return Path(cli.env["BACKUPD_REPOSITORY"].removeprefix("file://"))


def _two_backups(cli: Cli, pg: PgCluster, db: str) -> tuple[str, str]:
    seed(pg, db, size_mb=1)
    cli.run("init", check=True)
    full = cli.ok_json("backup", "--kind", "full")
    change(pg, db)
    incr = cli.ok_json("backup", "--kind", "incremental")
    return full["id"], incr["id"]


def _audit_objects(repo: Path) -> list[Path]:
    return sorted((repo / "audit").rglob("*.json"))


def test_a_backup_whose_manifest_is_gone_fails_verify_all_and_the_sweep_naming_it(
    cli: Cli, pg: PgCluster, pg_db: str
) -> None:
    _full, incr = _two_backups(cli, pg, pg_db)
    cli.run("verify", "--all", check=True)
    (_repo(cli) / "main" / "backups" / f"{incr}.json").unlink()

    result = cli.run("verify", "--all")
    assert result.returncode == 1, str(result)
    assert incr in result.stdout and "manifest is gone" in result.stdout
    assert incr in result.stderr
    report = cli.run("verify", "--all", "--json").json()
    assert report["status"] == "faulty"
    assert any(incr in f["problem"] and f["key"] == f"main/backups/{incr}.json" for f in report["faults"])

    sweep = cli.run("verify", "--since-last")
    assert sweep.returncode == 1, str(sweep)
    assert f"main/backups/{incr}.json" in sweep.stderr


def test_a_manifest_the_catalog_does_not_know_is_a_warning(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    _full, incr = _two_backups(cli, pg, pg_db)
    # The catalog forgets a backup (a catalog restored from an older copy, say).
    with sqlite3.connect(tmp_path / "state" / "catalog.sqlite") as db:
        db.execute("delete from backups where id = ?", (incr,))
    foreign = {"id": incr}

    result = cli.run("verify", "--all")
    assert result.returncode == 0, str(result)
    assert (
        "warning" in result.stdout and foreign["id"] in result.stdout and "catalog rebuild" in result.stdout
    )
    report = cli.run("verify", "--all", "--json").json()
    assert report["status"] == "ok"
    assert any(foreign["id"] in w for w in report["repository"]["warnings"])


@pytest.mark.parametrize("damage", ["bit flip", "truncation", "empty", "deletion"])
def test_damage_to_an_audit_object_fails_verify_all_audit_verify_and_the_sweep(
    cli: Cli, pg: PgCluster, pg_db: str, damage: str
) -> None:
    _two_backups(cli, pg, pg_db)
    cli.run("verify", "--since-last", check=True)
    assert cli.run("audit", "verify").returncode == 0
    objects = _audit_objects(_repo(cli))
    assert len(objects) >= 3
    target = objects[1]  # records of the incremental backup: neither the first nor the newest
    original = target.read_bytes()
    if damage == "bit flip":
        target.write_bytes(original[:50] + bytes([original[50] ^ 0x10]) + original[51:])
    elif damage == "truncation":
        target.write_bytes(original[: len(original) // 2])
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        target.unlink()
    key = target.relative_to(_repo(cli)).as_posix()
    first_seq = int(target.name.split("-")[0])

    result = cli.run("verify", "--all")
    assert result.returncode == 1, str(result)
    assert "audit" in result.stdout and f"record {first_seq}" in result.stdout

    audit = cli.run("audit", "verify")
    assert audit.returncode == 1, str(audit)
    assert f"record {first_seq}" in audit.stderr
    if damage != "deletion":
        assert key in audit.stderr
    as_json = cli.run("audit", "verify", "--json")
    assert as_json.returncode == 1 and as_json.json()["ok"] is False
    assert as_json.json()["repository"]["first_difference"]["seq"] == first_seq

    sweep = cli.run("verify", "--since-last")
    assert sweep.returncode == 1, str(sweep)
    assert "audit/" in sweep.stderr

    target.write_bytes(original)  # put back: every check passes again, the record is resolved
    assert cli.run("audit", "verify").returncode == 0
    assert cli.run("verify", "--all").returncode == 0
    swept = cli.run("verify", "--since-last", "--json")
    assert swept.returncode == 0, str(swept)
    assert swept.json()["resolved"] and not swept.json()["open_corrupt"]


def test_audit_verify_names_the_first_record_where_catalog_and_repository_differ(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    _two_backups(cli, pg, pg_db)
    cli.run("verify", "--all", check=True)
    events = cli.ok_json("audit")
    last = events[-1]["seq"]
    # The catalog loses its newest record: its own chain still holds (a prefix), but the
    # repository's copy has the record.
    with sqlite3.connect(tmp_path / "state" / "catalog.sqlite") as db:
        db.execute("delete from audit_events where seq = ?", (last,))
    result = cli.run("audit", "verify")
    assert result.returncode == 1, str(result)
    assert f"record {last} is in the repository's copy but not in the catalog" in result.stderr


@pytest.mark.parametrize(
    ("what", "edit"),
    [
        ("repo.json", lambda doc: {**doc, "created_by": doc["created_by"] + "x"}),
        ("key file", lambda doc: {**doc, "created_at": "2020-01-01T00:00:00Z"}),
        ("keyset", lambda doc: {**doc, "seq": doc["seq"] + 1}),
    ],
)
def test_a_changed_repository_description_or_key_fails_verify_all(
    cli: Cli, pg: PgCluster, pg_db: str, what: str, edit: object
) -> None:
    _two_backups(cli, pg, pg_db)
    cli.run("verify", "--all", check=True)
    repo = _repo(cli)
    path = {
        "repo.json": repo / "repo.json",
        "key file": next((repo / "keys").glob("kek-*.json")),
        "keyset": next((repo / "keys" / "keyset").glob("*.json")),
    }[what]
    doc = json.loads(path.read_text())
    assert callable(edit)
    path.write_text(json.dumps(edit(doc), indent=2))

    result = cli.run("verify", "--all")
    assert result.returncode == 1, str(result)
    assert path.relative_to(repo).as_posix() in result.stdout + result.stderr
    sweep = cli.run("verify", "--since-last")
    assert sweep.returncode == 1, str(sweep)
    assert path.relative_to(repo).as_posix() in sweep.stdout + sweep.stderr


def test_verify_all_lists_every_object_kind_it_read(cli: Cli, pg: PgCluster, pg_db: str) -> None:
    _two_backups(cli, pg, pg_db)
    report = cli.run("verify", "--all", "--json").json()
    kinds = report["repository"]["objects_by_kind"]
    assert {"repo.json", "repo.seal", "key file", "keyset", "audit"} <= set(kinds)
    assert kinds["audit"] >= 2 and report["status"] == "ok"
