"""The WAL hand-off socket: ``wal push`` (PostgreSQL's ``archive_command``) gives the segment to
the running daemon, which pushes it with its open repository and its key, derived once.

This module is the protocol and the client side. It imports only light standard-library modules
(``os``, ``_socket``; ``json`` for an answer it does not recognise, ``tomllib`` for a config file
beyond plain tables and pairs): the point of the
hand-off is that an ``archive_command`` call costs a Python start and one round trip, not the
settings, the command table and a key derivation. The server side is
``daemon/walservice.py``.

Protocol (one request per connection, on a Unix stream socket of mode 0660):

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

import _socket  # not socket's wrapper: importing socket (enum, selectors) costs ~8 ms a call
import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs a few ms of every archive_command
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
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


def client_config(
    config: str | None, environ: Mapping[str, str], cluster: str | None = None
) -> dict[str, Any]:
    """The names the client needs, resolved as the settings resolve them, for ``cluster``
    (``--cluster``; None: ``BACKUPD_CLUSTER``, else the only one). With named clusters
    (``[clusters.<name>]``, ``BACKUPD_CLUSTERS__<NAME>__*``) a cluster's own key beats the top
    level's, whatever their sources. ``Fallback`` when the resolution is not one this lean reader
    handles exactly, or needs an error message (an unknown or missing choice of cluster)."""
    env = _env(environ)
    for section in ("BACKUPD_WAL", "BACKUPD_S3", "BACKUPD_CLUSTERS"):
        if section in env:
            raise Fallback(f"{section} is set as one value (JSON)")
    path = config or env.get("BACKUPD_CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                raw = f.read()
            simple = plain_toml(raw.decode("utf-8"))
            if simple is None:  # more than plain tables and pairs: the real parser reads it
                import tomllib

                simple = tomllib.loads(raw.decode("utf-8"))
            data = simple
        except (OSError, ValueError) as exc:
            raise Fallback(f"config file {path}: {exc}") from None

    own: dict[str, Any] | None = None  # the chosen named cluster's table, and its variables' prefix
    prefix = ""

    def pick(env_name: str, *loc: str) -> Any:
        """The cluster's own key if it has one (env over file), else the top level's."""
        levels = (
            ((prefix + env_name[len("BACKUPD_") :], own), (env_name, data))
            if own is not None
            else ((env_name, data),)
        )
        for variable, table in levels:
            if variable in env:
                return env[variable]
            part: Any = table
            for name in loc:
                if not isinstance(part, dict) or name not in part:
                    part = None
                    break
                part = part[name]
            if part is not None:
                return part
        return None

    configured = pick("BACKUPD_CLUSTER", "cluster")  # the implicit cluster, or the default choice
    chosen = cluster or configured
    names = _cluster_names(env, data)
    if names:
        if chosen is None and len(names) == 1:
            chosen = next(iter(names))
        if not isinstance(chosen, str) or chosen not in names:
            raise Fallback("no configured cluster chosen")  # the full command names the choices
        own = (data.get("clusters") or {}).get(chosen, {})
        if not isinstance(own, dict):
            raise Fallback(f"clusters.{chosen} is not a table")
        prefix = f"BACKUPD_CLUSTERS__{chosen.upper()}__"
        for section in ("", "WAL", "S3"):
            if (prefix + section).rstrip("_") in env:
                raise Fallback(f"{(prefix + section).rstrip('_')} is set as one value (JSON)")
    elif cluster is not None and cluster != (configured or DEFAULT_CLUSTER):
        raise Fallback(f"no cluster {cluster!r} configured")
    repository = pick("BACKUPD_REPOSITORY", "repository")
    if not isinstance(repository, str) or not repository:
        raise Fallback("no repository configured", quiet=True)
    cluster = chosen or DEFAULT_CLUSTER
    endpoint = pick("BACKUPD_S3__ENDPOINT_URL", "s3", "endpoint_url")
    state_dir = env["BACKUPD_STATE_DIR"] if "BACKUPD_STATE_DIR" in env else data.get("state_dir")
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
        from contentflow_backupd.statedir import default_state_path

        state_dir = default_state_path()
    return {
        "identity": {"repository": repository, "cluster": cluster, "s3_endpoint_url": endpoint},
        "socket": socket_path(sock, state_dir),
        "prefetch": depth,
        "prefetch_dir": prefetch_dir(state_dir, cluster),
    }


def _cluster_names(env: dict[str, str], data: dict[str, Any]) -> set[str]:
    """The named clusters of the file and the environment (lowercased, as the settings do)."""
    clusters = data.get("clusters")
    if clusters is not None and not isinstance(clusters, dict):
        raise Fallback("clusters is not a table")
    names = set(clusters or ())
    for key in env:
        if key.startswith("BACKUPD_CLUSTERS__"):
            names.add(key[len("BACKUPD_CLUSTERS__") :].split("__", 1)[0].lower())
    return names


_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def plain_toml(text: str) -> dict[str, Any] | None:
    """The content of a TOML file that uses only ``[table]`` headers of bare names and
    ``bare_key = value`` lines whose value is a one-line string without escapes, an integer or a
    boolean (comments and blank lines aside): what configuration files of this tool look like.
    None for anything else (arrays, inline tables, dotted or quoted keys, multi-line strings,
    escapes, floats, dates, duplicates): ``tomllib`` reads those. Importing ``tomllib`` costs more
    than the rest of an ``archive_command`` call."""
    data: dict[str, Any] = {}
    table = data
    for raw in text.split("\n"):
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            end = line.find("]")
            name = line[1:end].strip(" \t")
            rest = line[end + 1 :].strip(" \t")
            if end < 0 or not name or not set(name) <= _BARE or (rest and not rest.startswith("#")):
                return None
            if name in data:
                return None
            table = data[name] = {}
            continue
        key, sep, value = line.partition("=")
        key = key.strip(" \t")
        if not sep or not key or not set(key) <= _BARE or key in table:
            return None
        parsed = _plain_value(value.strip(" \t"))
        if parsed is None:
            return None
        table[key] = parsed[0]
    return data


def _plain_value(text: str) -> tuple[Any] | None:
    if text[:1] in ('"', "'"):
        quote = text[0]
        end = text.find(quote, 1)
        rest = text[end + 1 :].strip(" \t") if end > 0 else "x"
        value = text[1:end] if end > 0 else ""
        if end < 0 or text.startswith(quote * 3) or (rest and not rest.startswith("#")):
            return None
        if (quote == '"' and "\\" in value) or any((ch < " " and ch != "\t") or ch == "\x7f" for ch in value):
            return None
        return (value,)
    word = text.split("#", 1)[0].strip(" \t")
    if word in ("true", "false"):
        return (word == "true",)
    digits = word[1:] if word[:1] in "+-" else word
    if digits.isdigit() and digits.isascii() and (digits == "0" or not digits.startswith("0")):
        return (int(word),)
    return None


def prefetch_dir(state_dir: str, cluster: str) -> str:
    """The WAL prefetch spool of ``cluster`` (repository/walspool.py)."""
    return os.path.join(state_dir, "wal-prefetch", cluster)


def socket_path(setting: str | None, state_dir: str | None) -> str | None:
    """The socket's path: the ``wal.socket`` setting, else ``<state_dir>/wal.sock``; None when the
    setting is ``off``."""
    if setting is not None:
        return None if setting.strip().lower() == "off" else setting
    if state_dir is None:
        from contentflow_backupd.statedir import default_state_path

        state_dir = default_state_path()
    return os.path.join(state_dir, SOCKET_NAME)


# -- the exchange ------------------------------------------------------------------------------
def encode(message: Mapping[str, Any]) -> bytes:
    """One JSON line, compact (``json``'s output with ``separators=(",", ":")``)."""
    return _json(message).encode() + b"\n"


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _json(value: Any) -> str:
    """JSON of the request's values (objects, strings, ints, None, bools) without importing
    ``json`` (which imports ``re``: milliseconds of every ``archive_command``)."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in _ESCAPES:
                out.append(_ESCAPES[ch])
            elif ch < " " or "\ud800" <= ch <= "\udfff":
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, dict):  # not Mapping: importing collections.abc costs ~2 ms a call
        return "{" + ",".join(f"{_json(str(k))}:{_json(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot encode {type(value).__name__}")


STORED = b'{"status":"stored"}'
DUPLICATE = b'{"status":"duplicate"}'


def decode(line: bytes) -> dict[str, Any]:
    if line == STORED:  # the common answers, without importing json
        return {"status": "stored"}
    if line == DUPLICATE:
        return {"status": "duplicate"}
    import json

    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def read_line(sock: _socket.socket, limit: int = MAX_REQUEST) -> bytes:
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
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
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
            # socket.send_fds without socket.py: one C int per descriptor, in native order.
            rights = fd.to_bytes(4, sys.byteorder, signed=True)
            sock.sendmsg([encode(request)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
            answer = decode(read_line(sock))
        except (OSError, ValueError) as exc:  # includes a timeout and a daemon killed mid-push
            raise Fallback(f"the daemon at {where} gave no answer: {exc}") from None
    finally:
        sock.close()
        os.close(fd)
    if "refused" in answer:
        raise Fallback(f"the daemon at {where} refused: {answer['refused']}")
    if answer.get("status") in ("stored", "duplicate") or "error" in answer:
        return answer
    raise Fallback(f"the daemon at {where} answered {answer!r}")


# -- the command line's fast path --------------------------------------------------------------
def _global_options(argv: Sequence[str]) -> tuple[str | None, str | None, list[str]] | None:
    """``--config F`` / ``--config=F`` and ``--cluster N`` / ``--cluster=N`` before the command
    (each once at most), and the rest; None on anything else."""
    args = list(argv)
    found: dict[str, str] = {}
    while args and args[0].startswith("--"):
        option, eq, value = args[0].partition("=")
        if option not in ("--config", "--cluster") or option in found:
            return None
        if eq:
            found[option], args = value, args[1:]
        elif len(args) > 1:
            found[option], args = args[1], args[2:]
        else:
            return None
        if found[option] == "":
            return None
    return found.get("--config"), found.get("--cluster"), args


def _verb(args: list[str], verb: str) -> list[str] | None:
    """The arguments after ``wal VERB`` (or the old ``wal-VERB``), None for another command."""
    if args[:2] == ["wal", verb]:
        return args[2:]
    if args[:1] == [f"wal-{verb}"]:
        return args[1:]
    return None


def _command(argv: Sequence[str], verb: str) -> tuple[str | None, str | None, list[str]] | None:
    """``(config, cluster, operands)`` of a plain ``[--config F] [--cluster N] wal VERB ...``,
    ``--cluster N`` also accepted after the verb (the one given last wins, as argparse does)."""
    found = _global_options(argv)
    rest = None if found is None else _verb(found[2], verb)
    if found is None or rest is None:
        return None
    config, cluster, operands = found[0], found[1], []
    while rest:
        arg = rest.pop(0)
        if arg == "--cluster" and rest:
            cluster = rest.pop(0)
        elif arg.startswith("--cluster="):
            cluster = arg.partition("=")[2]
        else:
            operands.append(arg)
            continue
        if not cluster or cluster.startswith("-"):
            return None
    return config, cluster, operands


def parse_push(argv: Sequence[str]) -> tuple[str | None, str | None, str, bool] | None:
    """``(config, cluster, path, json)`` when ``argv`` is a plain ``[--config F] [--cluster N]
    wal push PATH [--json]`` (or ``wal-push``), else None: every other form goes to the full
    command line."""
    found = _command(argv, "push")
    if found is None:
        return None
    config, cluster, rest = found
    as_json = "--json" in rest
    rest = [a for a in rest if a != "--json"]
    if len(rest) != 1 or rest[0].startswith("-"):
        return None
    return config, cluster, rest[0], as_json


def parse_fetch(argv: Sequence[str]) -> tuple[str | None, str | None, str, str] | None:
    """``(config, cluster, name, dest)`` when ``argv`` is a plain ``[--config F] [--cluster N]
    wal fetch NAME DEST`` (or ``wal-fetch``), else None."""
    found = _command(argv, "fetch")
    if found is None or len(found[2]) != 2 or any(a.startswith("-") for a in found[2]):
        return None
    return found[0], found[1], found[2][0], found[2][1]


def fast_push(argv: Sequence[str], environ: Mapping[str, str]) -> int | Fallback | None:
    """Run ``wal push`` through the daemon: its exit code; or the ``Fallback`` that says why the
    full command must push directly; or None when ``argv`` is not a plain ``wal push``. Prints
    what the full command would print."""
    parsed = parse_push(argv)
    if parsed is None:
        return None
    config, cluster, path, as_json = parsed
    try:
        answer = push(path, client_config(config, environ, cluster))
    except Fallback as exc:
        return exc
    if "error" in answer:
        print(f"contentflow-backupd: error: {answer['error']}", file=sys.stderr)
        code = answer.get("exit_code")
        return code if isinstance(code, int) and code > 0 else 1
    if as_json:
        import json

        # As the full command prints it (cli/output.py: print_json).
        print(json.dumps({"file": os.path.basename(path), "status": answer["status"]}, indent=2))
    return 0
