"""Every command's --help renders (argparse %-formats help strings: a stray % crashes it) and
teaches: every command has a description, every option a help text, every usage line names the
command's own path; the top-level help names the required settings, the config file and the
exit codes."""

from __future__ import annotations

import argparse

import pytest

from contentflow_backupd.cli.parser import build_parser


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parsers(sub))
    return found


PARSERS = _parsers(build_parser())


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.prog)
def test_help_renders(parser: argparse.ArgumentParser) -> None:
    assert parser.format_help()


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.prog)
def test_every_command_and_option_is_described(parser: argparse.ArgumentParser) -> None:
    assert (parser.description or "").strip(), f"{parser.prog}: no description"
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue  # a hidden alias of an old spelling (list --all, drill --backup)
        name = "/".join(action.option_strings) or action.dest
        assert (action.help or "").strip(), f"{parser.prog} {name}: no help text"
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert (choice.help or "").strip(), f"{parser.prog} {choice.dest}: no help text"


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.prog)
def test_usage_names_the_command(parser: argparse.ArgumentParser) -> None:
    # A parent's custom usage must not leak into its subcommands' names (it did for `migrate check`).
    assert "[" not in parser.prog and "|" not in parser.prog, parser.prog
    assert parser.format_usage().startswith(f"usage: {parser.prog}")


def test_top_level_help_names_settings_config_and_exit_codes() -> None:
    text = build_parser().format_help()
    for needed in (
        "BACKUPD_REPOSITORY",
        "BACKUPD_ENCRYPTION__PASSPHRASE_FILE",
        "BACKUPD_ENCRYPTION__KEY_FILE",
        "BACKUPD_ENCRYPTION__KMS_KEY_ID",
        "BACKUPD_DATABASE_URL",
        "BACKUPD_CONFIG",
        "exit codes",
        "126",
    ):
        assert needed in text, needed


def test_migrate_check_usage_is_its_own() -> None:
    check = next(p for p in PARSERS if p.prog.endswith("migrate check"))
    usage = check.format_usage()
    assert usage.startswith("usage: contentflow-backupd migrate check "), usage
    assert "--" + " COMMAND" not in usage
