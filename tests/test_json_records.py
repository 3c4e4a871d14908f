"""Defensive JSON records: nesting and lone surrogates are reasons, the rest parses as json does (JSON lists
item by item: tests/test_rows.py)."""
import json

import pytest

from sftkit import json_records
from sftkit.json_records import BAD_JSON, LONE_SURROGATE, MAX_DEPTH, TOO_DEEP, parse_record


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_reasons_for_a_record():
    assert parse_record('{"a": [1, "x"]}') == ({"a": [1, "x"]}, None)
    assert parse_record("{oops") == (None, BAD_JSON)
    assert parse_record(nested(MAX_DEPTH)) == (json.loads(nested(MAX_DEPTH)), None)
    assert parse_record(nested(MAX_DEPTH + 1)) == (None, TOO_DEEP)  # parses, but deeper than the limit
    assert parse_record(nested(200_000)) == (None, TOO_DEEP)  # json.loads itself gives up
    assert parse_record('{"t": "a\\ud800"}') == (None, LONE_SURROGATE)
    assert parse_record('{"\\udc00": 1}') == (None, LONE_SURROGATE)
    # a surrogate pair is one character, and an escaped backslash before "u" is no escape at all
    assert parse_record('{"t": "\\ud83d\\ude00 \\\\ud800"}') == ({"t": "\U0001F600 \\ud800"}, None)


def test_depth_is_counted_without_recursion():
    deep: list = []
    for _ in range(5 * MAX_DEPTH):
        deep = [deep]
    assert json_records._problem(deep) == TOO_DEEP  # a recursive walk would raise RecursionError here
