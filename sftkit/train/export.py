"""``finetune.py export``: merge a LoRA adapter into its base model (or re-save a fully fine-tuned
one) and write it in every format asked for, in one directory written atomically:

* ``hf``: safetensors, tokenizer with the chat template, generation config with the stop tokens,
  ``sftkit_prompt.json`` (sftkit/prompt_format.py) at the top of the directory;
* ``gguf``: ``gguf/NAME-TYPE.gguf`` (sftkit/train/gguf_file.py), in a folder of its own: transformers'
  GGUF reader loses the file's chat template when tokenizer files sit beside it;
* ``ollama``: ``ollama/`` with that GGUF and a ``Modelfile`` (sftkit/train/ollama.py);

and always a model card, ``README.md`` (sftkit/train/model_card.py).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from sftkit import atomic, models
from sftkit.chat_template import ollama_template
from sftkit.errors import ExportError, PromptError
from sftkit.prompt_format import adds_bos, prompt_record, read_prompt_format, template_for, write_prompt_format
from sftkit.prompts import DEFAULT_PROMPT_TYPE, get_prompt_type
from sftkit.train.config import ExportConfig
from sftkit.train.gguf_file import gguf_arch, write_gguf
from sftkit.train.model_card import model_card, training_record
from sftkit.train.ollama import modelfile

EVALUATION_DIR = "evaluation"


def is_full_model(directory: str) -> bool:
    """A fully fine-tuned output (config.json + weights, no adapter) rather than a LoRA adapter."""
    path = Path(directory)
    return (path / "config.json").is_file() and not (path / "adapter_config.json").is_file()


def resolve_prompt_type(config: ExportConfig) -> str:
    """--prompt_type, else the one the training output recorded, else h2oGPT's default."""
    if config.prompt_type:
        return get_prompt_type(config.prompt_type).name
    recorded = read_prompt_format(config.lora_weights)
    return recorded["prompt_type"] if recorded else DEFAULT_PROMPT_TYPE


def check_formats(config: ExportConfig, prompt_type: str) -> None:
    """Refuse what cannot be written before loading anything."""
    if "ollama" in config.format and prompt_type != "chat":
        try:
            ollama_template(prompt_type)
        except PromptError as exc:
            raise ExportError(f"--format=ollama: {exc}") from None


def evaluation_markdown(report: str, staging: Path) -> str:
    """generate.py's evaluation report (report.md or its folder), its plots copied under evaluation/."""
    path = Path(report)
    folder, markdown = (path, path / "report.md") if path.is_dir() else (path.parent, path)
    if not markdown.is_file():
        raise ExportError(f"--eval_report={report}: no report.md there; give the folder generate.py wrote "
                          f"(ANSWERS_report/) or its report.md")
    text = markdown.read_text(encoding="utf-8")
    (staging / EVALUATION_DIR).mkdir()
    for plot in folder.glob("*.png"):
        shutil.copy2(plot, staging / EVALUATION_DIR / plot.name)
        text = text.replace(f"]({plot.name})", f"]({EVALUATION_DIR}/{plot.name})")
    shutil.copy2(markdown, staging / EVALUATION_DIR / "report.md")
    return text.replace("\n# ", "\n### ").replace("\n## ", "\n### ").removeprefix("# ")


def export_merged(config: ExportConfig) -> Path:
    """Load base (unquantized) + adapter, merge, and write every asked format and the card atomically."""
    import torch

    out = Path(config.output_dir)
    if out.exists():
        raise ExportError(f"--output_dir={out} already exists; choose a new directory or remove it first")
    prompt_type = resolve_prompt_type(config)
    check_formats(config, prompt_type)
    full = is_full_model(config.lora_weights)
    # A full fine-tuning output is already a whole model: it is re-saved (in --dtype) instead of merged.
    model = models.load_model(config.lora_weights if full else config.base_model, device="cpu",
                              dtype=getattr(torch, config.dtype), local_files_only=config.local_files_only,
                              trust_remote_code=config.trust_remote_code)
    merged = model if full else models.apply_adapter(model, config.lora_weights,
                                                     base_model=config.base_model).merge_and_unload()
    if {"gguf", "ollama"} & set(config.format):
        gguf_arch(merged.config.model_type)  # refuses other architectures before writing anything
    tokenizer_dir = config.lora_weights if (Path(config.lora_weights) / "tokenizer_config.json").is_file() \
        else config.base_model
    tokenizer = models.load_tokenizer(tokenizer_dir, local_files_only=config.local_files_only,
                                      trust_remote_code=config.trust_remote_code)
    record = prompt_record(tokenizer, prompt_type, config.system_prompt)
    gguf_name = f"{out.name}-{config.gguf_type}.gguf"
    gguf_summary = None
    with atomic.replacing(out) as staging:
        if "hf" in config.format:
            merged.save_pretrained(staging, safe_serialization=True)
            write_prompt_format(staging, tokenizer, prompt_type, generation_config=merged.generation_config,
                                system_prompt=config.system_prompt)
        if {"gguf", "ollama"} & set(config.format):
            target = staging / ("gguf" if "gguf" in config.format else "ollama") / gguf_name
            target.parent.mkdir()
            gguf_summary = write_gguf(merged, tokenizer, target, config.gguf_type, name=out.name,
                                      chat_template=template_for(tokenizer, prompt_type) or tokenizer.chat_template,
                                      add_bos=adds_bos(tokenizer), stop_token_ids=record["stop_token_ids"])
        if "ollama" in config.format:
            (staging / "ollama").mkdir(exist_ok=True)
            if "gguf" in config.format:  # the same file twice, stored once
                os.link(staging / "gguf" / gguf_name, staging / "ollama" / gguf_name)
            (staging / "ollama" / "Modelfile").write_text(
                modelfile(gguf_name, prompt_type, record["stop"], config.system_prompt), encoding="utf-8")
        evaluation = evaluation_markdown(config.eval_report, staging) if config.eval_report else None
        (staging / "README.md").write_text(model_card(
            name=str(out), base_model=config.base_model, weights=config.lora_weights, merged=not full,
            formats=config.format, record=record, dtype=config.dtype, gguf_summary=gguf_summary,
            training=training_record(config.lora_weights), evaluation=evaluation), encoding="utf-8")
    n_params = sum(p.numel() for p in merged.parameters())
    print(f"export: {'copied the fully fine-tuned' if full else 'merged'} {config.lora_weights}"
          f"{'' if full else ' into ' + config.base_model} -> {out} ({n_params / 1e6:.1f}M parameters, "
          f"prompt_type {prompt_type}; {', '.join(config.format)}"
          + (f"; gguf/{gguf_name}" if "gguf" in config.format else "") + "; README.md model card)")
    return out
