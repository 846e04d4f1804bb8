"""pg_dump's output read ahead while a backup starts up (``PgDumpSource.start``): with a real
pg_dump and a real server, an archive read partly ahead and partly straight from the pipe, or
wholly ahead, is the complete archive (pg_restore restores every row of it), and a source that
is started and closed without a dump leaves no pg_dump behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from contentflow_backupd.source.conninfo import ConnInfo
from contentflow_backupd.source.logical import PgDumpSource
from contentflow_backupd.source.pipe import PipeReader
from tests.support.pg import PgCluster

pytestmark = pytest.mark.pg

ROWS = 40_000  # ~10 MB of COPY data


def _reader(source: PgDumpSource) -> PipeReader:
    assert source._started is not None
    return source._started[3]


def _wait_for_read_ahead(reader: PipeReader, at_least: int) -> None:
    deadline = time.monotonic() + 120
    while reader.read_ahead < at_least:
        assert time.monotonic() < deadline, "pg_dump's output was not read ahead"
        time.sleep(0.01)


def _fill(pg: PgCluster, db: str) -> None:
    pg.execute(
        "create table t as select g, repeat(md5(g::text), 8) as v from generate_series(1, %s) g",
        dbname=db,
        params=(ROWS,),
    )


def _restore_and_check(pg: PgCluster, archive: Path) -> None:
    target = pg.create_database()
    try:
        subprocess.run(
            [
                str(pg.bin / "pg_restore"),
                "--no-password",
                "--exit-on-error",
                "-d",
                pg.url(target),
                str(archive),
            ],
            check=True,
            capture_output=True,
        )
        rows = pg.execute("select count(*), sum(g), sum(length(v)) from t", dbname=target)
        assert rows == [(ROWS, ROWS * (ROWS + 1) // 2, ROWS * 256)]
    finally:
        pg.drop_database(target)


@pytest.mark.parametrize("limit", [256 * 1024, 1 << 30], ids=["partly-ahead", "wholly-ahead"])
def test_an_archive_read_ahead_is_whole(pg: PgCluster, pg_db: str, tmp_path: Path, limit: int) -> None:
    _fill(pg, pg_db)
    source = PgDumpSource(ConnInfo.parse(pg.url(pg_db)), bin_dir=pg.bin, prefetch_limit=limit)
    try:
        source.start()
        reader = _reader(source)
        if limit < 1 << 30:
            _wait_for_read_ahead(reader, limit)  # the limit reached: pg_dump waits on the pipe
        else:
            assert reader._thread is not None
            reader._thread.join(timeout=120)  # the whole archive read ahead, EOF seen
            assert reader._eof
        archive = tmp_path / "t.dump"
        with source.dump() as stream, archive.open("wb") as out:
            while data := stream.read(1 << 20):
                out.write(data)
        assert reader.read_ahead <= limit
    finally:
        source.close()
    _restore_and_check(pg, archive)


def test_a_started_source_closed_without_a_dump_stops_pg_dump(pg: PgCluster, pg_db: str) -> None:
    _fill(pg, pg_db)
    source = PgDumpSource(ConnInfo.parse(pg.url(pg_db)), bin_dir=pg.bin, prefetch_limit=64 * 1024)
    source.start()
    assert source._started is not None
    proc = source._started[1]
    _wait_for_read_ahead(_reader(source), 64 * 1024)
    source.close()  # as when the repository or the catalog fails to open
    assert proc.poll() is not None
    assert source._started is None
