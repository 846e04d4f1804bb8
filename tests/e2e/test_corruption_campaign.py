"""A corruption campaign: random damage to every object kind of a repository, one mutation at a
time, each followed by ``verify --all`` and a restore.

The repository (local storage) holds logical and physical backups, the WAL archive of two
timelines (so ``.history`` files), two key-encryption keys, the keyset, ``repo.json``, its seal
and the audit trail. It is built once; between mutations every changed file of the repository and
the catalog is put back. Verify and restore run in-process through the same functions the
commands call (``verify --all`` through its command function, on settings loaded from the same
configuration file); a sample also runs the installed command.

Required: no restore exits 0 with data that differs from the original (a logical backup's pg_dump
archive byte for byte, a physical data directory file by file, every WAL file the archive served),
and every mutation of an object that a kept backup, the WAL chain, a key or the audit trail needs
is detected by ``verify --all`` (exit non-zero). The counts per kind are printed (run pytest with
``-s``); ``CAMPAIGN_SEED`` and ``CAMPAIGN_MUTATIONS`` reproduce or widen a run.
(Not ``BACKUPD_*`` names: the PostgreSQL server the test starts inherits the environment, and
its ``archive_command`` refuses an unknown ``BACKUPD_*`` setting.)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contentflow_backupd.cli.parser import build_parser
from contentflow_backupd.errors import BackupdError
from contentflow_backupd.observability.logging import configure_logging
from contentflow_backupd.ops.restore.logical import restore_to_file
from contentflow_backupd.ops.restore.physical import PhysicalRestoreOptions, restore_physical
from contentflow_backupd.ops.restore.target import RecoveryTarget
from contentflow_backupd.repository.walarchive import WalArchive
from contentflow_backupd.settings import Settings, load_settings
from contentflow_backupd.source.drivers import PgDrivers
from contentflow_backupd.wal import classify
from contentflow_backupd.wiring import App
from tests.e2e import helpers
from tests.e2e.physical import PhysicalSetup, physical_setup
from tests.e2e.pitr_helpers import Restored, create_table, switch_and_wait_archived
from tests.support.cli import Cli

pytestmark = pytest.mark.pg

MUTATIONS = int(os.environ.get("CAMPAIGN_MUTATIONS", "520"))
CLI_SAMPLE_EVERY = 50
PHYSICAL_RESTORE_EVERY = 10
INTERNAL_ERROR = -1
"""verify_all's code for an exception that is no BackupdError (the command: "internal error")."""
OPS = ("bit flip", "truncation", "empty", "deletion", "swap", "replay")
RECOVERY_FILES = {"postgresql.auto.conf", "recovery.signal", "standby.signal"}


def kind_of(key: str) -> str:
    if key == "repo.json":
        return "repo.json"
    if key == "repo.seal":
        return "repo.seal"
    if key.startswith("keys/keyset/"):
        return "keyset"
    if key.startswith("keys/used/"):
        return "key use mark"
    if key.startswith("keys/"):
        return "key file"
    if key.startswith("audit/"):
        return "audit"
    rest = key.split("/", 1)[1]
    if rest.startswith("backups/"):
        return "manifest"
    if rest.startswith("chunks/"):
        return "pack index" if key.endswith(".index") else "chunk"
    if rest == "identity.json":
        return "identity.json"
    if rest.startswith("wal/"):
        return {"history": ".history", "backup": "WAL .backup", "partial": "WAL .partial"}.get(
            str(classify(key.rsplit("/", 1)[-1])), "WAL"
        )
    return "other"


@dataclass
class FileState:
    data: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int


def snapshot(root: Path) -> dict[str, FileState]:
    out: dict[str, FileState] = {}
    for path in root.rglob("*"):
        if path.is_file():
            st = path.stat()
            out[path.relative_to(root).as_posix()] = FileState(
                path.read_bytes(), st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns
            )
    return out


def put_back(root: Path, snap: dict[str, FileState]) -> None:
    """Make ``root`` hold exactly ``snap`` again (changed, added and removed files)."""
    seen: set[str] = set()
    for path in list(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        seen.add(rel)
        want = snap.get(rel)
        if want is None:
            path.unlink()
            continue
        st = path.stat()
        if st.st_mtime_ns != want.mtime_ns or st.st_size != len(want.data):
            _write(path, want)
    for rel in snap.keys() - seen:
        _write(root / rel, snap[rel])


def _write(path: Path, state: FileState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(state.data)
    os.chmod(path, state.mode)
    if os.geteuid() == 0:
        os.chown(path, state.uid, state.gid)
    os.utime(path, ns=(state.mtime_ns, state.mtime_ns))


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p.name not in RECOVERY_FILES
    }


@dataclass
class World:
    setup: PhysicalSetup
    settings: Settings
    place: Path
    """Where the campaign's copy of the repository, state directory and configuration live."""
    repo_snap: dict[str, FileState]
    state_snap: dict[str, FileState]
    logical: dict[str, bytes]
    """Logical backup id -> its pg_dump archive."""
    physical: dict[str, dict[str, str]]
    """Physical backup id -> file digests of its restored data directory."""
    wal: dict[str, bytes]
    """WAL file name -> its content."""
    oldest_wal_needed: str
    """The oldest physical backup's first WAL segment."""

    @property
    def repo_dir(self) -> Path:
        return self.place / "repo"

    @property
    def state_dir(self) -> Path:
        return self.place / "state"

    @property
    def config(self) -> Path:
        return self.place / "campaign.toml"

    def reset(self) -> None:
        put_back(self.repo_dir, self.repo_snap)
        put_back(self.state_dir, self.state_snap)


def _build(setup: PhysicalSetup) -> None:
    pg, cli = setup.cluster, setup.cli
    create_table(pg)
    app = pg.create_database("app")
    helpers.seed(pg, app, size_mb=1)
    logical = Cli(env={**cli.env, "BACKUPD_DATABASE_URL": pg.url(app)}, user=cli.user)
    logical.ok_json("backup", "--kind", "full", "--mode", "logical")
    helpers.change(pg, app, fraction=0.05)
    logical.ok_json("backup", "--kind", "incremental", "--mode", "logical")
    full = cli.ok_json("backup", "--kind", "full")
    helpers.change(pg, app, fraction=0.05)
    switch_and_wait_archived(pg)
    incremental = cli.ok_json("backup", "--kind", "incremental")
    assert incremental["parent_id"] == full["id"]
    helpers.change(pg, app, fraction=0.05)
    switch_and_wait_archived(pg)
    # A second timeline: restore the newest backup, promote it, let it archive (history file).
    pgdata = setup.base / "promoted"
    cli.ok_json("restore", "latest", "--pgdata", str(pgdata), "--keep-archiving")
    pg.stop()
    server = Restored(pgdata, pg).start()
    try:
        server.wait_promoted()
        switch_and_wait_archived(server)
    finally:
        server.stop()
    # A second key-encryption key: two key files (swaps, replays) and one this process cannot open.
    keyfile = setup.base / "recovery.key"
    keyfile.write_bytes(os.urandom(32))
    os.chmod(keyfile, 0o644)
    cli.ok_json("keys", "add", "--key-file", str(keyfile))
    verified = cli.run("verify", "--all")
    assert verified.returncode == 0, str(verified)


# -- the operations under test, in-process -------------------------------------------------------
def verify_all(settings: Settings, config: Path) -> tuple[int, str]:
    args = build_parser().parse_args(["--config", str(config), "verify", "--all"])
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), App(settings) as app:
            return int(args.func(args, app)), out.getvalue()
    except BackupdError as exc:
        return exc.exit_code, out.getvalue() + str(exc)
    except Exception as exc:
        return INTERNAL_ERROR, out.getvalue() + f"internal error: {type(exc).__name__}: {exc}"


def restore_logical(settings: Settings, backup_id: str, into: Path) -> bytes:
    repo = App(settings).repository()
    path = into / "dump"
    restore_to_file(repo, settings.cluster, backup_id, path, concurrency=2)
    return path.read_bytes()


def restore_physically(
    settings: Settings, backup_id: str, into: Path, names: list[str]
) -> tuple[dict[str, str], dict[str, bytes]]:
    """The data directory's digests, and every WAL file the archive serves (a file it cannot
    serve is left out: PostgreSQL's restore_command then ends or stops recovery)."""
    repo = App(settings).repository()
    archive = WalArchive(repo, settings.cluster)
    opts = PhysicalRestoreOptions(
        cluster=settings.cluster,
        backup=backup_id,
        pgdata=into / "pgdata",
        target=RecoveryTarget(),
        tool=App(settings).self_command(),
        recovery=App(settings).recovery_config(),
        concurrency=2,
    )
    restore_physical(repo, archive, opts, pg=PgDrivers())
    served: dict[str, bytes] = {}
    for name in names:
        with contextlib.suppress(BackupdError):
            served[name] = archive.fetch(name)
    return tree_digest(into / "pgdata"), served


def scratch_root() -> str | None:
    """Restores go to a memory file system when there is one (no fsync cost per file)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with physical_setup() as setup:
        _build(setup)
        # The campaign opens the repository with the key file (the passphrase key stays one this
        # process cannot open: checked against the seal only), two threads as on 2 cores.
        # The repository and the state directory are copied to a memory file system when there
        # is one: the campaign puts files back thousands of times.
        place = Path(tempfile.mkdtemp(dir=scratch_root(), prefix="backupd-campaign-"))
        shutil.copytree(setup.repo, place / "repo", symlinks=True)
        shutil.copytree(setup.base / "state", place / "state", symlinks=True)
        text = setup.config.read_text()
        text = text.replace(f"file://{setup.repo}", f"file://{place / 'repo'}")
        text = text.replace(str(setup.base / "state"), str(place / "state"))
        head, _, tail = text.partition("[encryption]")
        secret_line = next(line for line in tail.splitlines() if line.startswith("passphrase_file"))
        config = place / "campaign.toml"
        config.write_text(
            "upload_concurrency = 2\n"
            + head
            + "[encryption]"
            + tail.replace(secret_line, f'key_file = "{setup.base / "recovery.key"}"')
        )
        settings, _ = load_settings(config)
        configure_logging(None, "error")
        repo = App(settings).repository()
        ids = list(repo.iter_backup_ids(settings.cluster))
        manifests = {b: repo.read_manifest(settings.cluster, b) for b in ids}
        archive = WalArchive(repo, settings.cluster)
        wal = {name: archive.fetch(name) for name in archive.names()}
        logical: dict[str, bytes] = {}
        physical: dict[str, dict[str, str]] = {}
        with tempfile.TemporaryDirectory(dir=scratch_root()) as tmp:
            for b, m in manifests.items():
                into = Path(tempfile.mkdtemp(dir=tmp))
                if m.mode == "logical":
                    logical[b] = restore_logical(settings, b, into)
                else:
                    physical[b], served = restore_physically(settings, b, into, list(wal))
                    assert served == wal
        try:
            yield World(
                setup,
                settings,
                place,
                snapshot(place / "repo"),
                snapshot(place / "state"),
                logical,
                physical,
                wal,
                min(str(m.details["wal_first"]) for m in manifests.values() if m.mode == "physical"),
            )
        finally:
            shutil.rmtree(place, ignore_errors=True)


def _mutate(rng: random.Random, root: Path, key: str, op: str, same_kind: list[str]) -> str:
    """Apply ``op`` to ``key``; returns a description. ``same_kind``: other keys of its kind."""
    path = root / key
    data = path.read_bytes()
    if op == "bit flip" and data:
        at = rng.randrange(len(data))
        bit = 1 << rng.randrange(8)
        path.write_bytes(data[:at] + bytes([data[at] ^ bit]) + data[at + 1 :])
        return f"flipped bit {bit:#04x} of byte {at}/{len(data)}"
    if op == "truncation" and len(data) > 1:
        n = rng.randrange(1, len(data))
        path.write_bytes(data[:n])
        return f"truncated to {n}/{len(data)} bytes"
    if op == "empty":
        path.write_bytes(b"")
        return "emptied"
    if op == "deletion":
        path.unlink()
        return "deleted"
    other = rng.choice(same_kind)
    other_data = (root / other).read_bytes()
    if op == "swap":
        path.write_bytes(other_data)
        (root / other).write_bytes(data)
        return f"swapped with {other}"
    older, newer = sorted([key, other])
    (root / newer).write_bytes((root / older).read_bytes())
    return f"{older} replayed as {newer}"


def _needed(w: World, kind: str, key: str, op: str) -> bool:
    """Whether a kept backup, the WAL chain, a key or the audit trail needs the object as it was
    (so that its mutation must be detected)."""
    if kind == "key use mark":
        return False  # a key's last-use time: descriptive, nothing reads it
    if kind == "pack index":
        # Only the dedup of a later backup reads it (a bad one: that backup stores the pack's
        # chunks again); verify warns about it (docs/verification.md). No restore reads it.
        return False
    if kind == "repo.seal" and op == "deletion":
        return False  # re-made from the current files, with a warning (docs/verification.md)
    if kind in ("WAL .backup", "WAL .partial") and op == "deletion":
        # A restore reads backup_label, never the archived .backup file; a timeline's .partial
        # segment is copied into the first segment of the timeline that follows it.
        return False
    name = key.rsplit("/", 1)[-1]
    if kind in ("WAL", "WAL .backup", "WAL .partial") and name[:24] < w.oldest_wal_needed:
        return False  # older than every physical backup's start: no backup needs it (retention's rule)
    if kind == "WAL" and op == "deletion":
        # The newest segment of the newest timeline: gone looks like not yet archived
        # (documented). The newest of an older timeline is needed up to its switch point.
        return name != max(n for n in w.wal if classify(n) == "segment")
    return True


def test_corruption_campaign(world: World) -> None:
    seed = int(os.environ.get("CAMPAIGN_SEED", str(random.SystemRandom().randrange(2**32))))
    rng = random.Random(seed)
    print(f"\ncorruption campaign: seed {seed} (CAMPAIGN_SEED={seed} reproduces it)")
    w = world
    config = w.config
    keys = sorted(w.repo_snap)
    by_kind: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        by_kind[kind_of(key)].append(key)
    kinds = sorted(by_kind)
    for wanted in (
        "repo.json",
        "repo.seal",
        "key file",
        "keyset",
        "manifest",
        "chunk",
        "WAL",
        ".history",
        "identity.json",
        "audit",
    ):
        assert wanted in by_kind, f"the repository holds no {wanted}: {kinds}"
    cli = Cli(env={"BACKUPD_CONFIG": str(config)})
    stats: dict[str, Counter[str]] = defaultdict(Counter)
    missed: list[str] = []
    wrong: list[str] = []
    cli_disagreed: list[str] = []
    internal: list[str] = []
    logical, physical = sorted(w.logical), sorted(w.physical)
    work = Path(tempfile.mkdtemp(dir=scratch_root(), prefix="backupd-campaign-"))
    try:
        for i in range(MUTATIONS):
            kind = kinds[i % len(kinds)]
            key = rng.choice(by_kind[kind])
            others = [k for k in by_kind[kind] if k != key]
            op = rng.choice([o for o in OPS if others or o not in ("swap", "replay")])
            what = _mutate(rng, w.repo_dir, key, op, others)
            label = f"#{i} {op} of {key} ({what})"
            s = stats[kind]
            s["mutations"] += 1
            rc, output = verify_all(w.settings, config)
            if rc == INTERNAL_ERROR:
                internal.append(f"{label}: verify --all: {output[-500:]}")
            detected = rc != 0
            s["detected"] += detected
            if _needed(w, kind, key, op):
                s["needed"] += 1
                if not detected:
                    missed.append(f"{label}: verify --all exit 0\n{output[-2000:]}")
            if i % CLI_SAMPLE_EVERY == 0:
                s["cli sample"] += 1
                # A mutation of the same object, the same way, for the installed command (the
                # in-process run wrote audit records of its own: start again from the snapshot).
                w.reset()
                _mutate(random.Random(f"{seed}-{i}"), w.repo_dir, key, op, others)
                result = cli.run("verify", "--all")
                if (result.returncode != 0) != (verify_all(w.settings, config)[0] != 0):
                    cli_disagreed.append(f"{label}: command exit {result.returncode}")
            # A restore: a logical backup every time, a physical one (data directory and every
            # WAL file) for one mutation in PHYSICAL_RESTORE_EVERY.
            backup = rng.choice(physical if i % PHYSICAL_RESTORE_EVERY == 0 else logical)
            into = Path(tempfile.mkdtemp(dir=work))
            s["restores attempted"] += 1
            try:
                if backup in w.logical:
                    dump = restore_logical(w.settings, backup, into)
                    good = dump == w.logical[backup]
                else:
                    tree, served = restore_physically(w.settings, backup, into, list(w.wal))
                    good = tree == w.physical[backup] and all(w.wal[n] == d for n, d in served.items())
            except BackupdError:
                s["restores refused"] += 1
            except Exception as exc:
                s["restores refused"] += 1
                internal.append(f"{label}: restore of {backup}: {type(exc).__name__}: {exc}")
            else:
                if good:
                    s["restores succeeded correct"] += 1
                else:
                    wrong.append(f"{label}: restore of {backup} succeeded with wrong data")
            shutil.rmtree(into, ignore_errors=True)
            w.reset()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        w.reset()
    columns = (
        "mutations",
        "needed",
        "detected",
        "cli sample",
        "restores attempted",
        "restores refused",
        "restores succeeded correct",
    )
    print(f"{'kind':<15}" + "".join(f"{c:>14}" for c in columns))
    for kind in kinds:
        print(f"{kind:<15}" + "".join(f"{stats[kind][c]:>14}" for c in columns))
    total = Counter[str]()
    for s in stats.values():
        total.update(s)
    print(f"{'total':<15}" + "".join(f"{total[c]:>14}" for c in columns))
    print(
        f"wrong restores: {len(wrong)}; needed mutations verify missed: {len(missed)}; internal errors: "
        f"{len(internal)}; seed {seed}"
    )
    assert total["mutations"] >= 500
    assert not wrong, "\n".join(wrong[:10])
    assert not missed, "\n".join(missed[:5])
    assert not cli_disagreed, "\n".join(cli_disagreed)
    assert not internal, "internal errors (not a clear error naming the object):\n" + "\n".join(internal[:10])
