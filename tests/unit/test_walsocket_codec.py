"""The lean client's own readers and writers (walsocket.py), against the standard library's:
its JSON encoder against ``json``, its plain-TOML reader against ``tomllib``. Property tests
(Hypothesis, no deadline)."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contentflow_backupd.walconf import plain_toml
from contentflow_backupd.walsocket import decode, encode

SETTINGS = settings(deadline=None, max_examples=400)

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text())
messages = st.dictionaries(
    st.text(), st.one_of(scalars, st.dictionaries(st.text(), scalars, max_size=4)), max_size=6
)


@SETTINGS
@given(messages)
def test_the_request_encoder_writes_what_json_reads(message: dict[str, Any]) -> None:
    line = encode(message)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert json.loads(line) == message


@pytest.mark.parametrize("answer", [{"status": "stored"}, {"status": "duplicate"}])
def test_the_common_answers_decode_without_json(answer: dict[str, str]) -> None:
    line = json.dumps(answer, separators=(",", ":")).encode()  # as the daemon writes them
    assert decode(line) == answer


def test_other_answers_go_through_json() -> None:
    assert decode(b'{"error":"a \\"b\\"\\n  hint: c","exit_code":1}') == {
        "error": 'a "b"\n  hint: c',
        "exit_code": 1,
    }
    with pytest.raises(ValueError):
        decode(b"[1]")


# -- plain TOML ---------------------------------------------------------------------------------
names = st.sampled_from(
    ["repository", "cluster", "state_dir", "wal", "s3", "socket", "a-b", "x_1", "a.b", '"q"', "", "é"]
)
strings = st.text(alphabet=st.sampled_from(list("abc/:#'\"\\ \t\x7f\x01é=[]{}")), max_size=12)
values = st.one_of(
    strings.map(lambda s: '"' + s + '"'),
    strings.map(lambda s: "'" + s + "'"),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(
        [
            "true",
            "false",
            "0",
            "+0",
            "-0",
            "007",
            "1_000",
            "1e3",
            "1.5",
            "0x1F",
            "[1, 2]",
            "{ a = 1 }",
            '"""x"""',
            "'''x'''",
            '"a" "b"',
            '"x" # note',
            "2026-12-07",
            "",
            "nan",
            "TRUE",
        ]
    ),
)
lines = st.one_of(
    st.tuples(names, values).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.tuples(names, values).map(lambda kv: f"{kv[0]}={kv[1]}"),
    names.map(lambda n: f"[{n}]"),
    st.lists(names, min_size=1, max_size=3).map(lambda ns: "[" + ".".join(ns) + "]"),
    st.sampled_from(["[clusters.a]", "[clusters.a.wal]", "[clusters.b]", "[clusters]", "[a .b]", "[a..b]"]),
    names.map(lambda n: f"[ {n} ] # t"),
    names.map(lambda n: f"[[{n}]]"),
    st.sampled_from(["", "# comment", "   ", "\t# x", "[wal]x", "key", "= 1", "\ufeffa = 1"]),
)


@SETTINGS
@given(st.lists(lines, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_the_plain_reader_agrees_with_tomllib_or_steps_aside(body: list[str], newline: str) -> None:
    text = newline.join(body)
    ours = plain_toml(text)
    try:
        theirs = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assert ours is None, f"accepted invalid TOML: {text!r}"
        return
    assert ours is None or ours == theirs, text


def test_the_configurations_of_the_docs_are_plain() -> None:
    text = (
        "# /etc/contentflow-backupd/config.toml\n"
        'repository = "s3://my-bucket/pg/prod"\n'
        "database_url = 'postgresql://backup@127.0.0.1/postgres'\n"
        'mode = "physical"   # physical backups\n'
        "\n[encryption]\n"
        'key_file = "/etc/contentflow-backupd/key"     # faster than a passphrase\n'
        "[wal]\narchive_timeout = 30\nprefetch = 8\n"
        '[s3]\nendpoint_url = "http://minio:9000/#x"\nforce_path_style = true\n'
    )
    assert plain_toml(text) == tomllib.loads(text)


def test_a_fleet_of_named_clusters_is_plain() -> None:
    text = 'repository = "file:///r"\n[clusters.wal]\nx = 1\n' + "".join(
        f'[clusters.pg-{i}]\ndatabase_url = "postgresql://h{i}/db"\n[clusters.pg-{i}.wal]\nprefetch = {i}\n'
        for i in range(50)
    )
    text += "[clusters]\nspread = 'later: a super-table defined after its sub-tables'\n"
    assert plain_toml(text) == tomllib.loads(text)
    for bad in ("[a]\nb = 1\n[a.b]\n", "[a.b]\n[a]\nb = 1\n", "[a.b]\n[a.b]\n", "[a]\n[a]\n"):
        assert plain_toml(bad) is None, bad
