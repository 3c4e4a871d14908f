"""Input formats: detection per file, every reader on good and malformed records, every container."""
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftkit.data import DataError
from sftkit.data.inputs import formats

ROOT = Path(__file__).resolve().parents[3]
OPTIONS = formats.ReadOptions()


def write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    data = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"
    with (gzip.open(path, "wt", encoding="utf-8") if gz else open(path, "w", encoding="utf-8")) as fh:
        fh.write(data)
    return path


def units(path: Path, requested: str = "auto") -> tuple[str, list[formats.Unit]]:
    fmt = formats.detect(path, requested)
    return fmt.name, list(formats.read_units(path, path.name, fmt, OPTIONS))


@pytest.mark.parametrize("path, expected", [
    ("data/sample/oasst_sample_trees.jsonl.gz", "oasst_trees"),
    ("data/formats/oasst_sample_messages.parquet", "oasst_messages"),
    ("data/sample/sharegpt_sample.jsonl.gz", "sharegpt"),
    ("data/formats/sharegpt_sample.json", "sharegpt"),
    ("data/sample/alpaca_sample.jsonl.gz", "alpaca"),
    ("data/sample/messages_sample.jsonl.gz", "messages"),
    ("data/formats/h2ogpt_sample.json", "h2ogpt"),
    ("data/sample/unified_sample_dialog.jsonl.gz", "oig"),
])
def test_each_shipped_file_is_detected_and_read(path, expected):
    name, found = units(ROOT / path)
    assert name == expected
    texts = [t for u in found for t in u.texts]
    assert texts and all("<human>: " in t and "\n<bot>: " in t for t in texts)


def test_flat_table_and_export_give_the_same_conversations():
    _, flat = units(ROOT / "data/formats/oasst_sample_messages.parquet")
    _, nested = units(ROOT / "data/sample/oasst_sample_trees.jsonl.gz")
    assert [u.texts for u in flat] == [u.texts for u in nested[:12]]
    assert sum(u.events["merged_rows"] for u in flat) > 0


MALFORMED = {
    "sharegpt": ([{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}],
                 [({"conversations": "not a list"}, "no_turns"),
                  ({"conversations": [{"from": "human", "value": "Q"}, {"from": "alien", "value": "A"}]},
                   "unknown_speaker"),
                  ({"conversations": [{"from": "human", "value": "Q"}]}, "no_bot_turn"),
                  ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "A"}]}, "bad_turn"),
                  ({"conversations": [{"from": "human", "value": "Q <bot>: x"}, {"from": "gpt", "value": "A"}]},
                   "turn_marker_in_text")]),
    "alpaca": ([{"instruction": "Q", "input": "", "output": "A"}],
               [({"instruction": "", "output": "Done"}, "missing_instruction"),
                ({"instruction": "Do X", "input": 5, "output": "Done"}, "bad_input"),
                ({"instruction": "Do X"}, "missing_output")]),
    "messages": ([{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}],
                 [({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]},
                   "empty_turn"),
                  ({"messages": [{"role": "assistant", "content": "A"}]}, "no_human_turn")]),
    "h2ogpt": ([{"input": "<human>: Q\n<bot>: A\n<human>:", "prompt_type": "plain"}],
               [({"input": "<human>: Q", "prompt_type": "plain"}, "no_bot_turn"),
                ({"input": "### Instruction: Q", "prompt_type": "instruct"}, "unsupported_prompt_type")]),
    "oig": ([{"text": "<human>: Q\n<bot>: A"}],
            [({"text": "   "}, "empty_text"), ({"metadata": {}}, "missing_text"), (["a list"], "not_an_object")]),
    "oasst_trees": ([{"message_tree_id": "t1", "tree_state": "ready_for_export",
                      "prompt": {"message_id": "m1", "role": "prompter", "text": "Q", "lang": "en",
                                 "replies": [{"message_id": "m2", "role": "assistant", "text": "A", "lang": "en"}]}}],
                    [({"message_tree_id": "t2", "prompt": "not an object"}, "oasst_missing_prompt"),
                     ({"message_tree_id": "t3", "prompt": {"role": "prompter", "text": "no id"}},
                      "oasst_no_valid_root")]),
    "oasst_messages": ([{"message_id": "m1", "parent_id": None, "message_tree_id": "t1", "role": "prompter",
                         "text": "Q", "lang": "en"},
                        {"message_id": "m2", "parent_id": "m1", "message_tree_id": "t1", "role": "assistant",
                         "text": "A", "lang": "en"}],
                       [({"message_id": "m3", "parent_id": "m1", "message_tree_id": "t1", "role": "robot",
                          "text": "A"}, "message_bad_role"),
                        ({"message_id": "m4", "parent_id": "m1", "role": "assistant", "text": "A"},
                         "message_missing_tree_id")]),
}


@pytest.mark.parametrize("fmt", sorted(MALFORMED))
def test_malformed_records_become_rejects_with_reasons(tmp_path, fmt):
    good, bad = MALFORMED[fmt]
    path = write_jsonl(tmp_path / f"{fmt}.jsonl", good + [r for r, _ in bad] + ["{broken json", b"\xff".decode("latin-1")])
    name, found = units(path, fmt)
    rejected = [(u.reason, u.malformed) for u in found if not u.texts]
    assert [reason for reason, _ in rejected] == [reason for _, reason in bad] + ["bad_json", "bad_json"]
    assert all(malformed for _, malformed in rejected)
    assert [t for u in found for t in u.texts] == ["<human>: Q\n<bot>: A"]


def test_invalid_utf8_is_a_reject_not_a_crash(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "<human>: Q\\n<bot>: A"}\n{"text": "caf\xe9"}\n')
    assert [u.reason for u in units(path)[1]] == [None, "invalid_utf8"]


def test_json_list_gzip_and_parquet_containers(tmp_path):
    records = [{"instruction": f"Explain item {i}", "input": "", "output": f"Item {i} explained."} for i in range(3)]
    list_gz = tmp_path / "a.json.gz"
    with gzip.open(list_gz, "wt") as fh:
        json.dump(records, fh)
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    jsonl_gz = write_jsonl(tmp_path / "a.jsonl.gz", records, gz=True)
    expected = [[f"<human>: Explain item {i}\n<bot>: Item {i} explained."] for i in range(3)]
    for path in (list_gz, parquet, jsonl_gz):
        name, found = units(path)
        assert name == "alpaca" and [u.texts for u in found] == expected and [u.line for u in found] == [1, 2, 3]


def test_other_speaker_spellings_are_detected_and_said():
    fmt = formats.detect(ROOT / "data/formats/oig_other_speakers.jsonl")
    assert fmt.speakers == (("<user>:", "<human>:"), ("<assistant>:", "<bot>:"))
    assert "<user>: read as <human>:" in fmt.describe()
    found = list(formats.read_units(ROOT / "data/formats/oig_other_speakers.jsonl", "x", fmt, OPTIONS))
    assert found and all(u.texts[0].startswith("<human>: ") and "<bot>: " in u.texts[0] for u in found)


def test_unknown_speakers_and_unknown_formats_are_clear_errors(tmp_path):
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "<teacher>: Q\n<pupil>: A"}])
    with pytest.raises(DataError, match=r"odd.jsonl.*<teacher>:"):
        formats.detect(odd)
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"question": "Q", "answer": "A"}])
    with pytest.raises(DataError, match=r"unknown.jsonl.*--input_format"):
        formats.detect(unknown)
    with pytest.raises(DataError, match="--input_format=csv"):
        formats.detect(unknown, "csv")
    for pairs in ("sharegpt_ranking.json", "hh_rlhf_pairs.jsonl", "alpaca_ranking.json"):
        with pytest.raises(DataError, match=rf"{pairs}: holds preference pairs .* finetune.py --stage=rm"):
            formats.detect(ROOT / "data/formats" / pairs)


def test_a_bare_speaker_label_is_named_in_the_error(tmp_path):
    """OIG's joke-explanation file writes its answers after a bare label ("Rosey: ..."), not a bot tag."""
    jokes = write_jsonl(tmp_path / "jokes.jsonl", [{"text": f"<human>: Explain joke number {i}.\nRosey: It plays "
                                                            "on a double meaning of a word."} for i in range(5)])
    with pytest.raises(DataError) as failed:
        formats.detect(jokes)
    message = str(failed.value)
    assert "no bot tag" in message and "Rosey:" in message and "rewrite Rosey: as <bot>:" in message
    assert "\n" not in message


def test_oasst_tree_units_carry_pairs_and_events():
    _, found = units(ROOT / "data/sample/oasst_sample_trees.jsonl.gz")
    assert any(len(u.texts) > 1 for u in found) and any(u.pairs for u in found)
    assert {u.reason for u in found if not u.texts} == {"oasst_root_removed", "oasst_tree_not_exported"}
    pair = next(p for u in found for p in u.pairs)
    assert set(pair) == {"prompt", "chosen", "rejected", "source"} and pair["prompt"][0]["role"] == "user"


def test_oig_lines_keep_their_source():
    found = list(formats.read_units(ROOT / "data/sample/unified_sample_dialog.jsonl.gz", "x", formats.FileFormat("oig"),
                                    OPTIONS))
    assert any(u.source for u in found if u.texts)


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
def test_malformed_oig_lines_name_their_reason(tmp_path, raw, reason):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "<human>: a\\n<bot>: b"}\n' + raw + b"\n")
    good, bad = formats.read_units(path, "x", formats.FileFormat("oig"), OPTIONS)
    assert good.texts == ["<human>: a\n<bot>: b"]
    assert (bad.reason, bad.malformed, bad.texts) == (reason, True, [])


def test_a_tool_conversation_is_kept_its_text_the_natural_language_turns(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Area of a 2x3 rectangle?"},
                             {"from": "function_call", "value": '{"name": "area", "arguments": {"w": 2, "h": 3}}'},
                             {"from": "observation", "value": '{"area": 6}'}, {"from": "gpt", "value": "It is 6."}],
           "tools": [{"name": "area", "parameters": {"type": "object"}}]}
    path = write_jsonl(tmp_path / "tools.jsonl", [row])
    (unit,) = units(path)[1]
    assert unit.reason is None and unit.texts == ["<human>: Area of a 2x3 rectangle?\n<bot>: It is 6."]
    turns, tools = unit.tools[0]
    assert [role for role, _ in turns] == ["human", "tool_call", "tool", "bot"]
    assert tools[0]["function"]["name"] == "area"
