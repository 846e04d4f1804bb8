"""What goes wrong: corruption, wrong keys, kill -9, bad input. Each is caught, named, and loses
nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from contentflow_backupd.repository import layout
from contentflow_backupd.repository.crypto import KekSecret
from contentflow_backupd.repository.manifest import Manifest
from contentflow_backupd.repository.repository import Repository
from contentflow_backupd.storage.local import LocalStorage
from tests.conftest import PASSPHRASE
from tests.e2e.helpers import checksums, chunk_files, seed
from tests.support.cli import Cli
from tests.support.pg import PgCluster, free_port

pytestmark = pytest.mark.pg


def _manifest(repo_dir: Path, backup_id: str) -> Manifest:
    repo = Repository.open(LocalStorage(repo_dir), KekSecret("passphrase", PASSPHRASE.encode(), "test"))
    return repo.read_manifest("main", backup_id)


def _middle_chunk(repo_dir: Path, m: Manifest, offset: int = 0) -> Path:
    """An object (a chunk, or the pack holding it) the backup needs: the middle one, or the one
    ``offset`` objects after it."""
    keys = list(dict.fromkeys(layout.object_key("main", m.generation, ref) for ref in m.chunk_refs()))
    return repo_dir / keys[(len(keys) // 2 + offset) % len(keys)]


def _user_tables(pg: PgCluster, db: str) -> int:
    if not pg.execute("select 1 from pg_database where datname = %s", params=(db,)):
        return 0
    rows = pg.execute(
        "select count(*) from pg_tables where schemaname not in ('pg_catalog','information_schema')",
        db,
    )
    return int(rows[0][0])


@pytest.fixture
def backed_up(cli: Cli, pg: PgCluster, pg_db: str) -> dict[str, str]:
    seed(pg, pg_db, size_mb=4)
    cli.run("init", check=True)
    return cli.ok_json("backup", "--kind", "full")  # type: ignore[no-any-return]


@pytest.mark.parametrize("fault", ["flip_byte", "truncate", "delete_chunk", "swap_chunks"])
def test_a_damaged_chunk_is_named_by_verify_and_fails_the_restore(
    fault: str, cli: Cli, pg: PgCluster, backed_up: dict[str, str], tmp_path: Path
) -> None:
    repo_dir = tmp_path / "repo"
    m = _manifest(repo_dir, backed_up["id"])
    victim = _middle_chunk(repo_dir, m)
    expected = {str(victim.relative_to(repo_dir))}
    if fault == "flip_byte":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x40
        victim.write_bytes(bytes(data))
    elif fault == "truncate":
        victim.write_bytes(victim.read_bytes()[:-100])
    elif fault == "delete_chunk":
        victim.unlink()
    else:
        other = _middle_chunk(repo_dir, m, offset=1)
        if other == victim:  # one pack holds the whole dump: swap it with its index (a warning)
            other = victim.with_name(victim.name + ".index")
        else:
            expected.add(str(other.relative_to(repo_dir)))
        a, b = victim.read_bytes(), other.read_bytes()
        victim.write_bytes(b)
        other.write_bytes(a)

    for args in (["verify", backed_up["id"]], ["verify", "--all"], ["verify", "--quick", "--all"]):
        if fault in ("flip_byte", "swap_chunks") and "--quick" in args:
            continue  # same sizes: only a deep verification reads the bytes
        res = cli.run(*args, "--json")
        assert res.returncode == 1, res
        faults = res.json()["faults"]
        assert {f["key"] for f in faults} == expected, res
        assert all(f["backup_id"] == backed_up["id"] for f in faults)
        assert backed_up["id"] in res.stderr and next(iter(expected)) in res.stderr

    target = "restore_target_" + fault
    res = cli.run("restore", backed_up["id"], "--to-database", pg.url(target), "--create", "--json")
    assert res.returncode == 1, res
    assert res.stdout == ""
    assert any(k in res.stderr for k in expected), res.stderr
    # found before the target was touched (missing, wrong size) or while streaming, when
    # pg_restore's single transaction is rolled back: either way no table was restored
    assert _user_tables(pg, target) == 0
    file_res = cli.run("restore", backed_up["id"], "--to-file", str(tmp_path / "out.dump"))
    assert file_res.returncode == 1 and not (tmp_path / "out.dump").exists()
    pg.drop_database(target)


def test_a_swapped_manifest_is_caught(
    cli: Cli, pg: PgCluster, backed_up: dict[str, str], tmp_path: Path
) -> None:
    second = cli.ok_json("backup", "--kind", "full")
    repo_dir = tmp_path / "repo"
    a = repo_dir / layout.manifest_key("main", backed_up["id"])
    b = repo_dir / layout.manifest_key("main", second["id"])
    b.write_bytes(a.read_bytes())
    res = cli.run("verify", "--all", "--json")
    assert res.returncode == 1
    assert [f["key"] for f in res.json()["faults"]] == [str(b.relative_to(repo_dir))]
    restore = cli.run("restore", second["id"], "--to-database", pg.url("swapped_manifest"), "--create")
    assert restore.returncode == 1 and "failed authentication" in restore.stderr
    cli.run("verify", backed_up["id"], check=True)


def test_a_wrong_passphrase_says_the_key_is_wrong(cli: Cli, backed_up: dict[str, str]) -> None:
    for args in (
        ["list"],
        ["verify", "--all"],
        ["restore", "latest", "--to-file", "/tmp/never"],
        ["backup", "--kind", "full"],
    ):
        res = cli.run(*args, env={"BACKUPD_ENCRYPTION__PASSPHRASE": "not the passphrase"})
        if args == ["list"]:
            assert res.returncode == 0  # the catalog needs no key
            continue
        assert res.returncode == 1, res
        assert "key is wrong" in res.stderr
    assert not Path("/tmp/never").exists()


def test_kill_9_during_a_backup_leaves_no_succeeded_backup(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    seed(pg, pg_db, size_mb=24)
    cli.run("init", check=True)
    proc = cli.popen("backup", "--kind", "full", env={"BACKUPD_UPLOAD_CONCURRENCY": "1"})
    deadline = time.monotonic() + 60
    while len(chunk_files(tmp_path / "repo")) < 5 if (tmp_path / "repo" / "main").exists() else True:
        assert proc.poll() is None, "backup finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert cli.ok_json("list") == []
    attempts = cli.ok_json("list", "--all")
    assert [a["status"] for a in attempts] == ["interrupted"]
    assert not list((tmp_path / "repo" / "main").glob("backups/*"))
    good = cli.ok_json("backup", "--kind", "incremental")
    assert good["kind"] == "full" and good["status"] == "succeeded"
    cli.run("verify", "--all", check=True)
    cli.run("restore", "latest", "--to-database", pg.url("after_kill_" + pg_db), "--create", check=True)
    assert checksums(pg, "after_kill_" + pg_db) == checksums(pg, pg_db)
    pg.drop_database("after_kill_" + pg_db)


def test_sigterm_during_a_backup_records_it_interrupted(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    seed(pg, pg_db, size_mb=24)
    cli.run("init", check=True)
    proc = cli.popen("backup", "--kind", "full", env={"BACKUPD_UPLOAD_CONCURRENCY": "1"})
    while not (tmp_path / "repo" / "main").exists() or len(chunk_files(tmp_path / "repo")) < 3:
        assert proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "interrupted" in err
    assert [a["status"] for a in cli.ok_json("list", "--all")] == ["interrupted"]


def test_bad_inputs_give_clear_errors_and_exit_codes(
    cli: Cli, pg: PgCluster, backed_up: dict[str, str], tmp_path: Path
) -> None:
    cases: list[tuple[list[str], dict[str, str], int, str]] = [
        (["show", "20200101T000000Z-full-abcdef"], {}, 1, "not found"),
        (["restore", "no-such-backup", "--to-file", str(tmp_path / "x")], {}, 1, "not found"),
        (["verify", "20200101T000000Z-full-abcdef"], {}, 1, "manifest unreadable"),
        (
            ["backup", "--kind", "full"],
            {"BACKUPD_DATABASE_URL": f"postgresql://postgres:pw@127.0.0.1:{free_port()}/x"},
            1,
            "cannot connect",
        ),
        (["list"], {"BACKUPD_REPOSITORY": "ftp://example/repo"}, 2, "BACKUPD_REPOSITORY"),
        (["verify"], {"BACKUPD_REPOSITORY": "ftp://example/repo"}, 2, "BACKUPD_REPOSITORY"),
        (["verify"], {"BACKUPD_REPOSITORY": "file://relative/path"}, 2, "BACKUPD_REPOSITORY"),
        (["verify"], {"BACKUPD_ENCRYPTION__PASSPHRASE": ""}, 2, "BACKUPD_ENCRYPTION__PASSPHRASE"),
        (
            ["verify"],
            {
                "BACKUPD_ENCRYPTION__PASSPHRASE": "",
                "BACKUPD_ENCRYPTION__KEY_FILE": "/nonexistent/key",
            },
            2,
            "does not exist",
        ),
        (
            ["backup", "--kind", "full"],
            {"BACKUPD_UPLOAD_CONCURRENCY": "lots"},
            2,
            "BACKUPD_UPLOAD_CONCURRENCY",
        ),
        (["backup", "--kind", "sometimes"], {}, 2, "invalid choice"),
        (["init"], {}, 1, "already holds a repository"),
        (["verify"], {"BACKUPD_REPOSITORY": f"file://{tmp_path / 'empty'}"}, 1, "init"),
    ]
    for args, env, code, text in cases:
        env = dict(env)
        if env.get("BACKUPD_ENCRYPTION__PASSPHRASE") == "" and "BACKUPD_ENCRYPTION__KEY_FILE" not in env:
            env = {"BACKUPD_ENCRYPTION__PASSPHRASE": ""}
        run_env = cli.full_env(env)
        if env.get("BACKUPD_ENCRYPTION__PASSPHRASE") == "":
            run_env.pop("BACKUPD_ENCRYPTION__PASSPHRASE")
        import subprocess

        from tests.support.cli import command_path

        proc = subprocess.run([command_path(), *args], capture_output=True, text=True, env=run_env)
        assert proc.returncode == code, (args, env, proc.stdout, proc.stderr)
        assert text in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
