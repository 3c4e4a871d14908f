"""Loading for generation: one base model, every adapter of ``--lora_weights`` on it, and the names
front ends pick them by.

Built on :mod:`sftkit.models` (which loads every model of sftkit): this module adds what only
generation needs — several adapters on one base model, each under the name the user gave it, and
the base model alone under its own name (``base`` unless ``--lora_weights`` names it otherwise).
Every front end names models the same way (:class:`Models`); the engine alone turns a name into
what peft calls it.
"""
from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from sftkit import models as loader
from sftkit.errors import GenerationError, ModelError
from sftkit.generation.config import GenerateConfig

BASE = "base"  # the name of the base model alone, unless --lora_weights names it otherwise
PEFT_BASE = "__base__"  # what peft calls "no adapter" in a mixed-adapter batch
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # never peft's "__base__"


@dataclass
class Models:
    """One base model with its adapters, and the name of each: ``names`` lists them in ``--lora_weights``
    order, ``base`` is the name of the base model alone, ``default`` answers requests that name none.

    Every adapter is loaded under its own name, so a model name is also its peft adapter name; only
    the base model differs (:data:`PEFT_BASE` in peft's mixed batches).
    """

    model: object
    tokenizer: object
    names: list[str]
    default: str
    base: str = BASE

    def resolve(self, name: str | None) -> str:
        """The model a request names (None: the default); an unknown name is a GenerationError."""
        name = name or self.default
        if name not in self.names:
            raise GenerationError(f"unknown model {name!r}; this server has {', '.join(self.names)}")
        return name

    def peft_adapter(self, name: str | None) -> str:
        """What peft calls model ``name`` in a mixed-adapter batch."""
        name = self.resolve(name)
        return PEFT_BASE if name == self.base else name

    @classmethod
    def around(cls, model, tokenizer) -> "Models":
        """A model loaded elsewhere (training validation): its adapters by their peft names, the active
        one the default."""
        adapters = list(getattr(model, "peft_config", {})) if is_peft(model) else []
        default = model.active_adapter if adapters else BASE
        return cls(model, tokenizer, [BASE, *adapters], default)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "base_model")


def resolve_adapter(lora_weights: str) -> str:
    """The adapter directory to load: the one named, or the newest ``checkpoint-N`` inside it."""
    path = Path(lora_weights)
    if not path.is_dir():
        raise ModelError(f"--lora_weights={lora_weights}: no such directory; point it at the output_dir of "
                         f"finetune.py (or one of its checkpoint-* folders)")
    if (path / "adapter_config.json").is_file():
        return str(path)
    checkpoints = [p for p in path.glob("checkpoint-*")
                   if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "adapter_config.json").is_file()]
    if not checkpoints:
        return str(path)  # apply_adapter explains what is missing
    newest = max(checkpoints, key=lambda p: int(p.name.split("-")[1]))
    print(f"sftkit: {lora_weights} has no final adapter; using its newest checkpoint {newest.name}",
          file=sys.stderr)
    return str(newest)


def parse_lora_weights(spec: str | None) -> list[tuple[str, str | None]]:
    """``--lora_weights`` as ``[(name, adapter path or None for the base model)]``, as the user listed them.

    ``a=dir1,b=dir2,base=`` names several adapters (an empty path is the base model alone); a plain
    directory is one adapter named after it.
    """
    if not spec:
        return []
    if "=" not in spec or Path(spec).is_dir():
        return [(_adapter_name(Path(spec).name or "adapter"), spec)]
    entries: list[tuple[str, str | None]] = []
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, path = part.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise GenerationError(f"--lora_weights={spec}: {part!r} is not name=path (names: letters, digits, "
                                  f"'_', '-', '.'); write e.g. --lora_weights=base=,tuned=lora_out")
        if name in (n for n, _ in entries):
            raise GenerationError(f"--lora_weights={spec}: the name {name!r} is given twice")
        entries.append((name, path.strip() or None))
    if sum(path is None for _, path in entries) > 1:
        raise GenerationError(f"--lora_weights={spec}: name the base model (an empty path) at most once")
    return entries


def served_models(spec: str | None) -> tuple[list[tuple[str, str | None]], str]:
    """Every model one load serves — the listed ones, and the base model alone (first, named ``base``,
    unless listed) — and the default: the first one listed."""
    entries = parse_lora_weights(spec)
    default = entries[0][0] if entries else BASE
    if all(path for _, path in entries):
        if BASE in (name for name, _ in entries):
            raise GenerationError(f"--lora_weights={spec}: {BASE!r} names the base model alone; call the adapter "
                                  f"something else")
        entries = [(BASE, None), *entries]
    return entries, default


def _adapter_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip("_.-")
    return name or "adapter"


def pick_device(config: GenerateConfig) -> str | None:
    """--device, else cuda:<gpu_id> when --gpu_id is set and a GPU exists, else None (the default rule)."""
    if config.device:
        return config.device
    if config.gpu_id is not None and torch.cuda.is_available():
        return f"cuda:{config.gpu_id}"
    return None


def load_models(config: GenerateConfig) -> Models:
    """The base model with every adapter of ``--lora_weights`` loaded once, in eval mode, left padding."""
    entries, default = served_models(config.lora_weights)
    common = dict(local_files_only=config.local_files_only, trust_remote_code=config.trust_remote_code)
    tokenizer = loader.load_tokenizer(config.tokenizer_base_model or config.base_model, padding_side="left",
                                      **common)
    paths = {name: resolve_adapter(path) for name, path in entries if path}
    device = pick_device(config)
    dtype = None
    if config.load_half:
        resolved = device or loader.default_device()
        dtype = loader.pick_dtype(resolved) if resolved.startswith("cuda") else torch.bfloat16
    model = loader.load_model(config.base_model, device=device, dtype=dtype, load_8bit=config.load_8bit,
                              load_4bit=config.load_4bit, **common)
    for name, path in paths.items():
        model = loader.apply_adapter(model, path, base_model=config.base_model, adapter_name=name)
    model.eval()
    base = next(name for name, path in entries if path is None)
    return Models(model, tokenizer, [name for name, _ in entries], default, base)


def adapter_fingerprint(path: str) -> str:
    """sha256 of an adapter's config and weights, so a resumed run can tell it is the same adapter."""
    digest = hashlib.sha256()
    for name in sorted(p.name for p in Path(path).iterdir() if p.is_file() and (
            p.name == "adapter_config.json" or p.name.startswith("adapter_model"))):
        digest.update(name.encode())
        with open(Path(path) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
