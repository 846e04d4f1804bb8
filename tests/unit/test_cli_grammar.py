"""The command line's grammar (docs/cli.md): NOUN VERB groups, and every spelling of earlier
versions kept as a hidden alias that parses to the same handler and the same options, without
showing in ``--help``."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

from contentflow_backupd.cli.grammar import Commands
from contentflow_backupd.cli.parser import TOP_LEVEL_ALIASES, build_parser, parse_args

# (old spelling, new spelling): each pair must parse to the same namespace.
ALIASES: list[tuple[list[str], list[str]]] = [
    (["wal-push", "pg_wal/000000010000000000000001"], ["wal", "push", "pg_wal/000000010000000000000001"]),
    (["wal-push", "--json", "p"], ["wal", "push", "--json", "p"]),
    (["wal-fetch", "000000010000000000000001", "dest"], ["wal", "fetch", "000000010000000000000001", "dest"]),
    (["wal-fetch", "--json", "n", "d"], ["wal", "fetch", "--json", "n", "d"]),
    (["wal-stream"], ["wal", "stream"]),
    (["wal-stream", "--json"], ["wal", "stream", "--json"]),
    (["backup", "--kind", "full"], ["backup", "create", "--kind", "full"]),
    (
        ["backup", "--kind", "incremental", "--mode", "physical", "--no-progress", "--json"],
        ["backup", "create", "--kind", "incremental", "--mode", "physical", "--no-progress", "--json"],
    ),
    (["list"], ["backup", "list"]),
    (["list", "--all", "--json"], ["backup", "list", "--attempts", "--json"]),
    (["backup", "list", "--all"], ["backup", "list", "--attempts"]),
    (["show", "latest"], ["backup", "show", "latest"]),
    (
        ["show", "--json", "20260101T000000Z-full-abcdef"],
        ["backup", "show", "20260101T000000Z-full-abcdef", "--json"],
    ),
    (["restore-point", "before-deploy"], ["restore-point", "create", "before-deploy"]),
    (["restore-point", "--json", "p"], ["restore-point", "create", "p", "--json"]),
    (["list-restore-points"], ["restore-point", "list"]),
    (["list-restore-points", "--json"], ["restore-point", "list", "--json"]),
    (["restore-test"], ["drill"]),
    (["restore-test", "--backup", "B1"], ["drill", "B1"]),
    (
        ["restore-test", "--backup", "latest", "--target-time", "none", "--json"],
        ["drill", "--target-time", "none", "--json"],
    ),
    (["drill", "--backup", "B1"], ["drill", "B1"]),
    (["recover", "--pgdata", "/d", "--backup", "B1"], ["recover", "B1", "--pgdata", "/d"]),
    (
        ["recover", "--to-database", "postgresql:///x"],
        ["recover", "latest", "--to-database", "postgresql:///x"],
    ),
    (["runs"], ["runs", "list"]),
    (
        ["runs", "--limit", "5", "--job", "full", "--json"],
        ["runs", "list", "--limit", "5", "--job", "full", "--json"],
    ),
    (["audit"], ["audit", "list"]),
    (["audit", "--since", "7d", "--json"], ["audit", "list", "--since", "7d", "--json"]),
    (["migrate", "history"], ["migrate", "list"]),
    (["migrate", "history", "--limit", "3", "--json"], ["migrate", "list", "--limit", "3", "--json"]),
    (
        ["migrate", "--migrations-dir", "prisma/migrations", "--", "npx", "prisma", "migrate", "deploy"],
        [
            "migrate",
            "run",
            "--migrations-dir",
            "prisma/migrations",
            "--",
            "npx",
            "prisma",
            "migrate",
            "deploy",
        ],
    ),
    (
        ["migrate", "--dry-run", "--allow-risky", "--json", "--migrations-dir", "m", "--", "sh", "-c", "x"],
        [
            "migrate",
            "run",
            "--dry-run",
            "--allow-risky",
            "--json",
            "--migrations-dir",
            "m",
            "--",
            "sh",
            "-c",
            "x",
        ],
    ),
    (["--config", "/etc/b.toml", "wal-push", "p"], ["--config", "/etc/b.toml", "wal", "push", "p"]),
]


def parsed(argv: list[str]) -> dict[str, Any]:
    """The namespace, without the note of which old spelling was used (it only names the
    progress line, as before: ``restore-test: restoring``)."""
    out = vars(parse_args(argv))
    out.pop("old_spelling", None)
    return out


@pytest.mark.parametrize(("old", "new"), ALIASES, ids=lambda a: " ".join(a))
def test_an_old_spelling_parses_to_the_same_handler_and_options(old: list[str], new: list[str]) -> None:
    a, b = parsed(old), parsed(new)
    assert a["func"] is b["func"]
    assert a == b


def test_every_hidden_alias_is_in_the_table() -> None:
    """Each top-level alias leads to a real command, and the table above tests each of them."""
    tested = {word for old, _new in ALIASES for word in old}
    assert set(TOP_LEVEL_ALIASES) <= tested
    for alias in TOP_LEVEL_ALIASES:
        assert callable(parse_args([alias, *_args_for(alias)]).func)


def _args_for(alias: str) -> list[str]:
    return {"show": ["latest"], "wal-push": ["p"], "wal-fetch": ["n", "d"]}.get(alias, [])


def _subcommands(parser: argparse.ArgumentParser) -> Commands:
    found = next(a for a in parser._actions if isinstance(a, Commands))
    return found


def test_old_spellings_are_hidden_from_help() -> None:
    parser = build_parser()
    text = parser.format_help()
    for alias in TOP_LEVEL_ALIASES:
        assert f"\n    {alias} " not in text and f"\n    {alias}\n" not in text, alias
    listed = {c.dest for c in _subcommands(parser)._choices_actions}
    assert not listed & set(TOP_LEVEL_ALIASES)
    for new in ("backup", "drill", "wal", "restore-point", "runs", "run"):
        assert new in listed
    migrate = _subcommands(parser).choices["migrate"]
    assert "history" not in migrate.format_help()
    backup_list = _subcommands(_subcommands(parser).choices["backup"]).choices["list"]
    # --all (hidden alias of --attempts) is not shown; --all-clusters is another option
    assert re.search(r"--all(?![-\w])", backup_list.format_help()) is None
    assert "--attempts" in backup_list.format_help()
    drill = _subcommands(parser).choices["drill"]
    assert "--backup" not in drill.format_help() and "BACKUP" in drill.format_help()


def test_an_unknown_command_lists_only_the_new_spellings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["wal-pusher", "x"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'wal-pusher'" in err and "'wal'" in err
    assert "'wal-push'" not in err and "'restore-test'" not in err


def test_a_backup_named_twice_differently_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["drill", "B1", "--backup", "B2"])
    assert exited.value.code == 2
    assert "named twice" in capsys.readouterr().err
    assert parsed(["drill", "B1", "--backup", "B1"])["backup"] == "B1"


def test_backup_without_a_subcommand_or_kind_asks_for_the_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["backup"])
    assert exited.value.code == 2
    assert "--kind" in capsys.readouterr().err


def test_group_help_is_the_groups_own(capsys: pytest.CaptureFixture[str]) -> None:
    for group, sub in (("backup", "create"), ("restore-point", "list"), ("migrate", "run"), ("runs", "list")):
        with pytest.raises(SystemExit) as exited:
            parse_args([group, "--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: contentflow-backupd {group} "), out
        assert sub in out


def test_everything_after_the_double_dash_is_the_migration_command() -> None:
    args = parsed(
        ["migrate", "run", "--migrations-dir", "m", "--", "npx", "prisma", "--schema", "s", "--", "x"]
    )
    assert args["migrate_command_argv"] == ["npx", "prisma", "--schema", "s", "--", "x"]
    assert args["json"] is False  # a --json after `--` belongs to COMMAND
    assert parsed(["migrate", "run", "--", "tool", "--json"])["migrate_command_argv"] == ["tool", "--json"]
    assert parsed(["migrate", "run", "--migrations-dir", "m"])["migrate_command_argv"] == []


def test_a_restore_point_named_like_a_subcommand_needs_the_verb() -> None:
    """`restore-point list` lists; a point named "list" is `restore-point create list`."""
    assert parsed(["restore-point", "list"])["restore_point_command"] == "list"
    assert parsed(["restore-point", "create", "list"])["name"] == "list"


def test_long_running_commands_take_json_as_the_log_format() -> None:
    from contentflow_backupd.cli.parser import JSON_LOGS

    for argv in (["run", "--json"], ["wal", "stream", "--json"], ["wal-stream", "--json"]):
        args = parse_args(argv)
        assert args.json and args.func in JSON_LOGS
    assert parse_args(["wal", "fetch", "--json", "n", "d"]).func not in JSON_LOGS


def test_docs_cli_md_has_every_old_spelling() -> None:
    """docs/cli.md's old -> new table names every hidden alias, and each new spelling parses."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    table = doc.split("| earlier spelling | now |", 1)[1].split("\n\n", 1)[0]
    old = {line.split("`")[1].split()[0] for line in table.splitlines() if line.startswith("| `")}
    assert set(TOP_LEVEL_ALIASES) <= old
    assert {"runs", "audit", "migrate", "restore-point", "recover"} <= old


def test_an_old_spelling_is_noted_for_the_progress_line_only() -> None:
    assert parse_args(["restore-test"]).old_spelling == "restore-test"
    assert "old_spelling" not in parse_args(["drill"])


@pytest.mark.parametrize(
    ("argv", "cluster"),
    [
        (["backup", "list"], None),
        (["--cluster", "a", "backup", "list"], "a"),
        (["backup", "list", "--cluster", "b"], "b"),
        (["--cluster", "a", "backup", "list", "--cluster", "b"], "b"),  # the one after the command wins
        (["--cluster", "a", "backup", "--kind", "full"], "a"),  # the default verb (create)
        (["backup", "--cluster", "a", "--kind", "full"], "a"),
        (["wal-push", "--cluster", "b", "X"], "b"),  # old spellings too
        (["--cluster=a", "runs"], "a"),
    ],
)
def test_cluster_before_or_after_the_command(argv: list[str], cluster: str | None) -> None:
    assert parse_args(argv).cluster == cluster


@pytest.mark.parametrize(
    "argv", [["backup", "list"], ["runs", "list"], ["status"], ["list"], ["runs"]], ids=" ".join
)
def test_listings_take_all_clusters(argv: list[str]) -> None:
    assert parse_args([*argv, "--all-clusters"]).all_clusters is True
    assert parse_args(argv).all_clusters is False


def test_only_the_listings_take_all_clusters(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["backup", "create", "--kind", "full", "--all-clusters"])
    assert info.value.code == 2
    assert "--all-clusters" in capsys.readouterr().err
