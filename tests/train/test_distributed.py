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

from sftkit.train import loss
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


def plain_loss_losses(model_dir: str, tmp: Path, **extra) -> list[float]:
    """Per-step training losses of the same run in one process, without DeepSpeed, and with the loss
    from whole logits: the runs compared with it take the chunked loss (sftkit/train/loss.py)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loss, "head_matches_logits", lambda model: False)
        metrics = train(tiny_config(model_dir, tmp, output_dir=str(tmp / "single"), **{**FLAGS, **extra}))
    return [h["loss"] for h in metrics["history"] if "loss" in h]


@pytest.fixture(scope="module")
def one_process_losses(tiny_llama, tmp_path_factory) -> list[float]:
    return plain_loss_losses(tiny_llama, tmp_path_factory.mktemp("one_process"))


# ZeRO partitions and reduces the same float32 gradients in another order, and the offload variants
# step the optimizer on the CPU copy: per-step losses agree with one process to rounding, not bit for bit.
LOSS_TOLERANCE = dict(rtol=1e-4, atol=1e-5)
DEEPSPEED_CONFIGS = sorted(p.stem for p in (REPO / "configs" / "deepspeed").glob("*.json"))


def test_every_shipped_deepspeed_config_is_tested():
    assert DEEPSPEED_CONFIGS == ["zero1", "zero2", "zero2_offload", "zero3", "zero3_offload"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", DEEPSPEED_CONFIGS)
def test_deepspeed_losses_match_one_process(stage, tiny_llama, tmp_path, one_process_losses):
    extra = dict(val_metrics="rouge", val_max_new_tokens=4) if stage in ("zero2", "zero3") else {}
    metrics = torchrun(tmp_path, tiny_llama, stage, deepspeed=str(REPO / "configs" / "deepspeed" / f"{stage}.json"),
                       **extra)
    assert metrics["step"] == 3 and metrics["run"]["deepspeed"]
    losses = [h["loss"] for h in metrics["history"] if "loss" in h]
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                               torch.tensor(one_process_losses, dtype=torch.float64), **LOSS_TOLERANCE)
    adapter = load_file(str(tmp_path / stage / "adapter_model.safetensors"))
    assert adapter and all(v.numel() > 0 for v in adapter.values())  # gathered, not ZeRO-3 placeholders
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    assert (tmp_path / stage / "checkpoint-2" / "ds").is_dir()
    if extra:
        assert "eval_rouge1" in metrics


@pytest.mark.slow
def test_zero3_full_finetuning_with_the_chunked_loss_matches_the_plain_loss(tiny_llama, tmp_path):
    """ZeRO-3 partitions the LM head; the chunked loss calls it once a chunk, and must gather it each time."""
    full = dict(lora_r=0, learning_rate=1e-3)
    metrics = torchrun(tmp_path, tiny_llama, "zero3_full", deepspeed=str(REPO / "configs" / "deepspeed" / "zero3.json"),
                       **full)
    assert metrics["step"] == 3 and metrics["run"]["full_finetune"]
    losses = [h["loss"] for h in metrics["history"] if "loss" in h]
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                               torch.tensor(plain_loss_losses(tiny_llama, tmp_path, **full), dtype=torch.float64),
                               **LOSS_TOLERANCE)
