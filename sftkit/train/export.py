"""Merge a LoRA adapter into its base model (or re-save a fully fine-tuned one) as a standalone model directory."""
from __future__ import annotations

from pathlib import Path

from sftkit import models
from sftkit.errors import ExportError
from sftkit.train.config import ExportConfig


def is_full_model(directory: str) -> bool:
    """A fully fine-tuned output (config.json + weights, no adapter) rather than a LoRA adapter."""
    path = Path(directory)
    return (path / "config.json").is_file() and not (path / "adapter_config.json").is_file()


def export_merged(config: ExportConfig) -> Path:
    """Load base (unquantized) + adapter, merge, and write safetensors + tokenizer atomically."""
    import torch

    out = Path(config.output_dir)
    if out.exists():
        raise ExportError(f"--output_dir={out} already exists; choose a new directory or remove it first")
    full = is_full_model(config.lora_weights)
    # A full fine-tuning output is already a whole model: it is re-saved (in --dtype) instead of merged.
    model = models.load_model(config.lora_weights if full else config.base_model, device="cpu",
                              dtype=getattr(torch, config.dtype), local_files_only=config.local_files_only,
                              trust_remote_code=config.trust_remote_code)
    merged = model if full else models.apply_adapter(model, config.lora_weights,
                                                     base_model=config.base_model).merge_and_unload()
    tokenizer_dir = config.lora_weights if (Path(config.lora_weights) / "tokenizer_config.json").is_file() \
        else config.base_model
    tokenizer = models.load_tokenizer(tokenizer_dir, local_files_only=config.local_files_only,
                                      trust_remote_code=config.trust_remote_code)
    models.save_model_dir(merged, tokenizer, out)
    n_params = sum(p.numel() for p in merged.parameters())
    print(f"export: {'copied the fully fine-tuned' if full else 'merged'} {config.lora_weights}"
          f"{'' if full else ' into ' + config.base_model} -> {out} "
          f"({n_params / 1e6:.1f}M parameters, {config.dtype}, safetensors)")
    return out
