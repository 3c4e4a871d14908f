"""Real two-process runs: torchrun DDP over gloo, and DeepSpeed ZeRO-2 / ZeRO-3 on the CPU."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftkit.train.loop import train
from tests.train.helpers import tiny_config, write_rows

REPO = Path(__file__).resolve().parents[2]
FLAGS = dict(batch_size=4, micro_batch_size=2, cutoff_len=64, max_steps=3, val_set_size=4, warmup_steps=0,
             learning_rate=1e-2, save_steps=2, report_to="none", seed=0, lora_dropout=0.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(tmp_path: Path, model_dir: str, out: str, **extra) -> dict:
    flags = {**FLAGS, "base_model": model_dir, "data_path": write_rows(tmp_path / "data.json"),
             "output_dir": str(tmp_path / out), **extra}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(REPO / "finetune.py"), *(f"--{k}={v}" for k, v in flags.items())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return json.loads((tmp_path / out / "metrics.json").read_text())


@pytest.mark.slow
def test_ddp_ranks_agree_and_match_one_process(tiny_llama, tmp_path):
    metrics = torchrun(tmp_path, tiny_llama, "ddp")
    assert metrics["run"]["world_size"] == 2 and metrics["step"] == 3
    first, second = metrics["run"]["rank_adapter_checksums"]
    assert first == second
    # One process accumulating the same two micro-batches per step reaches the same adapter.
    train(tiny_config(tiny_llama, tmp_path, output_dir=str(tmp_path / "single"), **FLAGS))
    ddp = load_file(str(tmp_path / "ddp" / "adapter_model.safetensors"))
    single = load_file(str(tmp_path / "single" / "adapter_model.safetensors"))
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_zero_runs_finish_and_save_the_adapter(stage, tiny_llama, tmp_path):
    metrics = torchrun(tmp_path, tiny_llama, stage, deepspeed=str(REPO / "configs" / "deepspeed" / f"{stage}.json"),
                       val_metrics="rouge", val_max_new_tokens=4)
    assert metrics["step"] == 3 and metrics["run"]["deepspeed"] and "eval_rouge1" in metrics
    adapter = load_file(str(tmp_path / stage / "adapter_model.safetensors"))
    assert adapter and all(v.numel() > 0 for v in adapter.values())  # gathered, not ZeRO-3 placeholders
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    assert (tmp_path / stage / "checkpoint-2" / "ds").is_dir()
