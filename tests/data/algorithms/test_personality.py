"""Personality rows: every question with every answer, the configured identity, repeated, own source."""
import difflib
import json
from pathlib import Path

import pyarrow as pa

from sftkit.data.config import DataConfig
from sftkit.data.stages.finalize_extras import personality_batch
from sftkit.data.algorithms.personality import ANSWERS, QUESTIONS, SOURCE, personality_texts
from sftkit.prompts import split_turns

SCHEMA = pa.schema([("id", pa.uint64()), ("text", pa.string()), ("source", pa.string())])


def test_templates_use_the_configured_name_and_maker():
    texts = personality_texts("Falco", "Birdworks")
    assert len(texts) == len(set(texts)) == len(QUESTIONS) * len(ANSWERS)
    for text in texts:
        (human, question), (bot, answer) = split_turns(text)
        assert (human, bot) == ("human", "bot") and question in QUESTIONS
        assert "Falco" in answer and "Birdworks" in answer and "Kestrel" not in answer


def test_rows_are_repeated_with_distinct_ids_and_can_be_turned_off():
    batch = personality_batch(DataConfig(personality_repeat=3), SCHEMA)
    texts = batch.column("text").to_pylist()
    assert batch.num_rows == 3 * len(QUESTIONS) * len(ANSWERS) and len(set(texts)) == len(QUESTIONS) * len(ANSWERS)
    assert len(set(batch.column("id").to_pylist())) == batch.num_rows
    assert set(batch.column("source").to_pylist()) == {SOURCE}
    assert all("Kestrel" in t and "sftkit" in t for t in texts)  # the demo bot by default
    assert personality_batch(DataConfig(personality=False), SCHEMA).num_rows == 0
    assert personality_batch(DataConfig(), SCHEMA).num_rows == 10 * len(QUESTIONS) * len(ANSWERS)


def test_the_demo_held_out_questions_are_not_among_the_generated_ones():
    heldout = json.loads((Path(__file__).resolve().parents[3] / "data" / "identity_heldout.json").read_text())
    for item in heldout:
        closest = max(difflib.SequenceMatcher(None, item["prompt"].lower(), q.lower()).ratio() for q in QUESTIONS)
        assert closest < 0.75, item["prompt"]
