"""Correctness of answers to questions with known short answers, beside the reward model's score.

A reward model trained on few pairs can pay for length or confidence rather than truth, and a policy
optimised against it learns to collect that pay (reward hacking). Questions with accepted short
answers make it visible: an eval prompts file whose rows carry ``answers`` (accepted answers) is
checked row by row, and the report shows each model's share of correct answers beside its score.

Rows look like ``{"prompt": "How many days are in a week?", "answers": ["7", "seven"]}``, with an
optional ``"match": "exact"`` (the whole answer must be one of them; default ``contains``: one of
them appears as whole words). Matching ignores case, punctuation and spacing. ``contains`` also
counts an answer that lists several candidates as correct: a lenient check, meant to catch wrong
facts, not to grade style. data/correctness_heldout.json is such a file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

_WORDS = re.compile(r"[^\w]+")


def normalize(text: str) -> str:
    """Lower case, punctuation and runs of spaces as single spaces: '  Paris, France!' -> 'paris france'."""
    return " ".join(_WORDS.sub(" ", text.lower()).split())


def is_correct(response: str, accepted: list[str], match: str = "contains") -> bool:
    answer = f" {normalize(response)} "
    wanted = [normalize(a) for a in accepted if normalize(a)]
    if match == "exact":
        return answer.strip() in wanted
    return any(f" {a} " in answer for a in wanted)


def accepted_answers(path: str | Path) -> dict[str, tuple[list[str], str]]:
    """``{prompt: (accepted answers, match)}`` for the rows of an eval prompts file that carry ``answers``;
    empty when none do (or the file is not a JSON list, which the prompt reader reports)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        rows = ([json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl"
                else json.loads(text))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(rows, list):
        return {}
    found = {}
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("answers"), list):
            found[row["prompt"]] = ([str(a) for a in row["answers"]], str(row.get("match", "contains")))
    return found


def add_correctness(rows: list[dict], answers: dict[str, tuple[list[str], str]]) -> list[dict]:
    """Add ``correct`` (True/False) to every row whose prompt has accepted answers."""
    for row in rows:
        if row["prompt"] in answers:
            accepted, match = answers[row["prompt"]]
            row["correct"] = is_correct(row["response"], accepted, match)
    return rows
