"""``keys list|add|remove|rotate``: the repository's key-encryption keys and data keys."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from contentflow_backupd.cli.grammar import JSON_HELP, commands_of
from contentflow_backupd.cli.output import human_age, human_time, print_json, render_table
from contentflow_backupd.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from contentflow_backupd.wiring import App

Command = Callable[[argparse.Namespace, "App"], int]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], commands: dict[str, Command]) -> None:
    """The ``keys`` command group (``commands``: the lazy functions, by subcommand)."""
    kp = sub.add_parser(
        "keys",
        help="encryption keys: list, add, remove, rotate",
        description="The repository's key-encryption keys (what opens it: passphrases, key files, KMS "
        "keys) and data keys (what encrypts the objects): list, add, remove, rotate.",
    )
    ksub = commands_of(kp, "keys_command", "what to do with the keys")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = ksub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--json", action="store_true", help=JSON_HELP)
        sp.set_defaults(func=commands[name])
        return sp

    add("list", "key-encryption keys (id, kind, created, last used) and data keys (active, objects)")
    sp = add("add", "add a key-encryption key that opens the repository (e.g. an offline recovery key)")
    one = sp.add_mutually_exclusive_group(required=True)
    one.add_argument("--passphrase-file", metavar="F", help="a file holding the new passphrase")
    one.add_argument("--key-file", metavar="F", help="a file holding a new 32-byte key")
    one.add_argument("--kms-key-id", metavar="ARN", help="an AWS KMS key (id, ARN or alias)")
    sp = add("remove", "remove a key-encryption key (never the last one, nor the one in use)")
    sp.add_argument("kek_id", metavar="ID", help="the key-encryption key's id (see keys list)")
    sp = add("rotate", "make a new data key active for new objects; retire old keys nothing needs")
    sp.add_argument(
        "--retire-grace",
        default="15m",
        metavar="DURATION",
        help="keep the previous data key at least this long, even when unused (default 15m)",
    )


def cmd_keys_list(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.repo.keys import list_keys

    report = list_keys(app.repository()).to_json()
    if args.json:
        print_json(report)
        return EXIT_OK
    keks = [
        (
            k["id"],
            k["kind"],
            human_time(k["created"]),
            human_age(k["last_used"]),
            " ".join(filter(None, ["(opened with)" if k["opened_with"] else "", k.get("kms_key_id") or ""])),
        )
        for k in report["key_encryption_keys"]
    ]
    sys.stdout.write(render_table(("KEY-ENCRYPTION KEY", "KIND", "CREATED (UTC)", "LAST USED", "NOTE"), keks))
    data = [
        (
            d["id"],
            "yes" if d["active"] else "no",
            human_time(d["created"]),
            str(d["objects"]),
            "-" if d["active"] else human_time(d["retire_after"]),
        )
        for d in report["data_keys"]
    ]
    sys.stdout.write("\n")
    sys.stdout.write(
        render_table(
            ("DATA KEY", "ACTIVE", "CREATED (UTC)", "OBJECTS", "RETIRE AFTER (UTC)"), data, right={3}
        )
    )
    return EXIT_OK


def cmd_keys_add(args: argparse.Namespace, app: App) -> int:
    from pathlib import Path

    from contentflow_backupd.ops.repo.keys import add_kek

    secret = app.extra_kek_secret(
        passphrase_file=Path(args.passphrase_file) if args.passphrase_file else None,
        key_file=Path(args.key_file) if args.key_file else None,
        kms_key_id=args.kms_key_id,
    )
    repo = app.repository()
    with app.catalog_or_none("audit_catalog_unavailable", level="error") as catalog:
        kek_id = add_kek(repo, secret, catalog)
    if args.json:
        print_json({"id": kek_id, "kind": secret.kind})
    else:
        print(f"added key {kek_id} ({secret.kind}) to repository {repo.id}")
        if secret.kind != "kms":
            print("keep that secret somewhere safe and offline: it alone opens every backup")
    return EXIT_OK


def cmd_keys_remove(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.repo.keys import remove_kek

    repo = app.repository()
    with app.catalog_or_none("audit_catalog_unavailable", level="error") as catalog:
        remove_kek(repo, args.kek_id, catalog)
    if args.json:
        print_json({"removed": args.kek_id})
    else:
        print(f"removed key {args.kek_id} from repository {repo.id}")
    return EXIT_OK


def cmd_keys_rotate(args: argparse.Namespace, app: App) -> int:
    from contentflow_backupd.ops.repo.keys import rotate_data_key
    from contentflow_backupd.timespec import parse_duration

    try:
        grace = parse_duration(args.retire_grace, allow_zero=True)
    except ValueError as exc:
        raise UsageError(f"--retire-grace: {exc}") from None
    repo = app.repository()
    with app.catalog_or_none("audit_catalog_unavailable", level="error") as catalog:
        result = rotate_data_key(repo, catalog, retire_grace_s=grace)
    if args.json:
        print_json(result.to_json())
    else:
        print(f"data key {result.active} is active for new objects (was {result.previous})")
        if result.retired:
            print(f"retired data keys no object needs: {', '.join(result.retired)}")
    return EXIT_OK
