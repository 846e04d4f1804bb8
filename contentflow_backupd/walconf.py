"""The lean WAL clients' view of their configuration and command line: ``wal push``
(``walsocket.py``) and ``wal fetch`` (``entry.py``, ``walspool.py``) run once per WAL segment,
and resolve here, before anything heavy is imported, the few names they need.

The configuration is resolved like the settings do: ``BACKUPD_*`` variables (case-insensitive)
over the TOML file (``--config`` or ``BACKUPD_CONFIG``) over defaults. When that resolution meets
something it does not handle (a section given as JSON in one variable, an unreadable or invalid
TOML file, no repository) it raises ``Fallback``, and the full command runs instead, whose errors
name the problem: the fast paths never guess.

Standard library only, and only ``os`` at import (``tomllib`` for a config file beyond plain
tables and pairs). No ``from __future__ import annotations`` and no ``typing`` at run time: the
annotations that name ``typing`` or ``collections.abc`` types are strings (each import is a
fraction of a millisecond of every ``restore_command``).
"""

import os

TYPE_CHECKING = False  # not typing's: importing typing costs a few ms of every archive_command
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

SOCKET_NAME = "wal.sock"

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
def _env(environ: "Mapping[str, str]") -> dict[str, str]:
    return {k.upper(): v for k, v in environ.items() if k.upper().startswith("BACKUPD_")}


def client_config(
    config: str | None, environ: "Mapping[str, str]", cluster: str | None = None
) -> "dict[str, Any]":
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

    def pick(env_name: str, *loc: str) -> "Any":
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


def _cluster_names(env: dict[str, str], data: "dict[str, Any]") -> set[str]:
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


def plain_toml(text: str) -> "dict[str, Any] | None":
    """The content of a TOML file that uses only ``[table]`` headers of bare names, dotted ones
    included (``[clusters.orders.wal]``), and ``bare_key = value`` lines whose value is a one-line
    string without escapes, an integer or a boolean (comments and blank lines aside): what
    configuration files of this tool look like, a fleet of 1,000 ``[clusters.<name>]`` too (which
    ``tomllib`` takes about 13 ms to read). None for anything else (arrays, inline tables, dotted
    or quoted keys, spaces inside a header, multi-line strings, escapes, floats, dates,
    duplicates): ``tomllib`` reads those. Importing ``tomllib`` costs more than the rest of an
    ``archive_command`` call."""
    data: dict[str, Any] = {}
    table = data
    defined: set[str] = set()
    for raw in text.split("\n"):
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            end = line.find("]")
            name = line[1:end].strip(" \t")
            rest = line[end + 1 :].strip(" \t")
            if end < 0 or not name or (rest and not rest.startswith("#")) or name in defined:
                return None
            defined.add(name)
            table = data
            for part in name.split("."):
                if not part or not set(part) <= _BARE:
                    return None
                table = table.setdefault(part, {})
                if not isinstance(table, dict):
                    return None  # a key of that name holds a value
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


def _plain_value(text: str) -> "tuple[Any] | None":
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
    """The WAL prefetch spool of ``cluster`` (walspool.py)."""
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


# -- the command line ------------------------------------------------------------------------------
def _global_options(argv: "Sequence[str]") -> tuple[str | None, str | None, list[str]] | None:
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


def _command(argv: "Sequence[str]", verb: str) -> tuple[str | None, str | None, list[str]] | None:
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


def parse_push(argv: "Sequence[str]") -> tuple[str | None, str | None, str, bool] | None:
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


def parse_fetch(argv: "Sequence[str]") -> tuple[str | None, str | None, str, str] | None:
    """``(config, cluster, name, dest)`` when ``argv`` is a plain ``[--config F] [--cluster N]
    wal fetch NAME DEST`` (or ``wal-fetch``), else None."""
    found = _command(argv, "fetch")
    if found is None or len(found[2]) != 2 or any(a.startswith("-") for a in found[2]):
        return None
    return found[0], found[1], found[2][0], found[2][1]
