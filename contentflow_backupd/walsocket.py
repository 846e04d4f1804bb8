"""The WAL hand-off socket: ``wal push`` (PostgreSQL's ``archive_command``) gives the segment to
the running daemon, which pushes it with its open repository and its key, derived once.

This module is the protocol and the client side. It imports only light standard-library modules
(``os``, ``socket``, ``json``; ``tomllib`` when a config file is named): the point of the
hand-off is that an ``archive_command`` call costs a Python start and one round trip, not the
settings, the command table and a key derivation. The server side is
``daemon/walservice.py``.

Protocol (one request per connection, on a Unix stream socket of mode 0600):

- The client opens the WAL file and sends one JSON line with the open file descriptor attached
  (``SCM_RIGHTS``): ``{"op": "push", "v": 1, "name": <file name>, "path": <its absolute path>,
  "identity": {...}}``. The path tells the daemon where ``pg_wal`` is, to push ahead
  (``daemon/walahead.py``); the data is read through the descriptor. The
  identity is what the client's configuration names: ``repository``, ``cluster`` and
  ``s3_endpoint_url``. The daemon reads the file through the descriptor, so it sees exactly the
  file the client opened, whatever its own working directory or permissions.
- The daemon answers one JSON line, only after the outcome is final:
  ``{"status": "stored" | "duplicate"}`` once the object is durably stored (the same
  ``WalArchive.push`` as the direct path: same duplicate, conflict and system-identifier rules);
  ``{"error": <message>, "exit_code": N}`` when the push was refused for good (a conflict, WAL of
  another cluster, not a WAL file); ``{"refused": <reason>}`` when the daemon will not do it (another
  repository or cluster, a peer that is neither its user nor root, a storage error it could not get
  past).
- The client exits 0 only on ``stored`` or ``duplicate``. On ``refused``, on no socket, on a stale
  socket (connection refused), on a timeout, or when the connection ends before an answer (the
  daemon was killed mid-upload), it takes the direct path: the full command, which pushes itself.
  Both paths are idempotent, so a push the daemon completed is a ``duplicate`` for the direct one,
  and one it did not complete was never visible.

The client's configuration is resolved like the settings do, for the few names it needs:
``BACKUPD_*`` variables (case-insensitive) over the TOML file (``--config`` or
``BACKUPD_CONFIG``) over defaults. When that resolution meets something it does not handle (a
section given as JSON in one variable, an unreadable or invalid TOML file, no repository) it
takes the direct path, whose errors name the problem: the fast path never guesses.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Mapping, Sequence

TYPE_CHECKING = False  # not typing's: importing typing costs a few ms of every archive_command
if TYPE_CHECKING:
    from typing import Any

SOCKET_NAME = "wal.sock"
VERSION = 1
CONNECT_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 600.0
"""How long the client waits for the daemon's answer before pushing itself. A push of one
segment through a healthy daemon takes milliseconds; the bound covers a storage that retries. A
direct push after a timeout is safe: both writers store the same bytes under one name."""
MAX_REQUEST = 64 * 1024
IDENTITY_KEYS = ("repository", "cluster", "s3_endpoint_url")
DEFAULT_PREFETCH = 8
"""``BACKUPD_WAL__PREFETCH``'s default (settings.py says the same)."""
DEFAULT_CLUSTER = "main"


class Fallback(Exception):
    """Take the direct path; the message says why. ``quiet``: an expected reason (no daemon
    runs, the socket is off), which the direct path does not log as a warning."""

    def __init__(self, reason: str, *, quiet: bool = False) -> None:
        super().__init__(reason)
        self.quiet = quiet


# -- the client's view of its configuration --------------------------------------------------
def _env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k.upper(): v for k, v in environ.items() if k.upper().startswith("BACKUPD_")}


def client_config(config: str | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The names the client needs, resolved as the settings resolve them. ``Fallback`` when the
    resolution is not one this lean reader handles exactly."""
    env = _env(environ)
    for section in ("BACKUPD_WAL", "BACKUPD_S3"):
        if section in env:
            raise Fallback(f"{section} is set as one value (JSON)")
    path = config or env.get("BACKUPD_CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        import tomllib

        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, ValueError) as exc:
            raise Fallback(f"config file {path}: {exc}") from None

    def pick(env_name: str, *loc: str) -> Any:
        if env_name in env:
            return env[env_name]
        part: Any = data
        for name in loc:
            if not isinstance(part, dict) or name not in part:
                return None
            part = part[name]
        return part

    repository = pick("BACKUPD_REPOSITORY", "repository")
    if not isinstance(repository, str) or not repository:
        raise Fallback("no repository configured", quiet=True)
    cluster = pick("BACKUPD_CLUSTER", "cluster") or DEFAULT_CLUSTER
    endpoint = pick("BACKUPD_S3__ENDPOINT_URL", "s3", "endpoint_url")
    state_dir = pick("BACKUPD_STATE_DIR", "state_dir")
    sock = pick("BACKUPD_WAL__SOCKET", "wal", "socket")
    prefetch = pick("BACKUPD_WAL__PREFETCH", "wal", "prefetch")
    for value in (cluster, endpoint, state_dir, sock):
        if value is not None and not isinstance(value, str):
            raise Fallback("a setting of an unexpected type")
    try:
        depth = DEFAULT_PREFETCH if prefetch is None else int(prefetch)
    except (TypeError, ValueError):
        raise Fallback("BACKUPD_WAL__PREFETCH is not a number") from None
    if state_dir is None:
        from contentflow_backupd.statedir import default_state_dir

        state_dir = str(default_state_dir())
    return {
        "identity": {"repository": repository, "cluster": cluster, "s3_endpoint_url": endpoint},
        "socket": socket_path(sock, state_dir),
        "prefetch": depth,
        "prefetch_dir": prefetch_dir(state_dir, cluster),
    }


def prefetch_dir(state_dir: str, cluster: str) -> str:
    """The WAL prefetch spool of ``cluster`` (repository/walspool.py)."""
    return os.path.join(state_dir, "wal-prefetch", cluster)


def socket_path(setting: str | None, state_dir: str | None) -> str | None:
    """The socket's path: the ``wal.socket`` setting, else ``<state_dir>/wal.sock``; None when the
    setting is ``off``."""
    if setting is not None:
        return None if setting.strip().lower() == "off" else setting
    if state_dir is None:
        from contentflow_backupd.statedir import default_state_dir

        state_dir = str(default_state_dir())
    return os.path.join(state_dir, SOCKET_NAME)


# -- the exchange ------------------------------------------------------------------------------
def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def read_line(sock: socket.socket, limit: int = MAX_REQUEST) -> bytes:
    """Bytes up to the first newline; ``ConnectionError`` when the peer closes before one."""
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the connection ended before a whole message")
        buf += chunk
        if len(buf) > limit:
            raise ValueError("message too long")
    return buf.split(b"\n", 1)[0]


def push(path: str, cfg: Mapping[str, Any], timeout: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
    """Hand ``path`` to the daemon. Returns its final answer (``status`` or ``error``); raises
    ``Fallback`` when the direct path must push instead."""
    where = cfg["socket"]
    if where is None:
        raise Fallback("the WAL socket is off", quiet=True)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise Fallback(f"cannot open {path}: {exc.strerror}", quiet=True) from None  # the direct path says it
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            try:
                sock.connect(where)
            except FileNotFoundError:
                raise Fallback(f"no daemon: {where} does not exist", quiet=True) from None
            except (OSError, ValueError) as exc:  # stale (refused), not ours, path too long
                raise Fallback(f"no daemon answers at {where}: {exc}") from None
            sock.settimeout(timeout)
            request = {
                "op": "push",
                "v": VERSION,
                "name": os.path.basename(path),
                "path": os.path.abspath(path),
                "identity": cfg["identity"],
            }
            try:
                socket.send_fds(sock, [encode(request)], [fd])
                answer = decode(read_line(sock))
            except (OSError, ValueError) as exc:  # includes a timeout and a daemon killed mid-push
                raise Fallback(f"the daemon at {where} gave no answer: {exc}") from None
    finally:
        os.close(fd)
    if "refused" in answer:
        raise Fallback(f"the daemon at {where} refused: {answer['refused']}")
    if answer.get("status") in ("stored", "duplicate") or "error" in answer:
        return answer
    raise Fallback(f"the daemon at {where} answered {answer!r}")


# -- the command line's fast path --------------------------------------------------------------
def _global_config(argv: Sequence[str]) -> tuple[str | None, list[str]] | None:
    """``--config F`` / ``--config=F`` before the command, and the rest; None on anything else."""
    args = list(argv)
    config: str | None = None
    while args and args[0].startswith("--config"):
        if args[0] == "--config" and len(args) > 1:
            config, args = args[1], args[2:]
        elif args[0].startswith("--config="):
            config, args = args[0].split("=", 1)[1], args[1:]
        else:
            return None
    if config == "":
        return None
    return config, args


def _verb(args: list[str], verb: str) -> list[str] | None:
    """The arguments after ``wal VERB`` (or the old ``wal-VERB``), None for another command."""
    if args[:2] == ["wal", verb]:
        return args[2:]
    if args[:1] == [f"wal-{verb}"]:
        return args[1:]
    return None


def parse_push(argv: Sequence[str]) -> tuple[str | None, str, bool] | None:
    """``(config, path, json)`` when ``argv`` is a plain ``[--config F] wal push PATH [--json]``
    (or ``wal-push``), else None: every other form goes to the full command line."""
    found = _global_config(argv)
    rest = None if found is None else _verb(found[1], "push")
    if found is None or rest is None:
        return None
    as_json = "--json" in rest
    rest = [a for a in rest if a != "--json"]
    if len(rest) != 1 or rest[0].startswith("-"):
        return None
    return found[0], rest[0], as_json


def parse_fetch(argv: Sequence[str]) -> tuple[str | None, str, str] | None:
    """``(config, name, dest)`` when ``argv`` is a plain ``[--config F] wal fetch NAME DEST`` (or
    ``wal-fetch``), else None."""
    found = _global_config(argv)
    rest = None if found is None else _verb(found[1], "fetch")
    if found is None or rest is None or len(rest) != 2 or any(a.startswith("-") for a in rest):
        return None
    return found[0], rest[0], rest[1]


def fast_push(argv: Sequence[str], environ: Mapping[str, str]) -> int | Fallback | None:
    """Run ``wal push`` through the daemon: its exit code; or the ``Fallback`` that says why the
    full command must push directly; or None when ``argv`` is not a plain ``wal push``. Prints
    what the full command would print."""
    parsed = parse_push(argv)
    if parsed is None:
        return None
    config, path, as_json = parsed
    try:
        answer = push(path, client_config(config, environ))
    except Fallback as exc:
        return exc
    if "error" in answer:
        print(f"contentflow-backupd: error: {answer['error']}", file=sys.stderr)
        code = answer.get("exit_code")
        return code if isinstance(code, int) and code > 0 else 1
    if as_json:
        print(json.dumps({"file": os.path.basename(path), "status": answer["status"]}))
    return 0
