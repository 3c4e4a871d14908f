"""The generation engine: load a base model with its adapters, fit prompts, stop, stream, batch.

Every front end (browser UI, terminal, OpenAI-compatible API, batch/eval mode) and training
validation answer through this module, so a model is prompted exactly as training rendered it
(sftkit.prompts) and stopped the same way everywhere: at an end-of-sequence token, or at the
prompt type's stop strings (``<human>:`` …) even when a stop string spans several tokens.
Several LoRA adapters can sit on one base model; each row of a batch names the one it uses
(peft's mixed-adapter batches), so switching adapters never reloads anything.
This module knows nothing of its front ends.
"""
from __future__ import annotations

import hashlib
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig
from sftkit.models import ModelError, load_model, load_tokenizer, pick_dtype, resolve_base_model
from sftkit.prompt_format import read_prompt_format
from sftkit.prompts import get_prompt_type, render_prompt, stop_strings

Turn = tuple[str, str]
BASE = "base"  # the model name of the base model alone, unless --lora_weights names it otherwise
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ---------------------------------------------------------------- loading

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
    """``--lora_weights`` as ``[(name, adapter path or None for the base model)]``.

    ``a=dir1,b=dir2,base=`` names several adapters (an empty path is the base model alone); a plain
    directory is one adapter named after it.
    """
    if not spec:
        return []
    if "=" not in spec or Path(spec).is_dir():
        return [(_adapter_name(Path(spec).name or "adapter"), spec)]
    models: list[tuple[str, str | None]] = []
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, path = part.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise GenerationError(f"--lora_weights={spec}: {part!r} is not name=path (names: letters, digits, "
                                  f"'_', '-', '.'); write e.g. --lora_weights=base=,tuned=lora_out")
        if name in (n for n, _ in models):
            raise GenerationError(f"--lora_weights={spec}: the name {name!r} is given twice")
        models.append((name, path.strip() or None))
    if sum(path is None for _, path in models) > 1:
        raise GenerationError(f"--lora_weights={spec}: name the base model (an empty path) at most once")
    return models


def _adapter_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip("_.-")
    return name or "adapter"


@dataclass
class Models:
    """One base model, its adapters, and the names front ends pick them by.

    ``adapters`` maps a model name to its peft adapter name, or to None for the base model alone.
    """

    model: object
    tokenizer: object
    adapters: dict[str, str | None]
    paths: dict[str, str]  # model name -> adapter directory (adapters only)
    default: str
    base_model: str

    @property
    def names(self) -> list[str]:
        return list(self.adapters)

    def adapter(self, name: str | None) -> str | None:
        """The peft adapter of model ``name`` (None: the base model); unknown names are a GenerationError."""
        name = name or self.default
        if name not in self.adapters:
            raise GenerationError(f"unknown model {name!r}; this server has {', '.join(self.adapters)}")
        return self.adapters[name]


def pick_device(config: GenerateConfig) -> str | None:
    """--device, else cuda:<gpu_id> when --gpu_id is set and a GPU exists, else None (the default rule)."""
    if config.device:
        return config.device
    if config.gpu_id is not None:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{config.gpu_id}"
    return None


def load_models(config: GenerateConfig) -> Models:
    """The base model with every adapter of ``--lora_weights`` loaded once, in eval mode, left padding."""
    get_prompt_type(config.prompt_type)  # fail on a typo before loading anything
    entries = parse_lora_weights(config.lora_weights)
    common = dict(local_files_only=config.local_files_only, trust_remote_code=config.trust_remote_code)
    tokenizer = load_tokenizer(config.tokenizer_base_model or config.base_model, padding_side="left", **common)
    paths = {name: resolve_adapter(path) for name, path in entries if path}
    device = pick_device(config)
    dtype = None
    if config.load_half:
        import torch

        from sftkit.models import default_device

        resolved = device or default_device()
        dtype = pick_dtype(resolved) if resolved.startswith("cuda") else torch.bfloat16
    model = load_model(config.base_model, device=device, dtype=dtype, load_8bit=config.load_8bit,
                       load_4bit=config.load_4bit, **common)
    for name, path in paths.items():
        model = _attach(model, name, path, config.base_model)
    model.eval()
    default = entries[0][0] if entries else BASE
    if all(path for _, path in entries):  # the base model is always one of the choices
        if BASE in paths:
            raise GenerationError(f"--lora_weights={config.lora_weights}: {BASE!r} names the base model alone; "
                                  f"call the adapter something else")
        entries = [(BASE, None), *entries]
    adapters = {name: (name if path else None) for name, path in entries}
    return Models(model, tokenizer, adapters, paths, default, config.base_model)


def _attach(model, name: str, path: str, base_model: str):
    """``model`` with adapter ``name`` loaded from ``path`` (the first one wraps it in a PeftModel)."""
    from peft import PeftModel

    from sftkit.models import adapter_base_name

    if not (Path(path) / "adapter_config.json").is_file():
        raise ModelError(f"--lora_weights={path}: no adapter_config.json there; point it at the "
                         f"output_dir of finetune.py (or one of its checkpoint-* folders)")
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(path, adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, path, adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as exc:
        trained_on = adapter_base_name(path) or "an unrecorded base model"
        raise ModelError(f"--lora_weights={path} was trained on {trained_on!r} and does not fit "
                         f"--base_model={base_model!r} ({str(exc).splitlines()[0][:200]}). Use the base model "
                         f"it was trained on.") from None


def load_for_generation(config: GenerateConfig):
    """(model, tokenizer) ready to answer; with adapters, calls that name none use the first adapter loaded."""
    models = load_models(config)
    return models.model, models.tokenizer


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


# ---------------------------------------------------------------- prompting

@dataclass(frozen=True)
class Prompt:
    """The rendered text to generate from, and what had to be cut to fit the context."""

    text: str
    tokens: int
    dropped_turns: int = 0
    truncated_tokens: int = 0

    def warning(self) -> str | None:
        parts = []
        if self.dropped_turns:
            parts.append(f"dropped the {self.dropped_turns} oldest exchange(s) of the history")
        if self.truncated_tokens:
            parts.append(f"cut the first {self.truncated_tokens} tokens of the message")
        if not parts:
            return None
        return "prompt too long for the context: " + " and ".join(parts)


def context_length(model, config: GenerateConfig) -> int:
    """Tokens the model can attend to (prompt plus answer)."""
    if config.max_context_tokens > 0:
        return config.max_context_tokens
    model_config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _count(tokenizer, text: str, prompt_type: str) -> int:
    return len(tokenizer(text, add_special_tokens=prompt_type != "chat")["input_ids"])


def build_prompt(tokenizer, history: list[tuple[str, str]], message: str, config: GenerateConfig,
                 context: int) -> Prompt:
    """Render history + message; drop the oldest exchanges, then the start of the message, to fit.

    ``history`` is a list of (human, bot) exchanges. Room for ``max_new_tokens`` is always kept.
    """
    message = message.strip()
    if not message:
        raise GenerationError("empty message: type something to ask")
    budget = context - config.max_new_tokens
    if budget < 8:
        raise GenerationError(f"--max_new_tokens={config.max_new_tokens} leaves no room for a prompt in a "
                              f"context of {context} tokens; lower it (or raise --max_context_tokens)")
    system = config.system_prompt or None

    def render(exchanges, text):
        turns: list[Turn] = [turn for human, bot in exchanges for turn in (("human", human), ("bot", bot))]
        return render_prompt(turns, text, config.prompt_type, tokenizer=tokenizer, system=system)

    history = list(history)
    for dropped in range(len(history) + 1):
        text = render(history[dropped:], message)
        tokens = _count(tokenizer, text, config.prompt_type)
        if tokens <= budget:
            return Prompt(text, tokens, dropped_turns=dropped)
    # Even alone the message is too long: keep its end, which is nearest the answer.
    overhead = _count(tokenizer, render([], ""), config.prompt_type)
    ids = tokenizer(message, add_special_tokens=False)["input_ids"]
    keep = max(budget - overhead - 2, 1)
    while keep > 0:
        text = render([], tokenizer.decode(ids[len(ids) - keep:]).strip() or ".")
        tokens = _count(tokenizer, text, config.prompt_type)
        if tokens <= budget:
            return Prompt(text, tokens, dropped_turns=len(history), truncated_tokens=len(ids) - keep)
        keep -= max(tokens - budget, 1)
    raise GenerationError(f"the prompt format alone needs more than {budget} tokens; shorten --system_prompt")


# ---------------------------------------------------------------- stopping

def answer_stop_strings(config: GenerateConfig, tokenizer) -> list[str]:
    """The prompt type's stop strings (``<human>:`` and ``<bot>:`` for human_bot), ``--stop``, and those
    an exported model recorded in its ``sftkit_prompt.json`` (the ones it learned to end answers with)."""
    recorded = read_prompt_format(resolve_base_model(config.base_model)) or {}
    stops = [*stop_strings(config.prompt_type, tokenizer), *config.stop, *recorded.get("stop", [])]
    return list(dict.fromkeys(s for s in stops if s))


def cut_at_stop(text: str, stops: Iterable[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


class StopTextFilter:
    """Turns streamed text pieces into what may be shown: never a stop string, nor any part of one.

    Text that could be the start of a stop string is held back until the next piece tells whether it
    is one, so a stop string split across tokens ("<hu" + "man>:") never flashes on screen.
    Whitespace around the answer is dropped (answers follow ``<bot>:`` and a space), so the text
    shown adds up to exactly the final answer.
    """

    def __init__(self, stops: Iterable[str]):
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.shown = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add a piece; return the newly showable text ("" when held back or after a stop)."""
        if self.stopped:
            return ""
        self.buffer += piece
        if not self.shown:
            self.buffer = self.buffer.lstrip()
        text, found = cut_at_stop(self.buffer, self.stops)
        if found:
            self.stopped = True
            return self._show(text.rstrip())
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        # Trailing whitespace waits too: it is shown only if more answer follows it.
        return self._show(text[: len(text) - hold].rstrip())

    def flush(self) -> str:
        """At the end of generation: whatever was held back, as it cannot start a stop string any more."""
        return "" if self.stopped else self._show(self.buffer.rstrip())

    def _show(self, text: str) -> str:
        self.buffer = self.buffer[len(text):]
        self.shown += text
        return text


class _StopCriteria:
    """Ends each row of a batch at its stop strings, its own token limit, or its cancel event;
    every row once the batch-wide ``cancel`` is set (the Stop button, Ctrl-C)."""

    def __init__(self, tokenizer, stops: list[list[str]], prompt_length: int, limits: list[int],
                 row_cancel: list[threading.Event | None], cancel: list[threading.Event]):
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_length = prompt_length
        self.limits = limits
        self.row_cancel = row_cancel
        self.cancel = [event for event in cancel if event is not None]
        # Every token holds at least one byte, so a stop string spans at most len(bytes) tokens.
        self.window = max((len(s.encode()) for row in stops for s in row), default=0) + 1
        self.stopped_at: dict[int, int] = {}
        self.cut_at: dict[int, int] = {}
        self.halted: set[int] = set()  # rows whose shown text already ended at a stop string

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        rows = input_ids.shape[0]
        if any(event.is_set() for event in self.cancel):
            return torch.ones(rows, dtype=torch.bool, device=input_ids.device)
        done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        new = input_ids[:, self.prompt_length:]
        length = new.shape[1]
        if rows != len(self.stops):  # beam candidates, not rows: only the shared stops apply
            row_stops = [self.stops[0]] * rows
        else:
            row_stops = self.stops
            for row in range(rows):
                event = self.row_cancel[row]
                if length >= self.limits[row] or row in self.halted or (event is not None and event.is_set()):
                    done[row] = True
                    self.cut_at.setdefault(row, length)
        if self.window > 1:
            start = max(length - self.window, 0)
            tails = self.tokenizer.batch_decode(new[:, start:], skip_special_tokens=True)
            for row, tail in enumerate(tails):
                if any(s in tail for s in row_stops[row]):
                    done[row] = True
                    self.stopped_at.setdefault(row, length)
        return done


def _stopping_criteria(*args):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnStrings(_StopCriteria, StoppingCriteria):
        pass

    criteria = StopOnStrings(*args)
    return criteria, StoppingCriteriaList([criteria])


class SparingRepetitionPenalty:
    """Transformers' repetition penalty, except on the tokens that end an answer.

    The stop marker (``<human>:``) is in every prompt, so the plain penalty pushes every answer away
    from stopping (on the embedded model, 1 answer in 5 stopped before ``max_new_tokens`` at 1.07
    against 5 in 5 without it). This applies the same formula to the tokens already in each row
    (its left padding excepted, as ``generate`` does), but leaves each row's ``spared`` ids alone:
    EOS and the tokens of its stop strings.
    """

    def __init__(self, penalty: float, spared: list[list[int]], padding=None):
        self.penalty = penalty
        self.spared = spared  # one list per row, or one list for every row
        self.padding = padding  # left padding per row (a 1-D tensor), or None for unpadded rows

    def __call__(self, input_ids, scores):
        import torch

        rows, vocab = scores.shape
        ids = input_ids.clamp(max=vocab)  # ids past the scores' width cannot be generated: no penalty
        if self.padding is not None:
            padding = self.padding.to(ids.device).repeat_interleave(rows // len(self.padding))
            positions = torch.arange(ids.shape[1], device=ids.device)
            ids = ids.masked_fill(positions[None, :] < padding[:, None], vocab)
        present = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=scores.device)
        present.scatter_(1, ids.to(scores.device), True)
        spared = torch.zeros(len(self.spared), vocab, dtype=torch.bool)
        for row, row_ids in enumerate(self.spared):
            spared[row, [i for i in row_ids if 0 <= i < vocab]] = True
        # Beams and repeated sequences follow their row (generate expands rows with repeat_interleave).
        spared = spared.to(scores.device).repeat_interleave(rows // len(self.spared), dim=0)
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(present[:, :vocab] & ~spared, penalised, scores)


def answer_end_ids(tokenizer, stops: Iterable[str], eos_ids: Iterable[int]) -> list[int]:
    """EOS and every token of each stop string, alone and after a newline (as it follows an answer)."""
    ids = set(eos_ids)
    for stop in stops:
        for text in (stop, "\n" + stop):
            ids.update(tokenizer.encode(text, add_special_tokens=False))
    return sorted(ids)


def generation_kwargs(config: GenerateConfig, model, tokenizer, stops: list[list[str]] | None = None,
                      attention_mask=None) -> dict:
    """Keyword arguments for ``model.generate`` from the settings (sampling knobs only when sampling).

    The repetition penalty is :class:`SparingRepetitionPenalty`, sparing each row's ``stops`` (by
    default the prompt type's and ``--stop``, the same for every row); ``attention_mask`` tells it the
    rows' left padding.
    """
    if config.max_new_tokens < 1:
        raise GenerationError(f"--max_new_tokens={config.max_new_tokens}: must be at least 1")
    if config.num_beams < 1:
        raise GenerationError(f"--num_beams={config.num_beams}: must be at least 1")
    if config.min_new_tokens < 0 or config.min_new_tokens > config.max_new_tokens:
        raise GenerationError(f"--min_new_tokens={config.min_new_tokens}: must be between 0 and "
                              f"--max_new_tokens={config.max_new_tokens}")
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    if config.repetition_penalty <= 0:
        raise GenerationError(f"--repetition_penalty={config.repetition_penalty}: must be above 0 (1.0: none)")
    kwargs = dict(max_new_tokens=config.max_new_tokens, num_beams=config.num_beams,
                  repetition_penalty=1.0, do_sample=config.do_sample,
                  eos_token_id=sorted(eos_ids), pad_token_id=tokenizer.pad_token_id)
    if config.repetition_penalty != 1.0:
        from transformers import LogitsProcessorList

        stops = [answer_stop_strings(config, tokenizer)] if stops is None else stops
        padding = None if attention_mask is None else (attention_mask != 0).int().argmax(dim=1)
        spared = [answer_end_ids(tokenizer, row, eos_ids) for row in stops]
        kwargs["logits_processor"] = LogitsProcessorList(
            [SparingRepetitionPenalty(float(config.repetition_penalty), spared, padding)])
    if config.min_new_tokens:
        kwargs["min_new_tokens"] = config.min_new_tokens
    if config.max_time > 0:
        kwargs["max_time"] = config.max_time
    if config.num_beams > 1:
        kwargs["early_stopping"] = config.early_stopping
    if config.do_sample:
        if config.temperature <= 0:
            raise GenerationError(f"--temperature={config.temperature}: must be above 0 when sampling "
                                  f"(or set --do_sample=False for greedy decoding)")
        if not 0 < config.top_p <= 1:
            raise GenerationError(f"--top_p={config.top_p}: must be in (0, 1]")
        kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    else:
        # Greedy: override sampling defaults a model's generation_config may carry.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def _reseed(config: GenerateConfig) -> None:
    if config.seed:
        import torch

        torch.manual_seed(config.seed)


# ---------------------------------------------------------------- answering

@dataclass
class Answer:
    """One finished answer and how it was made."""

    text: str
    new_tokens: int
    seconds: float
    first_token_seconds: float | None
    finish_reason: str  # "eos", "stop_string", "max_new_tokens" or "cancelled"
    prompt_tokens: int = 0


@dataclass
class Request:
    """One row of a batch: a rendered prompt and what is particular to it.

    ``adapter`` is the peft adapter to answer with (None or "__base__": the base model alone); ``max_new_tokens``
    (at most the batch's) and ``stop`` (added to the prompt type's) apply to this row only, and
    setting ``cancel`` ends this row alone.
    """

    prompt: str
    adapter: str | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    cancel: threading.Event | None = field(default=None, compare=False)


def _requests(prompts: list[str] | list[Request], adapters: list[str | None] | None) -> list[Request]:
    rows = [p if isinstance(p, Request) else Request(p) for p in prompts]
    if adapters is not None:
        rows = [Request(r.prompt, a, r.max_new_tokens, r.stop, r.cancel) for r, a in zip(rows, adapters)]
    return rows


def _tokenize(tokenizer, texts: list[str], config: GenerateConfig, device):
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=config.prompt_type != "chat")
    return {k: v.to(device) for k, v in batch.items()}


def _new_token_count(row_ids, eos_ids: list[int], stopped_at: int | None = None,
                     cut_at: int | None = None) -> tuple[int, str | None]:
    """How many tokens a row really generated (before padding), and what ended it: the end-of-sequence
    token, a stop string (``stopped_at``), or its own limit or cancel (``cut_at``, reason None)."""
    ids = row_ids.tolist()
    eos_at = next((i + 1 for i, t in enumerate(ids) if t in eos_ids), None)
    ends = [(n, why) for n, why in ((eos_at, "eos"), (stopped_at, "stop_string"), (cut_at, None))
            if n is not None]
    return min(ends, key=lambda e: e[0]) if ends else (len(ids), None)


class _Batch:
    """What one ``generate`` call over a list of requests needs: inputs, kwargs, stops, criteria."""

    def __init__(self, model, tokenizer, requests: list[Request], config: GenerateConfig,
                 cancel: list[threading.Event | None]):
        common = answer_stop_strings(config, tokenizer)
        self.stops = [[*common, *(s for s in r.stop if s)] for r in requests]
        self.inputs = _tokenize(tokenizer, [r.prompt for r in requests], config, model.device)
        self.kwargs = generation_kwargs(config, model, tokenizer, self.stops, self.inputs["attention_mask"])
        self.prompt_length = self.inputs["input_ids"].shape[1]
        self.prompt_tokens = self.inputs["attention_mask"].sum(dim=1).tolist()
        limits = [min(r.max_new_tokens or config.max_new_tokens, config.max_new_tokens) for r in requests]
        self.criteria, self.criteria_list = _stopping_criteria(
            tokenizer, self.stops, self.prompt_length, limits, [r.cancel for r in requests], cancel)
        if _is_peft(model):
            names = ["__base__" if r.adapter is None else r.adapter for r in requests]
            if set(names) != {model.active_adapter}:  # all on the active adapter: a plain forward does it
                self.kwargs["adapter_names"] = names
        elif any(r.adapter not in (None, "__base__") for r in requests):
            raise GenerationError(f"adapter {next(r.adapter for r in requests if r.adapter)!r} asked of a model "
                                  f"without adapters")


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "base_model")


def generate_answers(model, tokenizer, prompt_texts: list[str] | list[Request], config: GenerateConfig,
                     cancel: threading.Event | None = None, adapters: list[str | None] | None = None,
                     synced_gpus: bool = False) -> list[Answer]:
    """Answer rendered prompts together in one ``generate`` call (left-padded), without streaming.

    ``adapters`` names each row's adapter (None: the base model); left out, a model with adapters
    answers with its active one. With ``num_return_sequences`` > 1 there are that many answers per
    prompt, in prompt order. ``synced_gpus`` keeps every rank stepping until all are done (DeepSpeed
    ZeRO-3 gathers weights collectively in each forward; training validation uses it).
    """
    import torch

    requests = _requests(prompt_texts, adapters)
    repeats = max(config.num_return_sequences, 1)
    if repeats > 1 and config.num_beams == 1:  # sampled alternatives: repeat the rows
        requests = [r for r in requests for _ in range(repeats)]
    if adapters is None and _is_peft(model):
        active = model.active_adapter
        requests = [Request(r.prompt, r.adapter or active, r.max_new_tokens, r.stop, r.cancel) for r in requests]
    batch = _Batch(model, tokenizer, requests, config, [cancel])
    if repeats > 1 and config.num_beams > 1:
        batch.kwargs["num_return_sequences"] = min(repeats, config.num_beams)
    _reseed(config)
    start = time.perf_counter()
    # Under ZeRO-3 the gathered weights must not become inference tensors: training goes on after.
    with torch.no_grad() if synced_gpus else torch.inference_mode():
        output = model.generate(**batch.inputs, **batch.kwargs, stopping_criteria=batch.criteria_list,
                                **({"synced_gpus": True} if synced_gpus else {}))
    seconds = time.perf_counter() - start
    per_prompt = output.shape[0] // len(requests)
    answers = []
    for row, ids in enumerate(output[:, batch.prompt_length:]):
        source = row // per_prompt
        # With beams the criteria see candidate beams, not output rows: count up to EOS only.
        beams = config.num_beams > 1
        stopped_at = None if beams else batch.criteria.stopped_at.get(row)
        cut_at = None if beams else batch.criteria.cut_at.get(row)
        count, reason = _new_token_count(ids, batch.kwargs["eos_token_id"], stopped_at, cut_at)
        text, found = cut_at_stop(tokenizer.decode(ids[:count], skip_special_tokens=True), batch.stops[source])
        if reason is None:
            reason = "cancelled" if _cancelled(cancel, requests[source].cancel) else "max_new_tokens"
        answers.append(Answer(text.strip(), count, seconds, None, "stop_string" if found else reason,
                              int(batch.prompt_tokens[source])))
    return answers


def _cancelled(*events: threading.Event | None) -> bool:
    return any(event is not None and event.is_set() for event in events)


class BatchStreamer:
    """A ``generate`` streamer for a whole batch: queues ``(row, text)`` as each row's tokens decode.

    Each row's answer is decoded from its start every time, so tokenizers that merge spaces across
    tokens stream correctly; a piece ending in half a multi-byte character waits for the rest.
    """

    _END = object()

    def __init__(self, tokenizer, rows: int):
        self.tokenizer = tokenizer
        self.queue: queue.Queue = queue.Queue()
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [0] * rows
        self.prompt_seen = False
        self.first_token_time: float | None = None

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        if value.dim() > 1:
            value = value[:, -1]
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        for row, token in enumerate(value.tolist()):
            self.ids[row].append(token)
            self._send(row, final=False)

    def _send(self, row: int, final: bool) -> None:
        text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:  # an incomplete multi-byte character: wait for its next byte
            return
        if len(text) > self.sent[row]:
            self.queue.put((row, text[self.sent[row]:]))
            self.sent[row] = len(text)

    def end(self) -> None:
        for row in range(len(self.ids)):
            self._send(row, final=True)
        self.queue.put(self._END)

    def fail(self, exc: BaseException) -> None:
        self.queue.put(exc)
        self.queue.put(self._END)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class BatchStream:
    """Streams the answers of several requests generated together in one padded batch.

    Iterate for ``(row, text)`` pieces as they are generated; ``.answers`` once finished. Generation
    runs in a background thread. Leaving the loop early or setting ``cancel`` stops the whole batch
    at the next token; a request's own ``cancel`` ends its row only. With beam search, which cannot
    stream, each answer arrives as one piece.
    """

    def __init__(self, model, tokenizer, requests: list[Request], config: GenerateConfig,
                 cancel: threading.Event | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.requests = requests
        self.config = config
        self.cancel = cancel or threading.Event()
        self.answers: list[Answer] | None = None

    def __iter__(self) -> Iterator[tuple[int, str]]:
        if self.config.num_beams > 1:
            answers = generate_answers(self.model, self.tokenizer, self.requests,
                                       _one_sequence(self.config), self.cancel,
                                       adapters=[r.adapter for r in self.requests])
            self.answers = answers
            for row, answer in enumerate(answers):
                if answer.text:
                    yield row, answer.text
            return
        yield from self._stream()

    def _stream(self) -> Iterator[tuple[int, str]]:
        import torch

        config, tokenizer, model, requests = self.config, self.tokenizer, self.model, self.requests
        halt = threading.Event()  # set here once every row has shown a stop string
        batch = _Batch(model, tokenizer, requests, config, [self.cancel, halt])
        streamer = BatchStreamer(tokenizer, len(requests))
        shown = [StopTextFilter(stops) for stops in batch.stops]
        result: dict = {}

        def work():
            try:
                _reseed(config)
                with torch.inference_mode():
                    result["output"] = model.generate(**batch.inputs, **batch.kwargs,
                                                      stopping_criteria=batch.criteria_list, streamer=streamer)
                streamer.end()
            except BaseException as exc:  # re-raised in the consuming thread
                streamer.fail(exc)

        start = time.perf_counter()
        first: dict[int, float] = {}
        thread = threading.Thread(target=work, name="sftkit-generate", daemon=True)
        thread.start()
        try:
            for row, piece in streamer:
                visible = shown[row].feed(piece)
                if visible:
                    first.setdefault(row, time.perf_counter() - start)
                    yield row, visible
                if shown[row].stopped:
                    batch.criteria.halted.add(row)
                    if all(s.stopped for s in shown):
                        halt.set()
            for row, filter_ in enumerate(shown):
                tail = filter_.flush()
                if tail:
                    first.setdefault(row, time.perf_counter() - start)
                    yield row, tail
        finally:
            if thread.is_alive():
                self.cancel.set()
                thread.join()
        seconds = time.perf_counter() - start
        answers = []
        for row, request in enumerate(requests):
            count, reason = len(streamer.ids[row]), None
            if "output" in result:
                new = result["output"][row, batch.prompt_length:]
                count, reason = _new_token_count(new, batch.kwargs["eos_token_id"],
                                                 batch.criteria.stopped_at.get(row), batch.criteria.cut_at.get(row))
            if shown[row].stopped:
                reason = "stop_string"
            elif reason is None:
                reason = "cancelled" if _cancelled(self.cancel, request.cancel) and count < (
                    request.max_new_tokens or config.max_new_tokens) else "max_new_tokens"
            answers.append(Answer(shown[row].shown.strip(), count, seconds, first.get(row), reason,
                                  int(batch.prompt_tokens[row])))
        self.answers = answers


def _one_sequence(config: GenerateConfig) -> GenerateConfig:
    return replace(config, num_return_sequences=1)


class AnswerStream:
    """Streams one answer: iterate for the text as it is generated; ``.answer`` once finished.

    Generation runs in a background thread. Leaving the loop early (closing the iterator, a Stop
    button, Ctrl-C) or setting ``cancel`` stops that thread at the next token. With beam search,
    which cannot stream, the whole answer arrives as one piece.
    """

    def __init__(self, model, tokenizer, prompt_text: str, config: GenerateConfig,
                 cancel: threading.Event | None = None, adapter: str | None = None):
        active = model.active_adapter if adapter is None and _is_peft(model) else adapter
        self.batch = BatchStream(model, tokenizer, [Request(prompt_text, active)], config, cancel)
        self.cancel = self.batch.cancel
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        pieces = iter(self.batch)
        try:
            for _, piece in pieces:
                yield piece
        finally:
            pieces.close()
            if self.batch.answers:
                self.answer = self.batch.answers[0]
