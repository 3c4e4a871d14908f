"""Reward-model training (--stage=rm) on a learnable toy preference set, through the shared scorer."""
import json
import math

import torch
from safetensors.torch import load_file

from sftkit.reward import RewardModelScorer
from sftkit.train.loop import train
from tests.train.toy_preferences import pair_config, toy_pairs


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


def test_grade_and_generation_load_the_same_scorer(tiny_llama, tmp_path):
    from sftkit.data.stages import grade
    from sftkit.generation import GenerateConfig
    from sftkit.generation.scoring import add_scores, load_scorer

    assert grade.RewardModelScorer is RewardModelScorer
    train(pair_config(tiny_llama, tmp_path, "rm", max_steps=2, val_set_size=0))
    config = GenerateConfig(base_model=tiny_llama, score_model=str(tmp_path / "out"), device="cpu")
    rows = add_scores([{"prompt": r["prompt"], "response": r["chosen"]} for r in toy_pairs(4)], load_scorer(config))
    assert all(0 < r["score"] < 1 for r in rows)
    # The grade stage's multi-turn questions are parsed back into turns, not nested in one human turn.
    scorer = load_scorer(config)
    multi = scorer.score(["<human>: Hello\n<bot>: Hi.\n<human>: Who are you?"], ["I am a helpful assistant."])
    assert len(multi) == 1


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
