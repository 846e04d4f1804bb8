"""Continuous verification end to end: ``verify --since-last`` through the installed command on a
local repository (each command is a new process: the sweep's state lives in the catalog).

The sweep period is shortened by settings, not by waiting: with ``BACKUPD_VERIFY__FULL_SWEEP=3d``
and ``BACKUPD_SCHEDULE__VERIFY=every 1d`` each run reads a third of the objects, so any object is
read within three runs. No assertion is about time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from contentflow_backupd.catalog.sql import open_catalog
from tests.e2e.helpers import change, repository_scope, seed
from tests.e2e.physical import physical_setup
from tests.e2e.pitr_helpers import create_table, switch_and_wait_archived
from tests.support.cli import Cli, Result
from tests.support.faultproxy import FaultProxy
from tests.support.moto_server import s3_client
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

THIRD = {"BACKUPD_VERIFY__FULL_SWEEP": "3d", "BACKUPD_SCHEDULE__VERIFY": "every 1d"}
RUNS = 3  # ceil(full_sweep / interval)
SHORT_RETENTION = {
    "BACKUPD_RETENTION__FULL": "2s",
    "BACKUPD_RETENTION__INCREMENTAL": "2s",
    "BACKUPD_RETENTION__GC_GRACE": "1s",
}


def since_last(cli: Cli) -> tuple[Result, dict[str, Any]]:
    result = cli.run("verify", "--since-last", "--json")
    assert result.returncode in (0, 1), str(result)
    return result, result.json()


def catalog_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'catalog.sqlite'}"


def flip_byte(path: Path) -> bytes:
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return original


def test_first_run_reads_new_backups_then_runs_read_a_rotating_share(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    seed(pg, pg_db, size_mb=2)
    cli.run("init", check=True)
    # One object per chunk (no packs): enough objects for a share in each of the runs below.
    cli.env.update({**THIRD, "BACKUPD_CHUNKING__PACKS": "false"})
    full = cli.ok_json("backup", "--kind", "full")
    change(pg, pg_db)
    incr = cli.ok_json("backup", "--kind", "incremental")

    first, out = since_last(cli)
    assert first.returncode == 0 and out["status"] == "ok"
    assert out["read"]["new_backups"] == [full["id"], incr["id"]]
    # Every chunk of the two backups plus their manifests: all of the cluster, so the sweep had
    # nothing else to read.
    total = out["sweep"]["objects_total"]
    assert total == len([p for p in (tmp_path / "repo" / "main").rglob("*") if p.is_file()])
    assert out["read"]["new_objects"] == out["read"]["referenced_checked"] + 2 == total
    assert out["read"]["sweep_objects"] == 0

    # The next runs: nothing new; a third of the objects each, continuing from the cursor.
    cursors: list[str] = []
    read = 0
    for _ in range(RUNS):
        result, out = since_last(cli)
        assert result.returncode == 0, str(result)
        assert out["read"]["new_backups"] == [] and out["read"]["new_objects"] == 0
        share = out["sweep"]["share"]
        assert share == -(-total // RUNS) and 0 < out["read"]["sweep_objects"] <= share < total
        read += out["read"]["sweep_objects"]
        cursors.append(out["sweep"]["cursor"] or "")
    assert cursors[0] < cursors[1]  # the second run went on where the first stopped
    # Three runs complete a pass over everything but the manifests (read on every run).
    assert out["sweep"]["passes_completed"] == 1 and read >= total - 2
    with open_catalog(catalog_url(tmp_path)) as catalog:
        state = catalog.get_verify_state(repository_scope(cli.env))
    assert state.sweep_cursor == out["sweep"]["cursor"] and state.sweep_objects_total == total

    # A new backup is read in full by the next run.
    change(pg, pg_db)
    incr2 = cli.ok_json("backup", "--kind", "incremental")
    _, out = since_last(cli)
    assert out["read"]["new_backups"] == [incr2["id"]]

    human = cli.run("verify", "--since-last")
    assert human.returncode == 0, str(human)
    assert "sweep: share" in human.stdout and "ok: no corrupt object is open" in human.stdout
    assert cli.run("verify", "--since-last", full["id"]).returncode == 2  # not with backup ids


def test_a_damaged_chunk_is_found_within_a_sweep_period_and_resolved(
    cli: Cli, pg: PgCluster, pg_db: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    seed(pg, pg_db, size_mb=2)
    cli.run("init", check=True)
    cli.env.update(THIRD)
    full1 = cli.ok_json("backup", "--kind", "full")
    # The chunks the full backup uploaded (the incremental adds more to its generation).
    # (Chunks, or packs: not their indexes, which no restore needs: a bad one is a warning.)
    found = (repo / "main" / "chunks" / full1["id"]).rglob("*")
    chunks = sorted(p for p in found if p.is_file() and not p.name.endswith(".index"))
    change(pg, pg_db)
    incr1 = cli.ok_json("backup", "--kind", "incremental")
    assert since_last(cli)[0].returncode == 0  # reads both new backups: all good

    # A flipped byte in one chunk of the full backup: the sweep finds it within RUNS runs.
    damaged = chunks[len(chunks) // 2]
    key = damaged.relative_to(repo).as_posix()
    original = flip_byte(damaged)
    outcomes = [since_last(cli) for _ in range(RUNS)]
    codes = [r.returncode for r, _ in outcomes]
    assert 1 in codes, [o for _, o in outcomes]
    found_at = codes.index(1)
    assert codes[found_at:] == [1] * (RUNS - found_at)  # stays open
    result, out = outcomes[found_at]
    (finding,) = out["found"]
    assert finding["key"] == key and full1["id"] in finding["backup_ids"]
    assert out["status"] == "corrupt" and [r["key"] for r in out["open_corrupt"]] == [key]
    assert key in result.stderr and full1["id"] in result.stderr

    # Repaired (the original bytes are back): the next run re-reads it and resolves the record.
    damaged.write_bytes(original)
    result, out = since_last(cli)
    assert result.returncode == 0, str(result)
    assert [(r["key"], r["resolution"]) for r in out["resolved"]] == [(key, "reads fine again (repaired)")]

    # A missing chunk is found by the next run at once (every manifest's objects are listed).
    gone = chunks[0]
    gone_key = gone.relative_to(repo).as_posix()
    gone.unlink()
    human = cli.run("verify", "--since-last")
    assert human.returncode == 1 and gone_key in human.stdout and "missing" in human.stdout
    assert full1["id"] in human.stderr

    # A new full backup no longer needs it; once retention removed the old backups, the record
    # is resolved.
    cli.env.update(SHORT_RETENTION)
    time.sleep(2.5)
    change(pg, pg_db)
    full2 = cli.ok_json("backup", "--kind", "full")
    assert since_last(cli)[0].returncode == 1  # still needed by full1 and incr1
    cli.run("expire", "--confirm", check=True)
    result, out = since_last(cli)
    assert result.returncode == 0, str(result)
    assert [(r["key"], r["resolution"]) for r in out["resolved"]] == [(gone_key, "no kept backup needs it")]
    assert out["open_corrupt"] == []
    with open_catalog(catalog_url(tmp_path)) as catalog:
        records = catalog.list_corrupt(repository_scope(cli.env), open_only=False)
    assert [(r.key, r.resolution) for r in records] == [
        (key, "reads fine again (repaired)"),
        (gone_key, "no kept backup needs it"),
    ]
    assert full1["id"] in records[1].backup_ids and full2["id"] not in records[1].backup_ids
    assert set(records[1].backup_ids) <= {full1["id"], incr1["id"]}


def test_a_physical_repository_verifies_clean_and_a_damaged_wal_segment_is_found() -> None:
    """Real WAL segments, history-free: every object passes (no false alarm on real segment
    headers); a damaged segment the backup needs to become consistent is found within a sweep
    period."""
    with physical_setup() as setup:
        pg, cli = setup.cluster, setup.cli
        cli.env.update(THIRD)
        create_table(pg)
        switch_and_wait_archived(pg)
        full = cli.ok_json("backup", "--kind", "full")
        switch_and_wait_archived(pg)
        for _ in range(RUNS + 1):
            result, out = since_last(cli)
            assert result.returncode == 0 and out["found"] == [] and out["ignored"] == [], str(result)
        wal_first = cli.ok_json("show", full["id"])["manifest"]["details"]["wal_first"]
        (segment,) = [p for p in (setup.repo / "main" / "wal").rglob(wal_first)]
        flip_byte(segment)
        outcomes = [since_last(cli) for _ in range(RUNS)]
        codes = [r.returncode for r, _ in outcomes]
        assert 1 in codes, [o for _, o in outcomes]
        (finding,) = outcomes[codes.index(1)][1]["found"]
        assert finding["key"] == segment.relative_to(setup.repo).as_posix()
        assert finding["backup_ids"] == [full["id"]] and "failed authentication" in finding["problem"]


@pytest.mark.s3
def test_on_s3_with_failing_requests_no_false_alarm_and_a_missing_chunk_is_found(
    s3_cli: tuple[Cli, str], pg: PgCluster, pg_db: str, moto_s3: str, fault_proxy: FaultProxy
) -> None:
    """Transient S3 errors (30% of requests, retried) are never taken for corruption."""
    cli, bucket = s3_cli
    seed(pg, pg_db, size_mb=2)
    cli.run("init", check=True)
    cli.env.update(THIRD)
    full = cli.ok_json("backup", "--kind", "full")
    cli.env["BACKUPD_S3__ENDPOINT_URL"] = fault_proxy.url
    fault_proxy.error_rate = 0.3
    for _ in range(RUNS + 1):
        result, out = since_last(cli)
        assert result.returncode == 0 and out["found"] == [], str(result)
    fault_proxy.error_rate = 0.0
    client = s3_client(moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")
    prefix = f"backups/prod/main/chunks/{full['id']}/"
    victim = client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"][0]["Key"]
    client.delete_object(Bucket=bucket, Key=victim)
    result, out = since_last(cli)
    assert result.returncode == 1, str(result)
    assert [(f["key"], f["problem"], f["backup_ids"]) for f in out["found"]] == [
        (victim.removeprefix("backups/prod/"), "missing", [full["id"]])
    ]
