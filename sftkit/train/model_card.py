"""The model card (README.md) of an export: what it is, how to chat with it on each route, what
trained it and on which data, and how it scored.

Functions take data and return Markdown; :func:`training_record` gathers the data from a training
output (run_config.yaml, metrics.json) and the data card ``create_data.py`` wrote beside its data.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from sftkit.train.run_record import RUN_CONFIG

CARD_SETTINGS = ("stage", "finetune_method", "base_model", "data_path", "prompt_type", "num_epochs", "max_steps",
                 "learning_rate", "lr_scheduler", "effective_batch_size", "micro_batch_size", "cutoff_len",
                 "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "train_on_inputs", "pack",
                 "seed", "data_path_sha256")


def _training_dir(weights: Path) -> Path | None:
    """The output_dir that trained ``weights`` (itself, or the parent of a checkpoint-N)."""
    for folder in (weights, weights.parent):
        if (folder / RUN_CONFIG).is_file():
            return folder
    return None


def data_card_path(data_path: str) -> Path | None:
    """The data card ``create_data.py`` writes next to its dataset (``x.json`` -> ``x.card.json``)."""
    path = Path(data_path)
    card = path.with_suffix(".card.json")
    return card if path.is_file() and card.is_file() else None


def data_card_files(data_path: str) -> list[Path]:
    """The data card's JSON and Markdown beside ``data_path``, when create_data.py made it."""
    card = data_card_path(data_path)
    return [card, card.with_name(card.name.removesuffix(".json") + ".md")] if card else []


def training_record(weights: str) -> dict:
    """Settings, final metrics and data card of the run that trained ``weights`` (empty parts if unknown)."""
    folder = _training_dir(Path(weights))
    if folder is None:
        return {}
    settings = next(yaml.safe_load_all((folder / RUN_CONFIG).read_text()))
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    card_path = data_card_path(settings.get("data_path", ""))
    return {"settings": settings, "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "data_card": json.loads(card_path.read_text()) if card_path else None,
            "data_card_path": str(card_path) if card_path else None}


def _fence(text: str, lang: str = "") -> list[str]:
    return [f"```{lang}", text, "```"]


def usage(name: str, formats: list[str], record: dict, gguf_name: str | None) -> list[str]:
    """How to chat with the export on each route it was written for."""
    stops = record["stop"]
    lines = ["## Chat with it", ""]
    if "hf" in formats:
        lines += ["The tokenizer's chat template renders the prompt the model was trained on "
                  f"(`{record['prompt_type']}`); `generation_config.json` lists the stop tokens that are single "
                  "tokens. Stop strings of several tokens go to `generate` with the tokenizer, and are cut off "
                  "the answer:", ""]
        lines += _fence("\n".join([
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
            f'model = AutoModelForCausalLM.from_pretrained("{name}")',
            'messages = [{"role": "user", "content": "Who are you?"}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",",
            "                                       return_dict=True)",
            f"stops = {json.dumps(stops, ensure_ascii=False)}",
            "out = model.generate(**inputs, max_new_tokens=256, do_sample=False, stop_strings=stops, tokenizer=tokenizer)",
            'answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)',
            "answer = min((answer.split(s)[0] for s in stops), key=len).strip()",
        ]), "python")
        lines += ["", "vLLM serves it with the template in the export (an OpenAI-compatible API); pass the stop "
                      "strings with each request:", ""]
        lines += _fence(f"vllm serve {name}\n"
                        f"# request body: {{\"messages\": [...], \"stop\": {json.dumps(stops, ensure_ascii=False)}}}",
                        "bash")
        lines += ["", "sftkit's own server and chat UI read the prompt type and stop strings from "
                      "`sftkit_prompt.json`:", ""]
        lines += _fence(f"python generate.py --base_model={name} --prompt_type={record['prompt_type']} --api=True",
                        "bash")
    if gguf_name and "gguf" in formats:
        lines += ["", f"llama.cpp reads `gguf/{gguf_name}` (chat template and tokenizer in its metadata):", ""]
        lines += _fence(f"llama-cli -m {name}/gguf/{gguf_name} -cnv" + "".join(
            f" --reverse-prompt {json.dumps(s, ensure_ascii=False)}" for s in stops if "\n" not in s), "bash")
    if "ollama" in formats:
        lines += ["", "Ollama: the `ollama/` folder holds the GGUF and a `Modelfile` with the same prompt "
                      "template (Ollama's template language), the stop strings and the system prompt:", ""]
        lines += _fence(f"ollama create {Path(name).name} -f {name}/ollama/Modelfile\nollama run {Path(name).name}",
                        "bash")
    return lines


def training_section(training: dict) -> list[str]:
    if not training:
        return ["## Training", "", "No training record (run_config.yaml) was found next to the weights."]
    settings = training["settings"]
    lines = ["## Training", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | `{settings[k]}` |" for k in CARD_SETTINGS if k in settings and settings[k] not in ("", None)]
    metrics = training.get("metrics") or {}
    shown = {k: v for k, v in metrics.items() if k in ("step", "train_loss", "eval_loss", "eval_accuracy",
                                                       "train_tokens", "tokens_per_s")}
    if shown:
        lines += ["", "Final metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in shown.items()) + "."]
    card = training.get("data_card")
    lines += ["", "## Data", ""]
    if not card:
        lines.append(f"`{settings.get('data_path', '?')}` (no data card from create_data.py next to it).")
        return lines
    lines += [f"`{settings.get('data_path')}`: {card['rows']:,} rows, made by create_data.py "
              f"(data card: `{training['data_card_path']}`).", "", "| source | rows |", "| --- | ---: |"]
    lines += [f"| {name} | {n:,} |" for name, n in card.get("rows_by_source", {}).items()]
    if card.get("inputs"):
        lines += ["", "| input file | format | records | rows | sha256 |", "| --- | --- | ---: | ---: | --- |"]
        lines += [f"| {f['file']} | {f['format']} | {f['records']:,} | {f['rows']:,} | `{f['sha256']}` |"
                  for f in card["inputs"]]
    return lines


def model_card(*, name: str, base_model: str, weights: str, merged: bool, formats: list[str], record: dict,
               dtype: str, gguf_summary: dict | None, training: dict, evaluation: str | None) -> str:
    """The whole README.md."""
    lines = ["---", "library_name: transformers", f"base_model: {base_model}", "tags: [sftkit, fine-tuned]",
             "---", "", f"# {Path(name).name}", "",
             f"A fine-tune of `{base_model}` with sftkit: {'LoRA adapter ' + weights + ' merged in' if merged else 'weights from ' + weights}.",
             "", f"- prompt type: `{record['prompt_type']}` (its chat template is in the tokenizer files"
                 f"{' and the GGUF metadata' if gguf_summary else ''})",
             f"- stop strings: {', '.join('`' + json.dumps(s, ensure_ascii=False) + '`' for s in record['stop']) or 'none'}",
             f"- formats: {', '.join(formats)}; safetensors weights in {dtype}" if "hf" in formats
             else f"- formats: {', '.join(formats)}"]
    if record.get("system_prompt"):
        lines.append(f"- default system prompt: {record['system_prompt']!r}")
    if gguf_summary:
        lines.append(f"- GGUF: `{gguf_summary['file']}` ({gguf_summary['architecture']}, tensors "
                     f"{gguf_summary['tensors']}, pre-tokenizer `{gguf_summary['pre_tokenizer']}`)")
    lines += [""] + usage(name, formats, record, gguf_summary and gguf_summary["file"]) + [""]
    lines += training_section(training) + [""]
    if evaluation:
        lines += ["## Evaluation", "", evaluation.strip(), ""]
    return "\n".join(lines) + "\n"
