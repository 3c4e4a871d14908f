import json

import pytest

from sftkit.data.inputs.oig import parse_line


def test_good_line():
    line = json.dumps({"text": "<human>: hi\n<bot>: hello", "metadata": {"source": "chip2"}}).encode()
    assert parse_line(line) == ("<human>: hi\n<bot>: hello", "chip2")
    assert parse_line(json.dumps({"text": "<human>: a\n<bot>: b"}).encode()) == ("<human>: a\n<bot>: b", None)


@pytest.mark.parametrize("raw, reason", [
    (b'{"text": "<human>: caf\xe9\\n<bot>: x"}', "invalid_utf8"),
    (b'{"text": "<human>: a\\n<bot>: b"', "bad_json"),
    (b'["<human>: a", "<bot>: b"]', "not_an_object"),
    (b'{"metadata": {}}', "missing_text"),
    (b'{"text": 3}', "missing_text"),
    (b'{"text": "  "}', "empty_text"),
    (b'{"text": "<bot>: an answer without a question"}', "no_human_turn"),
    (b'{"text": "<human>: nobody answered"}', "no_bot_turn"),
])
def test_malformed_lines_name_their_reason(raw, reason):
    assert parse_line(raw) == (None, reason)
