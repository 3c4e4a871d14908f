import gzip
import json

import pytest

from sftkit.prompts import PromptError
from sftkit.train.data import DataError, load_conversations, mix_in, split_validation

HB = "<human>: Hi there\n<bot>: Hello!\n<human>: Name?\n<bot>: Bot."


def test_file_formats_directory_and_col_dict(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    json.dump([{"q": "a?", "a": "b"}], open(tmp_path / "d" / "one.json", "w"))
    with gzip.open(tmp_path / "d" / "two.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"q": "c?", "a": "d"}) + "\n\n" + json.dumps({"q": "e?", "a": "f"}) + "\n")
    pq.write_table(pa.Table.from_pylist([{"q": "g?", "a": "h"}]), tmp_path / "d" / "three.parquet")
    convs, stats = load_conversations(str(tmp_path / "d"), {"q": "instruction", "a": "output"})
    assert stats.rows == 4 and not stats.skipped
    assert sorted(c.turns[1][1] for c in convs) == ["b", "d", "f", "h"]
    assert sorted(c.where.rsplit("/", 1)[1] for c in convs) == ["one.json:1", "three.parquet:1", "two.jsonl.gz:1", "two.jsonl.gz:3"]


def test_bad_rows_are_counted_and_bad_files_name_themselves(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"input": HB}, {"input": "<human>: no answer here"}, {"question": "x"}, {"input": "<human>: q\n<bot>: "}]))
    convs, stats = load_conversations(str(path))
    assert len(convs) == 1 and stats.skipped == {"no_bot_turn": 1, "unknown_shape": 1, "empty_turn": 1}
    assert stats.first_problem == f"{path}:2: the conversation has no bot turn, so there is nothing to learn"

    with pytest.raises(DataError, match=r"no usable rows.*d.jsonl:1: no usable column"):
        load_conversations(str(path), {"input": "other"})
    (tmp_path / "broken.jsonl").write_text(json.dumps({"input": HB}) + '\n{oops\n[1, 2]\n')
    convs, stats = load_conversations(str(tmp_path / "broken.jsonl"))
    assert len(convs) == 1 and stats.skipped == {"bad_json": 1, "not_an_object": 1}
    (tmp_path / "broken.json").write_text('[{"input": 1},')
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 1"):
        load_conversations(str(tmp_path / "broken.json"))
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match="empty"):
        load_conversations(str(tmp_path / "empty.json"))
    with pytest.raises(DataError, match="does_not_exist.json: no such file"):
        load_conversations(str(tmp_path / "does_not_exist.json"))


def test_mix_in_adds_rows_in_proportion():
    base, extra = list(range(100)), [f"p{i}" for i in range(7)]
    mixed = mix_in(base, extra, 0.2, seed=0)
    assert len(mixed) == 120 and sum(isinstance(x, str) for x in mixed) == 20
    assert set(x for x in mixed if isinstance(x, str)) == set(extra)  # 20 > 7: every extra row, then samples
    assert mix_in(base, extra, 0.0, seed=0) == base


def test_split_validation_is_seeded_and_disjoint():
    items = list(range(50))
    train, val = split_validation(items, 0.1, seed=3)
    assert len(val) == 5 and sorted(train + val) == items
    assert split_validation(items, 0.1, seed=3) == (train, val)
    assert len(split_validation(items, 7, seed=3)[1]) == 7
    with pytest.raises(DataError, match="val_set_size"):
        split_validation(items, 50, seed=0)


H2OGPT_ROW = {"input": "<human>: Who are you?\n<bot>: I am h2oGPT.\n<human>:", "prompt_type": "plain"}


def test_rows_prompt_type_column_is_honoured_unless_the_flag_is_given(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [H2OGPT_ROW, {"instruction": "Add 2 and 2.", "output": "4", "prompt_type": 1},
            {"instruction": "Hi", "output": "Hello", "prompt_type": "13"}, {"instruction": "Hey", "output": "Yo"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    convs, stats = load_conversations(str(path))
    assert [c.prompt_type for c in convs] == ["plain", "instruct", "wizard_mega", "human_bot"]
    assert convs[0].text == H2OGPT_ROW["input"]
    assert stats.prompt_type_from == {"the rows' prompt_type column": 3, "default (human_bot; no prompt_type column)": 1}
    assert "3 by the rows' prompt_type column" in stats.prompt_type_summary()

    convs, stats = load_conversations(str(path), prompt_type="3")
    assert {c.prompt_type for c in convs} == {"human_bot"}
    assert stats.prompt_type_from == {"--prompt_type": 4}
    assert stats.overridden == {"plain": 1, "instruct": 1, "wizard_mega": 1}
    assert "--prompt_type overrode the rows' own prompt_type column" in stats.prompt_type_summary()


def test_unknown_prompt_types_are_named(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([H2OGPT_ROW, {**H2OGPT_ROW, "prompt_type": "alpacca"}]))
    convs, stats = load_conversations(str(path))
    assert len(convs) == 1 and stats.skipped == {"unknown_prompt_type": 1}
    assert "rows.json:2: unknown prompt_type" in stats.first_problem
    with pytest.raises(PromptError, match="unknown prompt_type 'alpaca'.*human_bot \\(3\\)"):
        load_conversations(str(path), prompt_type="alpaca")


def test_plain_keeps_text_without_markers_other_types_skip_it(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"text": "Once upon a time there was a fox."}, {"text": "  "}]))
    convs, stats = load_conversations(str(path), prompt_type="plain")
    assert [c.text for c in convs] == ["Once upon a time there was a fox."] and stats.skipped == {"empty_text": 1}
    with pytest.raises(DataError, match="no usable rows.*no bot turn"):
        load_conversations(str(path), prompt_type="human_bot")


def test_h2ogpt_context_column_goes_before_the_prompt(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"instruction": "Q", "output": "A", "context": "Background. "},
                                {"input": "<human>: Q\n<bot>: A", "context": "Before. ", "prompt_type": "plain"}]))
    alpaca, text = load_conversations(str(path))[0]
    assert alpaca.turns == [("context", "Background. "), ("human", "Q"), ("bot", "A")]
    assert text.text == "Before. <human>: Q\n<bot>: A" and text.turns[0] == ("context", "Before. ")
