"""A learnable toy for the online stages: a tiny policy that answers with the words France and two.

The policy is the tiny Llama fine-tuned (in full) on answers of random France/two words, each answer
ending with ``<human>:`` as h2oGPT rows do, so it samples both words about equally and stops at the
human_bot stop string. The reward is the fraction of France among an answer's words: learnable in a
few dozen steps at a KL cost of at most a few nats per answer.
"""
import json
import random
from pathlib import Path

from tests.train.helpers import tiny_config

QUESTIONS = ["What is the capital of France?", "Who are you?", "Add two and two.", "How are you today?",
             "Hello, how are you?", "What is your name?", "Where is Paris?", "Tell me about France."]
TARGET, OTHER = "France", "two"


def target_fraction(prompts, completions, **kwargs):
    """The reward: the share of an answer's words that are the target word (0 for an empty answer)."""
    out = []
    for text in completions:
        words = text.split()
        out.append(sum(w.strip(".,!?") == TARGET for w in words) / len(words) if words else 0.0)
    return out


def policy_rows(n: int = 64, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        answer = " ".join(rng.choice((TARGET, OTHER)) for _ in range(rng.randint(3, 6)))
        rows.append({"text": f"<human>: {QUESTIONS[i % len(QUESTIONS)]}\n<bot>: {answer}\n<human>:"})
    return rows


def build_policy(model_dir: str, tmp_path: Path) -> str:
    """The tiny model fine-tuned to answer France/two words: a full model directory (the RL base model)."""
    from sftkit.train.loop import train

    data = tmp_path / "policy_rows.json"
    data.write_text(json.dumps(policy_rows()))
    out = tmp_path / "policy"
    train(tiny_config(model_dir, tmp_path, data_path=str(data), output_dir=str(out), lora_r=0, max_steps=40,
                      batch_size=8, micro_batch_size=8, learning_rate=5e-3, val_set_size=0, save_steps=0,
                      lr_scheduler="constant"))
    return str(out)


def write_prompts(path: Path) -> str:
    path.write_text(json.dumps(QUESTIONS))
    return str(path)


def online_config(model_dir: str, tmp_path: Path, stage: str, **overrides):
    settings = dict(stage=stage, data_path=write_prompts(tmp_path / "prompts.json"),
                    reward_funcs=[f"{__name__}:target_fraction"], val_set_size=0, lora_dropout=0.0, save_steps=0,
                    batch_size=8, micro_batch_size=8, rollouts_per_prompt=4, max_new_tokens=12, cutoff_len=64,
                    learning_rate=2e-2, lr_scheduler="constant", max_steps=20)
    settings.update(overrides)
    return tiny_config(model_dir, tmp_path, **settings)
