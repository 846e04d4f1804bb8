"""The image run the way docs/deployment.md says a sidecar runs: ``podman run`` on the host
network next to a real PostgreSQL, as the image's non-root user, with a read-only root file
system, the state in a volume and every secret a file under /run/secrets (podman secrets).

- physical mode with a local repository on a volume: the scheduled full backup, WAL streamed by
  the daemon's supervised ``wal-stream``, health endpoints and the image's HEALTHCHECK, a
  ``podman stop`` within the grace, a new container on the same volume resuming the schedule
  from the catalog, and a point-in-time restore from what the containers stored;
- logical mode with a repository on moto's S3 server: a scheduled backup, and no secret in
  ``podman inspect``, the environment, the command lines or the logs.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.container.podman import CONTAINER_PREFIX, UID, Container, podman, secrets
from tests.e2e.pitr_helpers import Restored
from tests.support.cli import Cli
from tests.support.moto_server import create_bucket, delete_bucket, s3_client
from tests.support.pg import PgCluster, free_port

pytestmark = [pytest.mark.container, pytest.mark.pg]

PASSPHRASE = "container test passphrase: correct horse battery staple"
STATE = "/var/lib/contentflow-backupd"
QUIET = {
    "BACKUPD_SCHEDULE__INCREMENTAL": "off",
    "BACKUPD_SCHEDULE__RETENTION": "off",
    "BACKUPD_SCHEDULE__VERIFY": "off",
    "BACKUPD_SCHEDULE__RESTORE_TEST": "off",
    "BACKUPD_CHUNKING__AVG_SIZE": str(64 * 1024),
    "BACKUPD_SHUTDOWN_GRACE": "10s",
}


def env_options(env: dict[str, str]) -> list[str]:
    out: list[str] = []
    for name, value in env.items():
        out += ["-e", f"{name}={value}"]
    return out


def sidecar_options(port: int, volume: str, env: dict[str, str]) -> list[str]:
    """docs/deployment.md, "Container": host network, read-only root, the state volume, a stop
    timeout above BACKUPD_SHUTDOWN_GRACE."""
    return [
        "--network", "host",
        "--read-only",
        "--stop-timeout", "90",
        "-v", f"{volume}:{STATE}",
        *env_options({"BACKUPD_HTTP__LISTEN": f"127.0.0.1:{port}", **QUIET, **env}),
    ]  # fmt: skip


@pytest.fixture
def volume() -> Iterator[str]:
    name = f"backupd-test-state-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", name)
    try:
        yield name
    finally:
        podman("volume", "rm", "-f", name, check=False)


def one_off(image: str, options: list[str], *command: str) -> str:
    """``podman run --rm`` of the image with another command (docs: "The same image runs the other
    commands")."""
    return podman("run", "--rm", *options, image, *command).stdout


def no_secret_in(text: str, secret_values: list[str], where: str) -> None:
    for value in secret_values:
        assert value not in text, f"a secret is in {where}"


def assert_runs_as_image_user_read_only(c: Container) -> None:
    status = c.exec("cat", "/proc/1/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(UID)] * 4, uid_line
    assert c.exec("touch", "/opt/contentflow-backupd/x", check=False).returncode != 0
    assert c.exec("touch", f"{STATE}/writable").returncode == 0


def secrets_stay_secret(c: Container, values: list[str]) -> None:
    no_secret_in(json.dumps(c.inspect()), values, "podman inspect")
    no_secret_in(c.exec("env").stdout, values, "the container's environment")
    # every process of the container: environment and command line (pg_receivewal, pg_dump, ...)
    pids = c.exec("sh", "-c", "ls -d /proc/[0-9]* | cut -d/ -f3").stdout.split()
    for pid in pids:
        for what in ("environ", "cmdline"):
            text = c.exec("cat", f"/proc/{pid}/{what}", check=False).stdout
            no_secret_in(text, values, f"/proc/{pid}/{what}")
    no_secret_in(c.logs(), values, "the logs")


def current_mark(pg: PgCluster) -> tuple[str, int]:
    row = pg.execute("select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'),"
                     " (select max(id) from pitr)")[0]  # fmt: skip
    return str(row[0]), int(row[1])


def wal_archived_up_to(c: Container, segment: str) -> bool:
    proc = c.exec("contentflow-backupd", "wal", "verify", "--json", check=False)
    report = json.loads(proc.stdout)
    return any(t["last"] >= segment for t in report.get("timelines", []))


@pytest.fixture
def restore_base() -> Iterator[Path]:
    """A directory the postgres user can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="backupd-ctr-restore-"))
    base.chmod(0o755)
    pw = pwd.getpwnam("postgres")
    os.chown(base, pw.pw_uid, pw.pw_gid)  # the restored server writes its log beside the data
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_physical_sidecar_streams_wal_stops_resumes_and_restores_to_a_time(
    image: str, pg: PgCluster, volume: str, tmp_path: Path, restore_base: Path
) -> None:
    backups = tmp_path / "backups"  # the repository's volume, writable by the image's user
    backups.mkdir()
    os.chown(backups, UID, UID)
    repo = backups / "repo"
    port = free_port()
    env = {
        "BACKUPD_MODE": "physical",
        "BACKUPD_REPOSITORY": "file:///backups/repo",
        "BACKUPD_SCHEDULE__FULL": "every 1h",  # no full backup yet: the first runs at once
        "BACKUPD_SCHEDULE__WAL": "every 3s",
        "BACKUPD_WAL__ARCHIVE_TIMEOUT": "30",
    }
    secret_values = [pg.password, PASSPHRASE]
    pg.execute("create table if not exists pitr (id int primary key)")
    with secrets(
        {"BACKUPD_DATABASE_URL": pg.url("postgres"), "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE}
    ) as sec:
        options = [*sidecar_options(port, volume, env), "-v", f"{backups}:/backups", *sec]
        with Container(image, options, port=port) as c:
            c.wait_for("/readyz 200", lambda: c.get("/readyz")[0] == 200)
            assert c.get("/livez")[0] == 200
            c.wait_for(
                "the scheduled full backup",
                lambda: (c.metric("backupd_backup_runs_total", kind="full", result="success") or 0) >= 1,
                timeout=180,
            )
            assert c.events("wal_stream_supervised"), c.logs()[-3000:]
            c.wait_for("/healthz 200", lambda: c.get("/healthz")[0] == 200)
            hc = podman("healthcheck", "run", c.name, check=False)
            assert hc.returncode == 0, hc.stdout + hc.stderr
            assert_runs_as_image_user_read_only(c)
            secrets_stay_secret(c, secret_values)

            # WAL after the backup, a moment to return to, more WAL; then that WAL streamed
            pg.execute("insert into pitr select generate_series(1, 100)")
            time.sleep(0.5)
            target_time, target_max = current_mark(pg)
            time.sleep(0.5)
            pg.execute("insert into pitr select generate_series(101, 200)")
            segment = pg.execute("select pg_walfile_name(pg_switch_wal())")[0][0]
            c.wait_for(f"{segment} streamed and stored", lambda: wal_archived_up_to(c, segment), timeout=120)
            next_full = c.metric("backupd_scheduler_next_run_timestamp_seconds", job="full")
            assert next_full is not None

            c.stop(grace=90)
            assert c.exit_code() == 0, c.logs()[-3000:]
            assert c.events("daemon_stopped"), c.logs()[-3000:]

        # the catalog on the volume: nothing left running, one full backup
        runs = json.loads(one_off(image, options, "runs", "--json"))
        assert not [r for r in runs if r["status"] == "running"], runs
        assert [r["status"] for r in runs if r["job"] == "full"] == ["succeeded"]

        # a new container on the same volume resumes the schedule from the catalog
        with Container(image, options, port=port) as c2:
            c2.wait_for("/readyz 200", lambda: c2.get("/readyz")[0] == 200)
            c2.wait_for(
                "the schedule restored",
                lambda: c2.metric("backupd_scheduler_next_run_timestamp_seconds", job="full") == next_full,
            )
            c2.wait_for("WAL streaming again", lambda: c2.events("wal_stream_supervised"))
            assert (c2.metric("backupd_backup_runs_total", kind="full", result="success") or 0) == 0
            c2.stop(grace=90)
            assert c2.exit_code() == 0, c2.logs()[-3000:]
        runs = json.loads(one_off(image, options, "runs", "--json"))
        assert [r["status"] for r in runs if r["job"] == "full"] == ["succeeded"], runs

    # point in time: the host's tool restores from the repository the containers wrote, copied
    # to the restore host and given to postgres (its restore_command reads it as that user)
    copy = restore_base / "repo"
    shutil.copytree(repo, copy)
    pw = pwd.getpwnam("postgres")
    for path in [copy, *copy.rglob("*")]:
        os.chown(path, pw.pw_uid, pw.pw_gid)
    host = Cli(
        env={
            "BACKUPD_REPOSITORY": f"file://{copy}",
            "BACKUPD_STATE_DIR": str(tmp_path / "host-state"),
            "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
            "BACKUPD_DATABASE_URL": pg.url("postgres"),
        }
    )
    host.run("catalog", "rebuild", check=True)
    pgdata = restore_base / "restored"
    restored = host.run(
        "restore", "latest", "--pgdata", str(pgdata), "--target-time", target_time,
        "--target-action", "promote", "--owner", "postgres", "--json",
    )  # fmt: skip
    assert restored.returncode == 0, str(restored)
    assert {p.stat().st_uid for p in [pgdata, *pgdata.rglob("*")]} == {pw.pw_uid}
    server = Restored(pgdata, pg).start()
    try:
        server.wait_promoted()
        assert [r[0] for r in server.execute("select id from pitr order by id")] == list(
            range(1, target_max + 1)
        )
    finally:
        server.stop()


def test_logical_sidecar_on_s3_keeps_every_secret_in_files(
    image: str, pg: PgCluster, moto_s3: str, volume: str
) -> None:
    db = pg.create_database()
    pg.execute("create table t (id int primary key, v text)", dbname=db)
    pg.execute("insert into t select g, md5(g::text) from generate_series(1, 2000) g", dbname=db)
    key_id, secret_key = "AKIDCONTAINERTEST", "container-test-secret-" + uuid.uuid4().hex
    client = s3_client(moto_s3, aws_access_key_id=key_id, aws_secret_access_key=secret_key)
    bucket = create_bucket(client)
    port = free_port()
    env = {
        "BACKUPD_REPOSITORY": f"s3://{bucket}/pg/prod",
        "BACKUPD_S3__ENDPOINT_URL": moto_s3,
        "BACKUPD_S3__REGION": "us-east-1",
        "BACKUPD_S3__FORCE_PATH_STYLE": "true",
        "AWS_SHARED_CREDENTIALS_FILE": "/run/secrets/aws-credentials",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "BACKUPD_SCHEDULE__FULL": "every 1h",
        "BACKUPD_SCHEDULE__WAL": "off",
    }
    credentials = f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret_key}\n"
    values = {
        "BACKUPD_DATABASE_URL": pg.url(db),
        "BACKUPD_ENCRYPTION__PASSPHRASE": PASSPHRASE,
        "aws-credentials": credentials,
    }
    try:
        with (
            secrets(values) as sec,
            Container(image, [*sidecar_options(port, volume, env), *sec], port=port) as c,
        ):
            c.wait_for(
                "the scheduled logical backup",
                lambda: (c.metric("backupd_backup_runs_total", kind="full", result="success") or 0) >= 1,
                timeout=180,
            )
            c.wait_for("/healthz 200", lambda: c.get("/healthz")[0] == 200)
            assert c.get("/readyz")[0] == 200 and c.get("/livez")[0] == 200
            keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
            assert any(k.startswith("pg/prod/") for k in keys), keys
            listed = json.loads(c.exec("contentflow-backupd", "list", "--json").stdout)
            assert [b["status"] for b in listed] == ["succeeded"], listed
            assert_runs_as_image_user_read_only(c)
            secrets_stay_secret(c, [pg.password, PASSPHRASE, secret_key])
            c.stop(grace=90)
            assert c.exit_code() == 0, c.logs()[-3000:]
    finally:
        delete_bucket(client, bucket)
        pg.drop_database(db)


@pytest.fixture(autouse=True)
def _no_leftover_containers() -> Iterator[None]:
    yield
    left = podman("ps", "-a", "--filter", f"name={CONTAINER_PREFIX}", "--format", "{{.Names}}").stdout.split()
    for name in left:
        podman("rm", "-f", "-t", "0", name, check=False)
    assert not left, f"containers left behind: {left}"
