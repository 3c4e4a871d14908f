"""The prompt format written into every saved model, where each consumer reads it.

* the tokenizer's ``chat_template`` (transformers, vLLM, TGI, llama.cpp): the generated template of
  :mod:`sftkit.chat_template` (``chat`` keeps the base model's own);
* ``generation_config.json``: its ``eos_token_id`` list gains the stop strings that are single
  tokens, which every server stops at by itself;
* ``sftkit_prompt.json``: the prompt type and every stop string, read back by ``generate.py`` and
  the export formats (Ollama's ``PARAMETER stop``, the model card). Stop strings of several tokens
  live here and not in ``generation_config.json``: a ``stop_strings`` entry there makes every
  ``model.generate`` call without a ``tokenizer=`` argument fail (transformers 5.23).
"""
from __future__ import annotations

import json
from pathlib import Path

from sftkit.chat_template import STOP_FILE, jinja_template
from sftkit.prompts import get_prompt_type, stop_strings


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer opens encoded text with its BOS token (sftkit's prompts rely on it)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def template_for(tokenizer, prompt_type: str) -> str | None:
    """The chat template a model trained on ``prompt_type`` should carry (None: keep the tokenizer's)."""
    return jinja_template(prompt_type, bos_token=adds_bos(tokenizer))


def single_token_ids(tokenizer, strings: list[str]) -> list[int]:
    """Ids of the strings that are one token each (a model can end an answer on them directly)."""
    ids = []
    for text in strings:
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1 and tokenizer.decode(encoded) == text:
            ids.append(encoded[0])
    return ids


def prompt_record(tokenizer, prompt_type: str, system_prompt: str = "") -> dict:
    """What ``sftkit_prompt.json`` holds: the prompt type, its stop strings, a default system prompt."""
    name = get_prompt_type(prompt_type).name
    stops = stop_strings(name, tokenizer)
    return {"prompt_type": name, "stop": stops,
            "stop_token_ids": single_token_ids(tokenizer, stops), "system_prompt": system_prompt}


def eos_token_ids(tokenizer, record: dict, existing=None) -> list[int]:
    """The model's own end tokens, then the single-token stops, without repeats."""
    own = existing if isinstance(existing, list) else [existing] if existing is not None else []
    ids = [*own, tokenizer.eos_token_id, *record["stop_token_ids"]]
    return list(dict.fromkeys(i for i in ids if i is not None))


def save_tokenizer(tokenizer, folder: Path, prompt_type: str) -> None:
    """``tokenizer.save_pretrained(folder)`` with the prompt type's chat template (the object is left as it was)."""
    template = template_for(tokenizer, prompt_type)
    before = tokenizer.chat_template
    if template is not None:
        tokenizer.chat_template = template
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.chat_template = before


def write_prompt_format(folder: Path, tokenizer, prompt_type: str, *, generation_config=None,
                        system_prompt: str = "") -> dict:
    """Tokenizer with template, ``sftkit_prompt.json`` and (for a whole model, given its
    ``generation_config``) ``generation_config.json`` with the stop tokens. ``folder`` is a
    staging folder of :mod:`sftkit.atomic`; returns the prompt record."""
    folder = Path(folder)
    save_tokenizer(tokenizer, folder, prompt_type)
    record = prompt_record(tokenizer, prompt_type, system_prompt)
    (folder / STOP_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    if generation_config is not None:
        generation_config.eos_token_id = eos_token_ids(tokenizer, record, generation_config.eos_token_id)
        if generation_config.pad_token_id is None:
            generation_config.pad_token_id = tokenizer.pad_token_id
        generation_config.save_pretrained(folder)
    return record


def read_prompt_format(folder: str | Path) -> dict | None:
    """A saved model's ``sftkit_prompt.json``, or None when it has none (an older output, a hub id)."""
    path = Path(folder) / STOP_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
