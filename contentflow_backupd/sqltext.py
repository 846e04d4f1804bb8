"""Lexing SQL text without a parser (pure): where a quoted string, a comment or a dollar-quoted
body ends, and splitting a script into statements. Used where the text must stay as written
(user check files, ``migrate batch`` templates); ``migrate/risk.py`` uses PostgreSQL's parser."""

from __future__ import annotations


def split_sql(text: str) -> list[tuple[int, str]]:
    """Split a SQL script into statements at top-level semicolons: not inside quotes
    (``'...'``, ``E'...'``, ``"..."``), dollar quotes (``$tag$...$tag$``) or comments (``--``,
    nested ``/* */``). Returns (line of the statement's first token, statement from that token)
    pairs; comments before a statement and statements that hold only comments are dropped (pure)."""
    out: list[tuple[int, str]] = []
    i, n = 0, len(text)
    first: int | None = None  # index of the current statement's first token

    def flush(end: int) -> None:
        nonlocal first
        if first is not None:
            out.append((text.count("\n", 0, first) + 1, text[first:end].strip()))
        first = None

    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "/" and text.startswith("/*", i):
            i = end_of_block_comment(text, i)
            continue
        if c == ";":
            flush(i)
            i += 1
            continue
        if not c.isspace() and first is None:
            first = i
        if c == "'":
            escapes = (
                i > 0 and text[i - 1] in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            )
            i = end_of_quoted(text, i, "'", backslash=escapes)
        elif c == '"':
            i = end_of_quoted(text, i, '"', backslash=False)
        elif c == "$":
            i = end_of_dollar(text, i)
        else:
            i += 1
    flush(n)
    return out


def end_of_quoted(text: str, i: int, quote: str, *, backslash: bool) -> int:
    j = i + 1
    while j < len(text):
        if backslash and text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            if text.startswith(quote * 2, j):
                j += 2
                continue
            return j + 1
        j += 1
    return len(text)


def end_of_block_comment(text: str, i: int) -> int:
    depth, j = 0, i
    while j < len(text):
        if text.startswith("/*", j):
            depth += 1
            j += 2
        elif text.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    return len(text)


def end_of_dollar(text: str, i: int) -> int:
    """A dollar-quoted string from ``$tag$`` to the same tag; a lone ``$`` (``$1``) is skipped."""
    if i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
        return i + 1  # part of an identifier (a$b)
    j = i + 1
    while j < len(text) and (text[j].isalnum() or text[j] == "_"):
        j += 1
    if j >= len(text) or text[j] != "$" or (j > i + 1 and text[i + 1].isdigit()):
        return i + 1
    tag = text[i : j + 1]
    end = text.find(tag, j + 1)
    return len(text) if end < 0 else end + len(tag)
