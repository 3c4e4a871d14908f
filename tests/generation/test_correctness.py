"""Correctness on questions with known short answers: matching, the bundled held-out set, the batch report."""
import json
from pathlib import Path

from sftkit.generation.batch import read_prompts, run_batch
from sftkit.generation.correctness import accepted_answers, is_correct, normalize
from tests.generation.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


def test_matching_ignores_case_punctuation_and_spacing_but_wants_whole_words():
    assert normalize("  The capital is MADRID!  ") == "the capital is madrid"
    assert is_correct("The capital of Spain is Madrid.", ["Madrid"])
    assert is_correct("A week has seven days", ["7", "seven"])
    assert not is_correct("A week has 30 days.", ["7", "seven"])
    assert not is_correct("Iron is written Fer", ["Fe"])  # whole words only
    assert is_correct("blue  whale", ["blue whale"]) and not is_correct("a blue car and a whale", ["blue whale"])
    assert is_correct("Mice.", ["mice"], match="exact") and not is_correct("Two mice", ["mice"], match="exact")


def test_the_bundled_held_out_set_is_held_out_and_readable_as_prompts():
    path = REPO / "data" / "correctness_heldout.json"
    answers = accepted_answers(path)
    prompts = [p.text for p in read_prompts(path)]
    assert 30 <= len(answers) <= 60 and set(answers) == set(prompts)
    assert all(accepted and match == "contains" for accepted, match in answers.values())
    pairs = (REPO / "data" / "preference_sample.json").read_text().lower()
    assert not [p for p in prompts if p.lower() in pairs]  # none of them trained the reward model


def test_rows_without_answers_or_other_files_give_nothing(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(["Who are you?", {"prompt": "Hi", "answers": ["hello"]}]))
    assert accepted_answers(tmp_path / "p.json") == {"Hi": (["hello"], "contains")}
    (tmp_path / "bad.json").write_text("{not json")
    assert accepted_answers(tmp_path / "bad.json") == {} and accepted_answers(tmp_path / "missing.json") == {}


def test_batch_mode_marks_each_answer_and_reports_the_share_with_an_interval(tiny_llama, two_adapters,
                                                                           tiny_reward_model, tmp_path):
    prompts = ["What is the capital of France?", "Who are you?", "Add two and two."]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    config = tiny_config(tiny_llama, lora_weights=f"base=,tuned={two_adapters['tuned']}", batch_size=3,
                         eval_prompts_file=str(tmp_path / "p.json"), eval_output_file=str(tmp_path / "a.json"),
                         max_new_tokens=8, score_model=tiny_reward_model)
    first = run_batch(config)
    assert all("correct" not in r for r in first)  # no answers given: nothing to check
    base = {r["prompt"]: r["response"] for r in first if r["model"] == "base"}
    # Accept what the base model said to the first two prompts, and something nobody says to the third.
    rows = [{"prompt": p, "answers": [normalize(base[p]) if i < 2 else "zzyzx"]} for i, p in enumerate(prompts)]
    assert all(normalize(base[p]) for p in prompts[:2])
    (tmp_path / "p.json").write_text(json.dumps(rows))
    from dataclasses import replace

    again = run_batch(replace(config, overwrite=True))
    assert [r["correct"] for r in again if r["model"] == "base"] == [True, True, False]
    assert json.loads((tmp_path / "a.json").read_text()) == again
    report = (tmp_path / "a_report" / "report.md").read_text()
    assert "## Correctness on questions with known answers" in report
    assert "| base | 2/3 | 0.67 [" in report
