"""kill -9 during reward-model and DPO training: the resumed run matches the uninterrupted one, step by step.

As for SFT (test_train_faults.py): the run is frozen the moment a checkpoint shows it got that far,
killed, resumed with --resume_from_checkpoint=latest, and its weights and every step's loss compared
with an uninterrupted run. Dropout is on, so a resume that lost the RNG state or the data order
shows up in the losses. DPO also continues an SFT adapter (its frozen copy is the reference) and is
killed and resumed the same way.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.faults.test_train_faults import ENV, REPO, kill_mid_step_then_resume, losses
from tests.train.helpers import write_rows
from tests.train.toy_preferences import write_pairs

FLAGS = dict(batch_size=4, micro_batch_size=2, cutoff_len=64, max_steps=12, val_set_size=0, warmup_steps=0,
             learning_rate=1e-2, save_steps=2, save_total_limit=0, logging_steps=1, report_to="none", seed=0,
             lora_dropout=0.1, lr_scheduler="constant")
WEIGHTS = {"rm": "model.safetensors", "dpo": "adapter_model.safetensors"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def command(model: str, data: str, out: Path, stage: str, **extra) -> list[str]:
    flags = {**FLAGS, "stage": stage, "base_model": model, "data_path": data, "output_dir": str(out), **extra}
    return [sys.executable, str(REPO / "finetune.py"), *(f"--{k}={v}" for k, v in flags.items())]


def assert_same_run(resumed: Path, reference: Path, weights: str) -> None:
    a, b = load_file(str(reference / weights)), load_file(str(resumed / weights))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
    ref, got = losses(reference), losses(resumed)
    assert sorted(got) == sorted(ref) == list(range(1, FLAGS["max_steps"] + 1))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step


def killed_and_resumed(cmd: list[str], out: Path) -> None:
    done = kill_mid_step_then_resume(cmd, out, FLAGS["max_steps"])
    assert f"resumed from {out / 'checkpoint-'}" in done.stdout + done.stderr


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_kill_mid_run_then_resume_matches(tiny_llama, tmp_path, stage):
    data = write_pairs(tmp_path / "pairs.json")
    reference = tmp_path / "reference"
    subprocess.run(command(tiny_llama, data, reference, stage), env=ENV, check=True, capture_output=True,
                   timeout=300)
    out = tmp_path / "out"
    killed_and_resumed(command(tiny_llama, data, out, stage), out)
    assert_same_run(out, reference, WEIGHTS[stage])


def test_dpo_continuing_an_sft_adapter_killed_then_resumed_matches(tiny_llama, tmp_path):
    sft = tmp_path / "sft"
    subprocess.run([sys.executable, str(REPO / "finetune.py"), f"--base_model={tiny_llama}",
                    f"--data_path={write_rows(tmp_path / 'rows.json')}", f"--output_dir={sft}",
                    *(f"--{k}={v}" for k, v in {**FLAGS, "max_steps": 4, "save_steps": 0}.items())],
                   env=ENV, check=True, capture_output=True, timeout=300)
    data = write_pairs(tmp_path / "pairs.json")
    reference = tmp_path / "reference"
    subprocess.run(command(tiny_llama, data, reference, "dpo", lora_weights=sft), env=ENV, check=True,
                   capture_output=True, timeout=300)
    out = tmp_path / "out"
    killed_and_resumed(command(tiny_llama, data, out, "dpo", lora_weights=sft), out)
    assert_same_run(out, reference, WEIGHTS["dpo"])
