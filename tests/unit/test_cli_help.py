"""Every command's --help renders (argparse %-formats help strings: a stray % crashes it)."""

from __future__ import annotations

import argparse

import pytest

from contentflow_backupd.cli import build_parser


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parsers(sub))
    return found


@pytest.mark.parametrize("parser", _parsers(build_parser()), ids=lambda p: p.prog)
def test_help_renders(parser: argparse.ArgumentParser) -> None:
    assert parser.format_help()
