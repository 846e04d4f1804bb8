"""The WAL rows of ``bench/physical.py`` alone, in a few minutes: ``archive_command`` and
``restore_command`` per real segment (ours vs pgBackRest's sync ``archive-push``, sync and async
``archive-get``) and the PITR recovery that replays ``--pitr-segments`` segments (from ``pg_ctl
start`` to promotion, ours vs ``archive-get`` async). Same functions, same method and same
installed command as ``physical.py``; no 1 GiB dataset, no backup or restore rows. For work on
the WAL paths; ``make bench`` runs the whole ``physical.py``.

    .venv/bin/python bench/physical_wal.py [--pitr-segments 200] [--pitr-repeat 2]
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import physical as ph
from bench.steps import installed_tool
from contentflow_backupd.demo.cluster import PgCluster


def main(argv: list[str] | None = None) -> int:
    args = ph.parse_args(argv)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started with `&`: see physical.py
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if shutil.which("pgbackrest") is None:
        print(f"NOTE: {ph.NOTE_NO_PGBACKREST}")
    br = shutil.which("pgbackrest") is not None
    base = Path(tempfile.mkdtemp(prefix="backupd-walbench-"))
    base.chmod(0o755)
    ph.chown_pg(base)
    pg = PgCluster(base / "cluster")
    s = ph.Setup(
        base=base,
        pg=pg,
        tool=installed_tool(base),
        passphrase_file=ph.write_pg(base / "passphrase", base64.b64encode(os.urandom(32)) + b"\n"),
        env=ph.base_env(),
    )
    out: dict[str, Any] = {}
    try:
        first = s.new_repo("ours-initial")
        pg.extra_conf = {
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": f"'{s.archive_command(first)}'",
            "max_wal_senders": "10",
            "max_wal_size": "1GB",
        }
        pg.init().start()
        ph.pgbench_init(s, args)
        s.drain(900)
        out["segment_costs"] = ph.segment_costs(s, args, br)
        if args.pitr_segments > 0:
            out["pitr"] = ph.pitr(s, args, br)
            for r in out["pitr"]["runs"]:
                seconds, logged = r["start_to_promoted_seconds"], r["segments_restored_logged"]
                ph.say(f"  {r['tool']}: {seconds:.1f}s, {logged} segments")
    finally:
        for proc in s.procs:
            proc.kill()
        pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
    target = args.output.with_name("physical-wal-latest.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2, default=str) + "\n")
    ph.say(f"results: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
