"""Pure rules of ``migrate batch`` (no database, no catalog): the ``:lo``/``:hi`` statement
template, table names, the job id, the checkpoint's shape, what to do with a batch left in
flight, the throttle decision and the progress line. ``migrate/batch.py`` runs them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from contentflow_backupd.errors import UsageError
from contentflow_backupd.source.batch_db import KeyValue, SqlTemplate
from contentflow_backupd.sqltext import end_of_block_comment, end_of_quoted
from contentflow_backupd.wal import classify, parse_segment

PLACEHOLDERS = ("lo", "hi")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$]")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")
# ":hi IS NULL", ":hi::uuid IS NULL", "(:hi) IS NULL", on the skeleton (strings and comments blanked)
_HI_IS_NULL = re.compile(r":hi(?![A-Za-z0-9_$])(?:\s*::\s*[A-Za-z_][\w .\"]*?)?[\s)]*is\s+null", re.I)


@dataclass(frozen=True)
class ParsedStatement:
    template: SqlTemplate
    handles_null_hi: bool
    """The statement tests ``:hi IS NULL`` (needed for keys that are not integers, see
    :func:`check_key_support`)."""


def parse_statement(text: str) -> ParsedStatement:
    """Split the user's SQL at its ``:lo`` / ``:hi`` placeholders (outside string literals,
    quoted identifiers, dollar quotes and comments; ``::type`` casts are not placeholders).

    ``UsageError`` when either placeholder is missing, when the text holds more than one
    statement (a trailing ``;`` is dropped) or when it is empty."""
    chunks: list[str] = []
    params: list[str] = []
    skeleton: list[str] = []
    start = i = 0
    n = len(text)
    end_of_statement: int | None = None
    while i < n:
        c = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if c == "'":
            escapes = i > 0 and text[i - 1] in "eE" and (i < 2 or not _IDENT_CHAR.match(text[i - 2]))
            j = end_of_quoted(text, i, "'", backslash=escapes)
        elif c == '"':
            j = end_of_quoted(text, i, '"', backslash=False)
        elif c == "-" and nxt == "-":
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif c == "/" and nxt == "*":
            j = end_of_block_comment(text, i)
        elif (
            c == "$" and (m := _DOLLAR_TAG.match(text, i)) and not (i > 0 and _IDENT_CHAR.match(text[i - 1]))
        ):
            close = text.find(m.group(0), m.end())
            j = n if close < 0 else close + len(m.group(0))
        elif c == ":" and nxt != ":" and (i == 0 or text[i - 1] != ":"):
            name = next((p for p in PLACEHOLDERS if text.startswith(p, i + 1)), None)
            after = i + 1 + len(name or "")
            if name and not (after < n and _IDENT_CHAR.match(text[after])):
                if end_of_statement is not None:
                    raise _more_than_one()
                chunks.append(text[start:i])
                params.append(name)
                skeleton.append(text[i:after])
                start = i = after
                continue
            j = i + 1
        elif c == ";":
            if end_of_statement is None:
                end_of_statement = i
            j = i + 1
        else:
            if end_of_statement is not None and not c.isspace():
                raise _more_than_one()
            skeleton.append(c)
            i += 1
            continue
        if end_of_statement is not None and c in "'\"$":
            raise _more_than_one()
        skeleton.append(" " * (j - i) if c not in ":;" else text[i:j])
        i = j
    last = text[start:end_of_statement] if end_of_statement is not None else text[start:]
    chunks.append(last)
    if not "".join(chunks).strip() and not params:
        raise UsageError("the SQL file is empty", hint="write one statement using :lo and :hi")
    missing = [p for p in PLACEHOLDERS if p not in params]
    if missing:
        names = " and ".join(":" + p for p in missing)
        raise UsageError(
            f"the SQL has no {names} placeholder",
            hint="the statement must restrict itself to one batch of keys, e.g. "
            "UPDATE post SET score = score + 1 WHERE id >= :lo AND id < :hi",
        )
    return ParsedStatement(
        SqlTemplate(tuple(chunks), tuple(params)), bool(_HI_IS_NULL.search("".join(skeleton)))
    )


def _more_than_one() -> UsageError:
    return UsageError(
        "the SQL file holds more than one statement",
        hint="migrate batch runs one statement per batch; run separate data changes separately",
    )


def check_key_support(statement: ParsedStatement, *, integer_key: bool, key: str) -> None:
    """The last batch of an integer key binds ``:hi`` to max(key) + 1; any other orderable key
    (text, uuid, timestamps, numeric...) has no such value, so its last batch binds ``:hi`` to
    NULL and the statement must say what that means. ``UsageError`` when it does not."""
    if integer_key or statement.handles_null_hi:
        return
    raise UsageError(
        f"the key column {key!r} is not an integer: the last batch binds :hi to NULL, and the SQL "
        "does not test ':hi IS NULL'",
        hint=f"write the range as {key} >= :lo AND (:hi IS NULL OR {key} < :hi)",
    )


def parse_table_name(value: str) -> tuple[str | None, str]:
    """``table`` or ``schema.table`` -> (schema, table). Names are exact (case-sensitive, as
    stored in the catalog: Prisma's ``Post`` is ``Post``); a part may be double-quoted to hold a
    dot. ``UsageError`` for anything else."""
    parts: list[str] = []
    i, n, current = 0, len(value), ""
    while i < n:
        c = value[i]
        if c == '"' and not current:
            j = end_of_quoted(value, i, '"', backslash=False)
            if j > n or value[j - 1] != '"' or j - i < 3:
                raise UsageError(f"--table {value!r}: unbalanced or empty quotes")
            current = value[i + 1 : j - 1].replace('""', '"')
            i = j
            if i < n and value[i] != ".":
                raise UsageError(f"--table {value!r}: unexpected text after a quoted name")
            continue
        if c == ".":
            parts.append(current)
            current, i = "", i + 1
            continue
        current += c
        i += 1
    parts.append(current)
    if len(parts) > 2 or any(not p or "\x00" in p or len(p.encode()) > 63 for p in parts):
        raise UsageError(
            f"--table {value!r} is not a table name",
            hint='use table or schema.table (exact names, e.g. Post or public."Post")',
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def check_column_name(value: str) -> str:
    if not value or "\x00" in value or len(value.encode()) > 63:
        raise UsageError(f"--key {value!r} is not a column name")
    return value


def sql_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def job_id(cluster: str, database: str, table: str, key: str, sql_hash: str) -> str:
    """The checkpoint id: the same command on the same database resumes the same job."""
    digest = hashlib.sha256("\x00".join([cluster, database, table, key, sql_hash]).encode())
    return "batch-" + digest.hexdigest()[:32]


def advisory_lock_key(job: str) -> int:
    """A signed 32-bit number for ``pg_try_advisory_lock(BATCH_LOCK_CLASS, key)``."""
    return int.from_bytes(hashlib.sha256(job.encode()).digest()[:4], "big", signed=True)


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.I)


def parse_bytes(value: str) -> int:
    """``1048576``, ``512kB``, ``16MB``, ``1GiB`` (1024-based, as PostgreSQL reads sizes)."""
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size: use bytes or a number with kB, MB or GB")
    unit = m.group(2).lower()
    return int(m.group(1)) * (1024 ** ("kmgt".index(unit) + 1) if unit else 1)


# -- the checkpoint ---------------------------------------------------------------------------


@dataclass
class InFlight:
    """The batch whose COMMIT was (or was about to be) sent: its fate is the transaction's."""

    lo: KeyValue
    hi: KeyValue | None
    xid: str
    rows: int
    final: bool


@dataclass
class JobState:
    """``BatchCheckpoint.details``: ``last`` is the upper bound of the last batch known to be
    committed (the next batch's ``lo``); ``in_flight`` is set from just before COMMIT until the
    outcome is recorded."""

    key_type: str
    start: KeyValue | None = None
    last: KeyValue | None = None
    in_flight: InFlight | None = None
    batches: int = 0
    rows: int = 0
    elapsed_seconds: float = 0.0
    runs: int = 0

    def to_details(self) -> dict[str, Any]:
        f = self.in_flight
        return {
            "version": 1,
            "key_type": self.key_type,
            "start": self.start,
            "last": self.last,
            "in_flight": None
            if f is None
            else {"lo": f.lo, "hi": f.hi, "xid": f.xid, "rows": f.rows, "final": f.final},
            "batches": self.batches,
            "rows": self.rows,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "runs": self.runs,
        }

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> JobState:
        f = details.get("in_flight")
        return cls(
            key_type=str(details.get("key_type", "")),
            start=details.get("start"),
            last=details.get("last"),
            in_flight=None
            if not f
            else InFlight(f["lo"], f.get("hi"), str(f["xid"]), int(f["rows"]), bool(f["final"])),
            batches=int(details.get("batches", 0)),
            rows=int(details.get("rows", 0)),
            elapsed_seconds=float(details.get("elapsed_seconds", 0.0)),
            runs=int(details.get("runs", 0)),
        )

    def commit_in_flight(self) -> bool:
        """Count the batch in flight as done; True when it was the last one."""
        f = self.in_flight
        assert f is not None
        self.last = f.hi if f.hi is not None else f.lo
        self.batches += 1
        self.rows += f.rows
        self.in_flight = None
        return f.final


XactStatus = Literal["committed", "aborted", "in progress", "future", "unknown"]
InFlightAction = Literal["done", "redo", "wait", "ask"]


def in_flight_action(status: XactStatus, resolve: Literal["committed", "aborted"] | None) -> InFlightAction:
    """What to do with a batch left in flight, from ``pg_xact_status`` of its transaction:
    committed -> count it; aborted -> run it again; in progress (its session still runs) -> wait;
    in the future (the server lost the transaction in a crash, so it never committed) -> run it
    again; unknown (too old for the server to remember) -> the user must say, with
    ``--resolve-in-flight``, since guessing could change rows twice or not at all."""
    if status == "committed":
        return "done"
    if status in ("aborted", "future"):
        return "redo"
    if status == "in progress":
        return "wait"
    if resolve is None:
        return "ask"
    return "done" if resolve == "committed" else "redo"


# -- throttle ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lag:
    replica_bytes: int | None
    """Largest ``pg_current_wal_lsn() - replay_lsn`` over ``pg_stat_replication`` (None: no
    replica, or not visible to this role)."""
    archive_bytes: int | None
    """WAL written since the end of the last archived segment (None: archiving is off)."""

    @property
    def worst(self) -> int | None:
        values = [v for v in (self.replica_bytes, self.archive_bytes) if v is not None]
        return max(values) if values else None

    def over(self, max_lag: int | None) -> bool:
        """Throttle: the next batch waits while this is true."""
        worst = self.worst
        return max_lag is not None and worst is not None and worst > max_lag


def archive_lag(
    current_lsn: int, archive_mode: str, last_archived_wal: str | None, failed_count: int, segment_size: int
) -> int | None:
    """Bytes of WAL not yet archived, from ``pg_stat_archiver``: from the end of the last archived
    segment to ``current_lsn``. Nothing archived yet: the current segment only while no attempt
    failed, everything once archiving has failed. None when ``archive_mode`` is off."""
    if archive_mode == "off":
        return None
    name = last_archived_wal or ""
    kind = classify(name)
    if kind in ("segment", "partial", "backup"):
        segment = parse_segment(name[:24], segment_size)
        return max(0, current_lsn - (segment.number + 1) * segment_size)
    if failed_count > 0:
        return current_lsn
    return current_lsn % segment_size


# -- progress ---------------------------------------------------------------------------------


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    if done <= 0 or elapsed <= 0 or total <= done:
        return None if total > done else 0.0
    return (total - done) / (done / elapsed)


def progress_line(*, batches: int, covered: int, total: int, changed: int, elapsed: float) -> str:
    """One line: ``batch 12 | 6000/50000 rows (12%) | changed 6000 | 2400 rows/s | ETA 18s``."""
    pct = f"{100 * covered / total:.0f}%" if total else "100%"
    rate = covered / elapsed if elapsed > 0 else 0.0
    eta = eta_seconds(covered, total, elapsed)
    eta_text = "-" if eta is None else _short_duration(eta)
    return (
        f"batch {batches} | {covered}/{total} rows ({pct}) | changed {changed} | "
        f"{rate:.0f} rows/s | ETA {eta_text}"
    )


def _short_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
