"""The shipped unit under a real systemd: ``podman run --systemd=always`` of the systemd test image
(tests/container/systemd.Containerfile: Debian bookworm with systemd as PID 1 and the package
installed as docs/deployment.md says), configured as the docs say (env file, passphrase and
database URL as ``LoadCredential=`` credentials, a local repository allowed by a drop-in).

The test drop-in shortens three timings so that the suite does not wait minutes:
``WatchdogSec=10s``, ``RestartSec=2s``, ``TimeoutAbortSec=10s``; everything else is the shipped
unit. Tests run in file order on one container (``--dist loadfile``): readiness first, then
credentials, hardening, a crash, a hung main loop, and the stop.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.container.podman import ROOT, podman, wait_until
from tests.support.pg import PgCluster, free_port

pytestmark = [pytest.mark.container, pytest.mark.pg]

UNIT = "contentflow-backupd"
PASSPHRASE = "systemd test passphrase: correct horse battery staple"
TEST_DROP_IN = """[Service]
# docs/deployment.md: a local repository needs a drop-in
ReadWritePaths=/var/backups/pg
# docs/security.md: the database URL (with its password) as a credential too
LoadCredential=BACKUPD_DATABASE_URL:/etc/contentflow-backupd/database-url
# the test's shorter timings
WatchdogSec=10s
RestartSec=2s
TimeoutAbortSec=10s
"""


@dataclass
class Service:
    name: str
    port: int
    pg: PgCluster
    db: str

    def sh(self, script: str, *, check: bool = True) -> str:
        return podman("exec", self.name, "sh", "-c", script, check=check).stdout

    def show(self, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self) -> list[dict[str, object]]:
        """The unit's log lines as the daemon wrote them (JSON in MESSAGE)."""
        out = self.sh(f"journalctl -u {UNIT} -o json --no-pager")
        lines = []
        for raw in out.splitlines():
            entry = json.loads(raw)
            message = entry.get("MESSAGE")
            if isinstance(message, str) and message.startswith("{"):
                try:
                    lines.append(json.loads(message))
                except ValueError:
                    continue
        return lines

    def systemd_journal(self) -> str:
        return self.sh(f"journalctl -u {UNIT} -o cat --no-pager")

    def runs(self) -> list[dict[str, object]]:
        out = self.sh(
            "runuser -u contentflow-backupd -- env BACKUPD_STATE_DIR=/var/lib/contentflow-backupd"
            " BACKUPD_REPOSITORY=file:///var/backups/pg contentflow-backupd runs --json"
        )
        runs: list[dict[str, object]] = json.loads(out)
        return runs

    def get(self, path: str) -> int:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def wait_active(self, after_restarts: int, timeout: float = 120) -> dict[str, str]:
        def restarted() -> dict[str, str] | None:
            state = self.show("ActiveState", "SubState", "NRestarts", "MainPID")
            if (
                int(state["NRestarts"]) > after_restarts
                and state["ActiveState"] == "active"
                and state["MainPID"] != "0"
            ):
                return state
            return None

        result: dict[str, str] = wait_until(f"{UNIT} restarted and active", restarted, timeout=timeout)
        return result


@pytest.fixture(scope="module")
def service(systemd_image: str, pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = pg.create_database()
    pg.execute("create table t (id int primary key, v text)", dbname=db)
    pg.execute("insert into t select g, md5(g::text) from generate_series(1, 1000) g", dbname=db)
    port = free_port()
    name = f"backupd-test-systemd-{uuid.uuid4().hex[:8]}"
    files = tmp_path_factory.mktemp("systemd")
    env = files / "env"
    env.write_text(
        (ROOT / "systemd" / "contentflow-backupd.env.example").read_text()
        + "\n# the test's settings\n"
        + "BACKUPD_REPOSITORY=file:///var/backups/pg\n"
        + f"BACKUPD_HTTP__LISTEN=127.0.0.1:{port}\n"
        + "BACKUPD_SCHEDULE__FULL=every 1h\nBACKUPD_SCHEDULE__INCREMENTAL=off\n"
        + "BACKUPD_SCHEDULE__RETENTION=off\nBACKUPD_SCHEDULE__VERIFY=off\n"
        + "BACKUPD_SCHEDULE__RESTORE_TEST=off\nBACKUPD_SCHEDULE__WAL=off\nBACKUPD_SHUTDOWN_GRACE=10s\n"
    )
    # the example's placeholders are replaced by the lines above (the last assignment wins)
    text = "\n".join(
        line
        for line in env.read_text().splitlines()
        if not line.startswith(("BACKUPD_REPOSITORY=s3", "BACKUPD_DATABASE_URL="))
    )
    env.write_text(text + "\n")
    (files / "database-url").write_text(pg.url(db) + "\n")
    (files / "passphrase").write_text(PASSPHRASE + "\n")
    (files / "drop-in.conf").write_text(TEST_DROP_IN)
    podman(
        "run",
        "-d",
        "--name",
        name,
        "--systemd=always",
        "--network",
        "host",
        "--stop-timeout",
        "30",
        systemd_image,
    )
    svc = Service(name=name, port=port, pg=pg, db=db)
    try:
        wait_until(
            "systemd running",
            lambda: (
                svc.sh("systemctl is-system-running --wait 2>/dev/null || true").strip()
                in ("running", "degraded")
            ),
            timeout=120,
        )
        for src, dst in (
            ("env", "/tmp/env"),
            ("database-url", "/tmp/database-url"),
            ("passphrase", "/tmp/passphrase"),
            ("drop-in.conf", "/tmp/drop-in.conf"),
        ):
            podman("cp", str(files / src), f"{name}:{dst}")
        # docs/deployment.md, "systemd", step 3 (and the drop-in for a local repository)
        svc.sh(
            "set -e;"
            " install -d -m 0750 -o root -g contentflow-backupd /etc/contentflow-backupd;"
            " install -m 0600 -o root -g root /tmp/passphrase /etc/contentflow-backupd/passphrase;"
            " install -m 0600 -o root -g root /tmp/database-url /etc/contentflow-backupd/database-url;"
            " install -m 0640 -o root -g contentflow-backupd /tmp/env /etc/contentflow-backupd/env;"
            " install -d -m 0750 -o contentflow-backupd -g contentflow-backupd /var/backups/pg;"
            f" install -D -m 0644 /tmp/drop-in.conf /etc/systemd/system/{UNIT}.service.d/test.conf;"
            " rm /tmp/passphrase /tmp/database-url /tmp/env /tmp/drop-in.conf;"
            " systemctl daemon-reload"
        )
        yield svc
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        pg.drop_database(db)


def test_start_waits_for_ready_and_the_journal_has_the_backup(service: Service) -> None:
    # Type=notify: `systemctl start` returns once the daemon sent READY=1
    service.sh(f"systemctl enable --now {UNIT}")
    state = service.show("ActiveState", "SubState", "Type", "StatusText", "WatchdogUSec")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert state["Type"] == "notify"
    assert state["StatusText"].startswith("next: full "), state
    assert state["WatchdogUSec"] == "10s"
    ready = [e for e in service.journal() if e.get("event") == "daemon_ready"]
    assert ready, service.systemd_journal()[-3000:]
    assert service.get("/readyz") == 200 and service.get("/livez") == 200
    completed = wait_until(
        "the scheduled full backup in the journal",
        lambda: [e for e in service.journal() if e.get("event") == "backup_completed"],
        timeout=120,
    )
    assert {"run_id", "job", "backup_id"} <= set(completed[0]), completed[0]
    wait_until("/healthz 200", lambda: service.get("/healthz") == 200)
    journal = service.sh(f"journalctl -u {UNIT} -o verbose --no-pager")
    assert "SYSLOG_IDENTIFIER=contentflow-backupd" in journal


def test_secrets_are_credentials_not_environment(service: Service) -> None:
    pid = service.main_pid()
    creds = service.sh(f"ls /run/credentials/{UNIT}.service").split()
    assert sorted(creds) == ["BACKUPD_DATABASE_URL", "passphrase"]
    environ = service.sh(f"runuser -u contentflow-backupd -- cat /proc/{pid}/environ").replace("\0", "\n")
    assert "CREDENTIALS_DIRECTORY=" in environ
    assert "BACKUPD_ENCRYPTION__PASSPHRASE_FILE=" in environ
    shown = service.sh(f"systemctl show {UNIT}")
    for secret in (PASSPHRASE, service.pg.password):
        assert secret not in environ
        assert secret not in shown
        assert secret not in service.sh(f"journalctl -u {UNIT} -o cat --no-pager")
    # the service user cannot read the originals: only the credential copies
    denied = service.sh(
        "runuser -u contentflow-backupd -- cat /etc/contentflow-backupd/passphrase", check=False
    )
    assert PASSPHRASE not in denied


def test_hardening_score_is_the_one_in_the_docs(service: Service) -> None:
    out = service.sh(f"systemd-analyze security {UNIT} --no-pager")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", out)
    assert m, out[-2000:]
    docs = (ROOT / "docs" / "deployment.md").read_text()
    assert f"`systemd-analyze security contentflow-backupd`: **{m.group(1)} {m.group(2)}**" in docs, m.group(
        0
    )


def test_a_crash_is_restarted(service: Service) -> None:
    before = service.show("NRestarts", "MainPID")
    service.sh(f"kill -KILL {before['MainPID']}")
    after = service.wait_active(int(before["NRestarts"]))
    assert after["MainPID"] != before["MainPID"]
    wait_until("ready again", lambda: service.get("/readyz") == 200)


def test_a_hung_main_loop_is_restarted_by_the_watchdog(service: Service) -> None:
    """SIGSTOP freezes every thread of the daemon: no WATCHDOG=1 reaches systemd any more."""
    wait_until("ready", lambda: service.get("/readyz") == 200)
    before = service.show("NRestarts", "MainPID")
    service.sh(f"kill -STOP {before['MainPID']}")
    after = service.wait_active(int(before["NRestarts"]), timeout=180)
    assert after["MainPID"] != before["MainPID"]
    assert "Watchdog timeout" in service.systemd_journal()
    wait_until("ready again", lambda: service.get("/readyz") == 200)


def test_stop_ends_every_process_and_leaves_no_run_running(service: Service) -> None:
    service.sh(f"systemctl stop {UNIT}")
    state = service.show("ActiveState", "Result", "ExecMainStatus", "MainPID")
    assert state["ActiveState"] == "inactive", state
    assert state["Result"] == "success" and state["ExecMainStatus"] == "0", state
    assert service.sh("pgrep -u contentflow-backupd || true").strip() == ""
    runs = service.runs()
    assert runs and not [r for r in runs if r["status"] == "running"], runs
    assert [e for e in service.journal() if e.get("event") == "daemon_stopped"]


def test_the_unit_file_in_the_image_is_the_shipped_one(service: Service) -> None:
    shipped = (ROOT / "systemd" / "contentflow-backupd.service").read_text()
    assert service.sh(f"cat /etc/systemd/system/{UNIT}.service") == shipped
    assert (
        Path(service.sh("readlink -f /usr/local/bin/contentflow-backupd").strip()).name
        == "contentflow-backupd"
    )
