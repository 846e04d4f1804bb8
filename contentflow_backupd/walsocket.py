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

The client's configuration and command line are read by ``walconf.py`` (shared with the
``wal fetch`` fast path); whatever that reader does not handle exactly takes the direct path.
"""

from __future__ import annotations

import _socket  # not socket's wrapper: importing socket (enum, selectors) costs ~8 ms a call
import os
import sys

from contentflow_backupd.walconf import Fallback, client_config, parse_push

TYPE_CHECKING = False  # not typing's: importing typing costs a few ms of every archive_command
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

VERSION = 1
CONNECT_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 600.0
"""How long the client waits for the daemon's answer before pushing itself. A push of one
segment through a healthy daemon takes milliseconds; the bound covers a storage that retries. A
direct push after a timeout is safe: both writers store the same bytes under one name."""
MAX_REQUEST = 64 * 1024
IDENTITY_KEYS = ("repository", "cluster", "s3_endpoint_url")


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
