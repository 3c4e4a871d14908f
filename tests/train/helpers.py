"""Small datasets and settings shared by the training tests."""
import json
from pathlib import Path

from sftkit import cli
from sftkit.train.config import TrainConfig

ROWS = [
    {"input": "<human>: What is the capital of France?\n<bot>: The capital of France is Paris."},
    {"instruction": "Add two and two.", "output": "Two and two make four."},
    {"messages": [{"role": "user", "content": "Who are you?"},
                  {"role": "assistant", "content": "I am a helpful assistant trained with sftkit."}]},
    {"text": "<human>: Hello, how are you today?\n<bot>: I am fine, thank you.\n<human>: Good.\n<bot>: Thanks!"},
]


def write_rows(path: Path, rows=ROWS, repeat: int = 4) -> str:
    path.write_text(json.dumps(rows * repeat))
    return str(path)


def tiny_config(model_dir: str, tmp_path: Path, **overrides) -> TrainConfig:
    """Settings for a few fast steps on a tiny model."""
    settings = dict(base_model=model_dir, data_path=write_rows(tmp_path / "data.json"),
                    output_dir=str(tmp_path / "out"), batch_size=4, micro_batch_size=2, cutoff_len=64,
                    max_steps=4, val_set_size=4, warmup_steps=0, learning_rate=1e-2, save_steps=2,
                    logging_steps=1, report_to="none", seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def run_cli(*args):
    """finetune.py's main in this process (same code path as the script); its exit status."""
    try:
        cli.finetune_main(list(args))
        return 0
    except SystemExit as exc:
        return exc.code
