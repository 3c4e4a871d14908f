"""Process-group setup for torchrun (DDP) and DeepSpeed, and the few collectives training needs.

A single process (plain ``python finetune.py``) runs without any process group.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from sftkit.flags import FlagError
from sftkit.lock import exit_with_parent


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(use_deepspeed: bool) -> World:
    """Join the process group torchrun (or a DeepSpeed launcher) describes in the environment.

    A launched worker also ends when its launcher dies (``kill -9`` of torchrun), so an orphan
    never trains beside a resumed run.
    """
    if launched():
        exit_with_parent()
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    size = int(os.environ.get("WORLD_SIZE", 1))
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    if use_deepspeed:
        import deepspeed

        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
            os.environ.setdefault(key, value)
        deepspeed.init_distributed(dist_backend="nccl" if device.startswith("cuda") else "gloo")
    elif size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return World(rank, local_rank, size, device)


def launched() -> bool:
    """Whether a launcher (torchrun, deepspeed) started this process as one of its workers."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float], device: str) -> list[float]:
    """Sum numbers over all processes (identity in a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_strings(items: list[str]) -> list[list[str]]:
    """Every process's list of strings, in rank order."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [items]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, items)
    return out


def deepspeed_config(path: str, *, batch_size: int, micro_batch_size: int, gradient_accumulation: int,
                     max_grad_norm: float, dtype: torch.dtype) -> dict:
    """Read a DeepSpeed JSON config and fill its ``"auto"`` values from the training flags.

    An explicit value that disagrees with the flags is an error rather than a silent override.
    """
    file = Path(path)
    if not file.is_file():
        raise FlagError(f"--deepspeed={path}: no such file (the shipped ones are in configs/deepspeed/)")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise FlagError(f"--deepspeed={path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    wanted = {"train_batch_size": batch_size, "train_micro_batch_size_per_gpu": micro_batch_size,
              "gradient_accumulation_steps": gradient_accumulation, "gradient_clipping": max_grad_norm}
    for key, value in wanted.items():
        given = cfg.get(key, "auto")
        if given != "auto" and given != value:
            raise FlagError(f"--deepspeed={path}: {key}={given} disagrees with the flags ({value}); "
                            f"set it to \"auto\" or change the flags")
        cfg[key] = value
    for key, torch_dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        section = cfg.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = dtype == torch_dtype
    # Training uses its own torch AdamW, which DeepSpeed accepts once told so.
    cfg.setdefault("zero_allow_untested_optimizer", True)
    cfg.setdefault("zero_force_ds_cpu_optimizer", False)
    return cfg
