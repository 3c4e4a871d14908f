"""Invalid UTF-8 is counted and reported, never silently replaced, in every container; a JSON object is not a
list of rows."""
import json

import pytest

from sftkit.errors import DataError
from sftkit.train.data import load_conversations
from sftkit.train.loop import train
from tests.train.helpers import tiny_config

HB = "<human>: What is two and two?\n<bot>: Four."


def test_jsonl_line_with_invalid_utf8_is_skipped_and_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"input": HB}).encode()
    path.write_bytes(good + b"\n" + b'{"input": "<human>: caf\xe9?\\n<bot>: yes"}\n' + good + b"\n")
    convs, stats = load_conversations(str(path))
    assert len(convs) == 2 and stats.skipped == {"invalid_utf8": 1}
    assert f"1 rows skipped (invalid_utf8: 1; first: {path}:2: not valid UTF-8)" in stats.summary()


def test_json_array_with_invalid_utf8_skips_that_row_like_a_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"input": "<human>: caf\xe9?\\n<bot>: yes"}, ' + json.dumps({"input": HB}).encode() + b"]")
    convs, stats = load_conversations(str(path))
    assert len(convs) == 1 and stats.skipped == {"invalid_utf8": 1} and stats.first_problem == f"{path}:1: not valid UTF-8"
    path.write_text(json.dumps([{"input": HB}]))
    assert load_conversations(str(path))[1].summary() == ""


def test_pretty_printed_object_is_not_a_list_of_rows(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"input": HB, "source": "x"}, indent=2))
    with pytest.raises(DataError, match=r"d.json: expected a list of rows .* keys \['input', 'source'\]"):
        load_conversations(str(path))
    path.write_text(json.dumps({"input": HB}))  # one object on one line: a one-row JSON-lines file
    assert len(load_conversations(str(path))[0]) == 1


def test_training_reports_skipped_rows(tiny_llama, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    rows = [json.dumps({"input": HB}).encode()] * 12 + [b'{"input": "<human>: \xff\\n<bot>: x"}']
    data.write_bytes(b"\n".join(rows))
    metrics = train(tiny_config(tiny_llama, tmp_path, data_path=str(data), max_steps=1))
    assert "1 rows skipped (invalid_utf8: 1" in capsys.readouterr().out
    assert metrics["data"]["rows_skipped"] == {"invalid_utf8": 1}
