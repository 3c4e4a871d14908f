"""JSON records read defensively: a record a user brings parses into a value or a reason, never an exception.

Two things in valid JSON break everything after the parser: nesting (``json.loads`` recurses once per
level and raises ``RecursionError`` somewhere near a thousand, a depth that also depends on how deep
the caller's stack already is) and lone surrogates (a ``"\\ud800"`` escape gives a Python string that
no UTF-8 writer accepts: parquet, tokenizers and JSON files written with ``ensure_ascii=False`` all
raise). So a record nested deeper than :data:`MAX_DEPTH` levels is ``nested_too_deep`` whatever the
stack, and one holding a lone surrogate is ``lone_surrogate``; both are rejects with their reason,
like a line that is not JSON (``bad_json``). :mod:`sftkit.rows` reads a JSON list item by item with
these checks, so one such item is rejected alone instead of taking the whole file with it. Every
walk here is iterative.
"""
from __future__ import annotations

import json
import re

MAX_DEPTH = 512  # far beyond any real record (an OpenAssistant export line nests two levels per message)
BAD_JSON, TOO_DEEP, LONE_SURROGATE = "bad_json", "nested_too_deep", "lone_surrogate"
# Each reason in words, for messages: "<reason words>; <where> <explanation>".
EXPLAINED = {BAD_JSON: ("invalid JSON", "is not valid JSON"),
             TOO_DEEP: ("nested too deep", f"nests arrays or objects deeper than {MAX_DEPTH} levels"),
             LONE_SURROGATE: ("lone surrogate", "holds a lone surrogate (a \\ud800-\\udfff escape without its "
                                                "pair), which UTF-8 text cannot hold")}

_SURROGATE = re.compile("[\ud800-\udfff]")


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
            or (not text.isascii() and _SURROGATE.search(text) is not None))  # isascii: a flag, no scan


def value_problem(text: str, value) -> str | None:
    """TOO_DEEP or LONE_SURROGATE for a value parsed from ``text`` that has one, else None."""
    return _problem(value) if _needs_walk(text) else None


def parse_record(text: str) -> tuple[object, str | None]:
    """``(record, None)``, or ``(None, reason)`` with reason BAD_JSON, TOO_DEEP or LONE_SURROGATE."""
    try:
        record = json.loads(text)
    except RecursionError:
        return None, TOO_DEEP
    except ValueError:
        return None, BAD_JSON
    problem = value_problem(text, record)
    return (None, problem) if problem else (record, None)
