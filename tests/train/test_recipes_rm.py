"""Reward-model training (--stage=rm) on a learnable toy preference set, through the shared scorer."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from sftkit.data.stages.grade import question_and_answer
from sftkit.reward import RewardModelScorer
from sftkit.train.loop import train
from tests.train.toy_preferences import pair_config, toy_pairs

ROOT = Path(__file__).resolve().parents[2]


def test_reward_model_learns_the_preferences_and_scores_through_the_shared_scorer(tiny_llama, tmp_path):
    metrics = train(pair_config(tiny_llama, tmp_path, "rm", max_steps=6, eval_steps=3))
    losses = [h["loss"] for h in metrics["history"] if "loss" in h]
    assert losses[-1] < losses[0] - 0.2, losses
    assert metrics["eval_accuracy"] > 0.5 and metrics["eval_margin"] > 0, metrics
    assert metrics["run"]["loss_unit"] == "pair" and metrics["data"]["valid"]["kept"] == 8

    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert json.loads((out / "config.json").read_text())["sftkit_prompt_type"] == "human_bot"
    scorer = RewardModelScorer(str(out), device="cpu", batch_size=3)
    assert scorer.prompt_type == "human_bot"
    rows = toy_pairs()
    chosen = scorer.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = scorer.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert sum(c > r for c, r in zip(chosen, rejected)) > len(rows) / 2
    # The merged, reloaded model gives the rewards training measured (scores are sigmoid(reward)).
    validation = json.loads((tmp_path / "pairs.json").read_text())
    from sftkit.train.data import split_validation

    _, held = split_validation(validation, 8, 0)
    scores = scorer.score([r["prompt"] for r in held], [r["chosen"] for r in held])
    mean_reward = sum(math.log(s / (1 - s)) for s in scores) / len(scores)
    assert abs(mean_reward - metrics["eval_reward_chosen"]) < 1e-3 * max(1, abs(mean_reward))


@pytest.mark.slow
def test_a_trained_reward_model_grades_data_and_scores_answers_through_the_commands(tiny_llama, tmp_path):
    """finetune.py --stage=rm's output is the --reward_model of create_data.py's grade stage and the
    --score_model of generate.py's batch mode, both giving the scores of the shared scorer."""
    train(pair_config(tiny_llama, tmp_path, "rm", max_steps=4, val_set_size=0))
    model = str(tmp_path / "out")
    scorer = RewardModelScorer(model, device="cpu")

    work = tmp_path / "work"
    data_flags = ["--source=data/sample", "--files=sharegpt_sample.jsonl.gz,alpaca_sample.jsonl.gz",
                  f"--work_dir={work}", "--use_reward_model=True", f"--reward_model={model}", "--local_files_only=True",
                  "--device=cpu", "--min_grade=0", "--max_grade=100"]
    subprocess.run([sys.executable, "create_data.py", "all", *data_flags, "--reward_threshold=0"], cwd=ROOT,
                   check=True, capture_output=True, timeout=600)
    graded = pq.read_table(work / "4_grade" / "part-00000-of-00001.parquet").to_pylist()
    assert len(graded) > 10 and all(row["reward"] is not None for row in graded)
    expected = scorer.score(*zip(*(question_and_answer(row["text"]) for row in graded)))
    assert [row["reward"] for row in graded] == pytest.approx(expected, abs=1e-5)
    # A threshold between the scores drops the lower ones, from the cached rewards (nothing scored again).
    threshold = sorted(expected)[len(expected) // 2]
    again = subprocess.run([sys.executable, "create_data.py", "grade", *data_flags, f"--reward_threshold={threshold}"],
                           cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    assert f"{len(graded):,} of them were already scored" in again.stdout
    kept = pq.read_table(work / "4_grade" / "part-00000-of-00001.parquet").column("reward").to_pylist()
    assert kept and len(kept) < len(graded) and min(kept) >= threshold - 1e-6
    assert f"reward model: {model}" in (work / "oig_instruct_cleaned.card.md").read_text()

    prompts, answers = tmp_path / "prompts.json", tmp_path / "answers.json"
    prompts.write_text(json.dumps([r["prompt"] for r in toy_pairs(4)]))
    subprocess.run([sys.executable, "generate.py", f"--base_model={tiny_llama}", f"--score_model={model}",
                    f"--eval_prompts_file={prompts}", f"--eval_output_file={answers}", "--max_new_tokens=8",
                    "--device=cpu"], cwd=ROOT, check=True, capture_output=True, timeout=600)
    rows = json.loads(answers.read_text())
    assert len(rows) == 4 and all(0 < r["score"] < 1 for r in rows)
    assert [r["score"] for r in rows] == pytest.approx(scorer.score([r["prompt"] for r in rows],
                                                                    [r["response"] for r in rows]), abs=1e-5)
    # The grade stage's multi-turn questions are parsed back into turns, not nested in one human turn.
    assert len(scorer.score(["<human>: Hello\n<bot>: Hi.\n<human>: Who are you?"], ["I am a helpful assistant."])) == 1


def test_reward_model_resume_is_exact(tiny_llama, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = dict(lr_scheduler="constant", save_steps=2, lora_dropout=0.1, val_set_size=0)
    train(pair_config(tiny_llama, tmp_path / "a", "rm", max_steps=4, **common))
    train(pair_config(tiny_llama, tmp_path / "b", "rm", max_steps=2, **common))
    resumed = train(pair_config(tiny_llama, tmp_path / "b", "rm", max_steps=4, resume_from_checkpoint="latest",
                                **common))
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4]
    a = load_file(str(tmp_path / "a" / "out" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
