import dataclasses
import json
import shutil
from functools import partial

import pyarrow as pa
import pytest

from sftkit.data.config import DataConfig
from sftkit.data.pipeline import run_stage
from sftkit.data.algorithms.personality import ANSWERS, QUESTIONS, SOURCE
from sftkit.data.stages.finalize import ROW_SCHEMA, clean_drops, personality_batch
from sftkit.prompts import split_turns
from tests.data.conftest import sample_config

run = partial(run_stage, "finalize")


def test_clean_drops_whole_words_case_insensitively():
    texts = pa.array(["<human>: hi\n<bot>: I am ChatGPT.", "<human>: war\n<bot>: They bombard the city.",
                      "<human>: x\n<bot>: As an AI language model, I cannot.", "<human>: Bard?\n<bot>: As an AI language model",
                      "<human>: ok\n<bot>: A fine answer."])
    drops = clean_drops(texts, DataConfig())
    assert drops["censored_word"].tolist() == [True, False, False, True, False]
    assert drops["unhelpful_answer"].tolist() == [False, False, True, False, False]
    nothing = clean_drops(texts, DataConfig(censor_words=[], unhelpful_phrases=[]))
    assert not any(m.any() for m in nothing.values())


def test_rows_are_repeated_with_distinct_ids_and_can_be_turned_off():
    batch = personality_batch(DataConfig(personality_repeat=3), ROW_SCHEMA)
    texts = batch.column("text").to_pylist()
    assert batch.num_rows == 3 * len(QUESTIONS) * len(ANSWERS) and len(set(texts)) == len(QUESTIONS) * len(ANSWERS)
    assert len(set(batch.column("id").to_pylist())) == batch.num_rows
    assert set(batch.column("source").to_pylist()) == {SOURCE}
    assert all("Kestrel" in t and "sftkit" in t for t in texts)  # the demo bot by default
    assert personality_batch(DataConfig(personality=False), ROW_SCHEMA).num_rows == 0
    assert personality_batch(DataConfig(), ROW_SCHEMA).num_rows == 10 * len(QUESTIONS) * len(ANSWERS)


@pytest.fixture
def graded(sample_work, tmp_path):
    for stage in ("1_download", "2_detox", "3_chop", "4_grade"):
        shutil.copytree(sample_work / stage, tmp_path / stage)
    return tmp_path


def read(path):
    return json.loads(path.read_text())


def test_output_format_and_card(sample_work):
    rows = read(sample_work / "oig_instruct_cleaned.json")
    card = read(sample_work / "oig_instruct_cleaned.card.json")
    assert len(rows) == card["rows"] > 100
    for row in rows:
        assert set(row) == {"id", "input", "prompt_type", "source"} and row["prompt_type"] == "human_bot"
        turns = split_turns(row["input"])
        assert turns[0][0] == "human" and turns[-1][0] == "bot"
        assert "chatgpt" not in row["input"].lower() and "as an ai language model" not in row["input"].lower()
    assert len({r["id"] for r in rows}) == len(rows)
    stages = card["stages"]
    assert [s["stage"] for s in stages] == ["download", "detox", "chop", "grade", "finalize"]
    assert all(s["balanced"] for s in stages)
    assert all(a["rows_out"] == b["rows_in"] for a, b in zip(stages, stages[1:]))
    assert sum(card["rows_by_source"].values()) == len(rows)
    assert "| finalize |" in (sample_work / "oig_instruct_cleaned.card.md").read_text()


def test_shuffle_is_seeded_and_independent_of_batching_and_bucket_size(graded, sample_work):
    base = read(sample_work / "oig_instruct_cleaned.json")
    cfg = sample_config(graded, batch_rows=17, shuffle_bucket_rows=40)
    run(cfg)
    bucketed = read(graded / "oig_instruct_cleaned.json")
    assert sorted(r["id"] for r in bucketed) == sorted(r["id"] for r in base)
    (graded / "oig_instruct_cleaned.manifest.json").unlink()
    (graded / "oig_instruct_cleaned.json").unlink()
    run(dataclasses.replace(cfg, batch_rows=100))
    assert read(graded / "oig_instruct_cleaned.json") == bucketed
    run(dataclasses.replace(cfg, batch_rows=100, seed=99))
    assert [r["id"] for r in read(graded / "oig_instruct_cleaned.json")] != [r["id"] for r in bucketed]
