"""JSON records read defensively: a record a user brings parses into a value or a reason, never an exception.

Two things in valid JSON break everything after the parser: nesting (``json.loads`` recurses once per
level and raises ``RecursionError`` somewhere near a thousand, a depth that also depends on how deep
the caller's stack already is) and lone surrogates (a ``"\\ud800"`` escape gives a Python string that
no UTF-8 writer accepts: parquet, tokenizers and JSON files written with ``ensure_ascii=False`` all
raise). So a record nested deeper than :data:`MAX_DEPTH` levels is ``nested_too_deep`` whatever the
stack, and one holding a lone surrogate is ``lone_surrogate``; both are rejects with their reason,
like a line that is not JSON (``bad_json``). A JSON list is read item by item, so one such item is
rejected alone instead of taking the whole file with it. Every walk here is iterative.
"""
from __future__ import annotations

import json
import re
from typing import Iterator

MAX_DEPTH = 512  # far beyond any real record (an OpenAssistant export line nests two levels per message)
BAD_JSON, TOO_DEEP, LONE_SURROGATE = "bad_json", "nested_too_deep", "lone_surrogate"
# Each reason in words, for messages: "<reason words>; <where> <explanation>".
EXPLAINED = {BAD_JSON: ("invalid JSON", "is not valid JSON"),
             TOO_DEEP: ("nested too deep", f"nests arrays or objects deeper than {MAX_DEPTH} levels"),
             LONE_SURROGATE: ("lone surrogate", "holds a lone surrogate (a \\ud800-\\udfff escape without its "
                                                "pair), which UTF-8 text cannot hold")}

_SURROGATE = re.compile("[\ud800-\udfff]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A JSON string (escapes included) or a bracket: enough to find where a value too deep to parse ends.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_decoder = json.JSONDecoder()


def _problem(value) -> str | None:
    """TOO_DEEP or LONE_SURROGATE for a parsed value that has one, else None (an iterative walk)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return LONE_SURROGATE
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                return TOO_DEEP
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                item = item.values()
            stack.extend((child, depth + 1) for child in item)
    return None


def _needs_walk(text: str) -> bool:
    """Whether a parsed record could be too deep or hold a surrogate: more brackets than MAX_DEPTH, a
    \\u escape or a surrogate in the text (cheap tests on the text, so most records are never walked)."""
    return ("\\u" in text or text.count("[") + text.count("{") > MAX_DEPTH
            or _SURROGATE.search(text) is not None)


def parse_record(text: str) -> tuple[object, str | None]:
    """``(record, None)``, or ``(None, reason)`` with reason BAD_JSON, TOO_DEEP or LONE_SURROGATE."""
    try:
        record = json.loads(text)
    except RecursionError:
        return None, TOO_DEEP
    except ValueError:
        return None, BAD_JSON
    problem = _problem(record) if _needs_walk(text) else None
    return (None, problem) if problem else (record, None)


def _value_end(text: str, start: int) -> int:
    """Where the (well-bracketed) value starting at ``start`` ends, found without parsing it."""
    depth = 0
    for token in _TOKEN.finditer(text, start):
        mark = token.group()
        if mark in "[{":
            depth += 1
        elif mark in "]}":
            depth -= 1
            if depth == 0:
                return token.end()
    raise ValueError("unterminated array or object")


def list_records(text: str) -> Iterator[tuple[object, str | None, str]]:
    """``(record, reason, excerpt)`` for each item of the JSON array ``text``, each parsed on its own.

    Raises ``ValueError`` (``json.JSONDecodeError``) when ``text`` is not one JSON array; the items
    already yielded stay valid.
    """
    pos = _WHITESPACE.match(text, 0).end()
    if not text.startswith("[", pos):
        raise json.JSONDecodeError("expected a JSON array", text, pos)
    pos = _WHITESPACE.match(text, pos + 1).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            excerpt = text[pos:pos + 200]
            try:
                record, end = _decoder.raw_decode(text, pos)
                problem = _problem(record) if _needs_walk(text[pos:end]) else None
                yield (None, problem, excerpt) if problem else (record, None, excerpt)
            except RecursionError:
                end = _value_end(text, pos)
                yield None, TOO_DEEP, excerpt
            pos = _WHITESPACE.match(text, end).end()
            if text.startswith("]", pos):
                pos += 1
                break
            if not text.startswith(",", pos):
                raise json.JSONDecodeError("expected ',' or ']' between the items of the array", text, pos)
            pos = _WHITESPACE.match(text, pos + 1).end()
    if _WHITESPACE.match(text, pos).end() != len(text):
        raise json.JSONDecodeError("extra data after the array", text, pos)
