import gzip
import json

import pytest

from sftkit.train.data import DataError, load_conversations, mix_in, row_to_turns, split_validation

HB = "<human>: Hi there\n<bot>: Hello!\n<human>: Name?\n<bot>: Bot."


def test_row_formats_become_the_same_turns():
    expected = [("human", "Hi there"), ("bot", "Hello!"), ("human", "Name?"), ("bot", "Bot.")]
    assert row_to_turns({"input": HB, "prompt_type": "human_bot", "source": "x", "id": 1}) == expected
    assert row_to_turns({"text": HB, "metadata": {"source": "oig"}}) == expected
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Name?"}, {"role": "assistant", "content": "Bot."}]
    assert row_to_turns({"messages": messages}) == expected
    sharegpt = [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"},
                {"from": "human", "value": "Name?"}, {"from": "gpt", "value": "Bot."}]
    assert row_to_turns({"messages": sharegpt}) == expected


def test_alpaca_rows_join_instruction_and_input():
    turns = row_to_turns({"instruction": "Translate", "input": "chat", "output": "cat"})
    assert turns == [("human", "Translate\n\nchat"), ("bot", "cat")]
    assert row_to_turns({"instruction": "Say hi", "input": "", "output": "hi"}) == [("human", "Say hi"), ("bot", "hi")]


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
    assert all(":" in c.source for c in convs)


def test_bad_rows_are_counted_and_bad_files_name_themselves(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"input": HB}, {"input": "<human>: no answer here"}, {"question": "x"}, {"input": "<human>: q\n<bot>: "}]))
    convs, stats = load_conversations(str(path))
    assert len(convs) == 1 and sum(stats.skipped.values()) == 3
    assert any("no bot turn" in reason for reason in stats.skipped)

    with pytest.raises(DataError, match="no usable rows.*no usable column"):
        load_conversations(str(path), {"input": "other"})
    (tmp_path / "broken.jsonl").write_text(json.dumps({"input": HB}) + '\n{oops\n[1, 2]\n')
    convs, stats = load_conversations(str(tmp_path / "broken.jsonl"))
    assert len(convs) == 1 and stats.skipped == {"invalid JSON": 1, "row is a list, not a JSON object": 1}
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
