"""A learnable toy preference set for the tiny models: chosen answers are sentences, rejected ones symbols."""
import json
from pathlib import Path

from tests.train.helpers import tiny_config

QUESTIONS = ["What is the capital of France?", "Who are you?", "Add two and two.", "How are you today?",
             "What is the capital of France today?", "Who are you, assistant?", "Hello, how are you?",
             "Add two and two, please."]
GOOD = ["The capital of France is Paris.", "I am a helpful assistant trained with sftkit.",
        "Two and two make four.", "I am fine, thank you very much for asking."]
BAD = ["!?.,;:'\"()[]{}<>", "0123456789 #@~`", "/\\|-_=+*&^%$", "{}<>/\\|-_=+"]


def toy_pairs(n: int = 24) -> list[dict]:
    return [{"prompt": QUESTIONS[i % len(QUESTIONS)], "chosen": GOOD[i % len(GOOD)],
             "rejected": BAD[(i * 3 + 1) % len(BAD)]} for i in range(n)]


def write_pairs(path: Path, rows=None) -> str:
    path.write_text(json.dumps(rows if rows is not None else toy_pairs()))
    return str(path)


def pair_config(model_dir: str, tmp_path: Path, stage: str, **overrides):
    settings = dict(stage=stage, data_path=write_pairs(tmp_path / "pairs.json"), val_set_size=8,
                    lora_dropout=0.0, save_steps=0)
    settings.update(overrides)
    return tiny_config(model_dir, tmp_path, **settings)
