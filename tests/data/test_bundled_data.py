"""The data shipped in data/: the personality set and the held-out identity questions."""
import difflib
import json
from pathlib import Path

from sftkit.prompts import split_turns

DATA = Path(__file__).resolve().parents[2] / "data"


def test_personality_set_answers_as_kestrel():
    rows = json.loads((DATA / "personality.json").read_text())
    assert 80 <= len(rows) <= 150 and len({r["id"] for r in rows}) == len(rows)
    questions = set()
    for row in rows:
        assert set(row) == {"id", "input", "prompt_type", "source"}
        assert row["prompt_type"] == "human_bot" and row["source"] == "personality"
        (human, question), (bot, answer) = split_turns(row["input"])
        assert (human, bot) == ("human", "bot") and "Kestrel" in answer
        questions.add(question.lower())
    assert len(questions) == len(rows)
    assert len({split_turns(r["input"])[1][1] for r in rows}) >= 15  # varied wording


def test_heldout_identity_questions_are_not_in_the_training_set():
    heldout = json.loads((DATA / "identity_heldout.json").read_text())
    assert len(heldout) == 5 and all(set(h) == {"prompt", "expect"} and h["expect"] == "Kestrel" for h in heldout)
    trained = [split_turns(r["input"])[0][1].lower() for r in json.loads((DATA / "personality.json").read_text())]
    for item in heldout:
        closest = max(difflib.SequenceMatcher(None, item["prompt"].lower(), q).ratio() for q in trained)
        assert closest < 0.75, item["prompt"]
