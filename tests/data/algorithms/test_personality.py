"""Personality rows: every question with every answer, the configured identity, repeated, own source."""
import difflib
import json
from pathlib import Path

from sftkit.data.algorithms.personality import ANSWERS, QUESTIONS, SOURCE, personality_texts
from sftkit.prompts import split_turns


def test_templates_use_the_configured_name_and_maker():
    texts = personality_texts("Falco", "Birdworks")
    assert len(texts) == len(set(texts)) == len(QUESTIONS) * len(ANSWERS)
    for text in texts:
        (human, question), (bot, answer) = split_turns(text)
        assert (human, bot) == ("human", "bot") and question in QUESTIONS
        assert "Falco" in answer and "Birdworks" in answer and "Kestrel" not in answer


def test_the_demo_held_out_questions_are_not_among_the_generated_ones():
    heldout = json.loads((Path(__file__).resolve().parents[3] / "data" / "identity_heldout.json").read_text())
    for item in heldout:
        closest = max(difflib.SequenceMatcher(None, item["prompt"].lower(), q.lower()).ratio() for q in QUESTIONS)
        assert closest < 0.75, item["prompt"]
