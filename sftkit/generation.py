"""Answering with a base model plus an optional LoRA adapter: prompting, stopping, streaming, batches.

The browser UI (sftkit/ui.py), the terminal chat (sftkit/terminal.py) and batch mode all answer
through this module, so every front end prompts a model exactly as training rendered it
(sftkit.prompts) and stops it the same way: at an end-of-sequence token, or at the prompt type's
stop strings (``<human>:`` …) even when a stop string is split across several tokens.
"""
from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sftkit import atomic
from sftkit.errors import GenerationError
from sftkit.flags import flag
from sftkit.models import DEFAULT_BASE_MODEL, ModelError, apply_adapter, load_model, load_tokenizer
from sftkit.prompts import get_prompt_type, prompt_type_names, render_prompt, stop_strings

Turn = tuple[str, str]


@dataclass
class GenerateConfig:
    """Settings of generate.py: the model, how to sample, and which front end to run."""

    base_model: str = flag(DEFAULT_BASE_MODEL, "Base model: a hub id, a local directory, or a built-in alias.")
    lora_weights: str | None = flag(None, "LoRA adapter directory (finetune.py's output_dir; if it holds only "
                                          "checkpoint-* folders, the newest one). None: the base model alone.")
    prompt_type: str = flag("human_bot", f"Prompt format, the same as training used: {prompt_type_names()}.")
    system_prompt: str = flag("", "Text put before the conversation (empty: none).")
    stop: list[str] = flag([], "Extra strings that end an answer (comma-separated), besides the end-of-sequence "
                               "token and the prompt type's own (<human>: and <bot>: for human_bot).")
    load_8bit: bool = flag(False, "Load the base model in 8-bit through bitsandbytes.")
    load_4bit: bool = flag(False, "Load the base model in 4-bit nf4 through bitsandbytes.")
    local_files_only: bool = flag(False, "Never reach a model hub; load from local files and caches only.")
    trust_remote_code: bool = flag(False, "Run model code shipped with the checkpoint (only for models you trust).")
    device: str | None = flag(None, "Device such as cpu or cuda:0. None: this rank's GPU if there is one, else CPU.")
    temperature: float = flag(0.7, "Sampling temperature (used when do_sample is True).")
    top_p: float = flag(0.9, "Nucleus sampling: keep the smallest token set with this much probability.")
    top_k: int = flag(50, "Sample only among the k most likely tokens (0: no limit).")
    num_beams: int = flag(1, "Beam search width; 1 is greedy or sampling. Beams > 1 answer without streaming.")
    max_new_tokens: int = flag(256, "Most tokens generated per answer.")
    repetition_penalty: float = flag(1.07, "Penalty > 1 discourages repeating tokens already in the text.")
    do_sample: bool = flag(False, "Sample (True) or decode greedily / by beam search (False).")
    seed: int = flag(0, "Reseed before every answer so sampling is reproducible; 0: fresh randomness.")
    max_context_tokens: int = flag(0, "Context length for prompt plus answer; 0: the model's own "
                                      "(max_position_embeddings). History is trimmed from the oldest turn to fit.")
    cli: bool = flag(False, "Chat in the terminal instead of the browser UI.")
    eval_prompts_file: str | None = flag(None, "Batch mode: a JSON or JSONL list of prompts (strings, or rows with "
                                               "'prompt' or 'instruction'/'input').")
    eval_output_file: str | None = flag(None, "Batch mode: where to write the JSON list of "
                                              "{prompt, response, seconds, new_tokens[, score]}.")
    overwrite: bool = flag(False, "Batch mode: replace an existing eval_output_file.")
    batch_size: int = flag(1, "Batch mode: prompts generated together (left-padded).")
    reward_model: str | None = flag(None, "Batch mode: reward model (hub id or directory) that scores each answer.")
    server_name: str = flag("127.0.0.1", "Address the browser UI binds to (0.0.0.0 exposes it to your network).")
    server_port: int = flag(7860, "Port of the browser UI.")
    share: bool = flag(False, "Ask gradio for a public share link (off: the UI stays on this machine).")
    config: str | None = flag(None, "YAML recipe with any of these flags.", env="SFTKIT_GENERATE_CONFIG")




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


def load_for_generation(config: GenerateConfig):
    """(model, tokenizer) ready to answer: base model, optional adapter, eval mode, left padding."""
    get_prompt_type(config.prompt_type)  # fail on a typo before loading anything
    common = dict(local_files_only=config.local_files_only, trust_remote_code=config.trust_remote_code)
    tokenizer = load_tokenizer(config.base_model, padding_side="left", **common)
    adapter = resolve_adapter(config.lora_weights) if config.lora_weights else None
    model = load_model(config.base_model, device=config.device, load_8bit=config.load_8bit,
                       load_4bit=config.load_4bit, **common)
    if adapter:
        model = apply_adapter(model, adapter, base_model=config.base_model)
    model.eval()
    return model, tokenizer


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
    """The prompt type's stop strings (``<human>:`` and ``<bot>:`` for human_bot) and ``--stop``."""
    return [s for s in [*stop_strings(config.prompt_type, tokenizer), *config.stop] if s]


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


def _stopping_criteria_class():
    from transformers import StoppingCriteria

    class StopOnStrings(StoppingCriteria):
        """Ends each row of a batch once its new tokens decode to a text holding a stop string,
        or every row once one of the ``cancel`` events is set (the Stop button, Ctrl-C)."""

        def __init__(self, tokenizer, stops: list[str], prompt_length: int, *cancel: threading.Event | None):
            self.tokenizer = tokenizer
            self.stops = stops
            self.prompt_length = prompt_length
            self.cancel = [event for event in cancel if event is not None]
            # Every token holds at least one byte, so a stop string spans at most len(bytes) tokens.
            self.window = max((len(s.encode()) for s in stops), default=0) + 1
            self.stopped_at: dict[int, int] = {}

        def __call__(self, input_ids, scores, **kwargs):
            import torch

            rows = input_ids.shape[0]
            if any(event.is_set() for event in self.cancel):
                return torch.ones(rows, dtype=torch.bool, device=input_ids.device)
            done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
            if not self.stops:
                return done
            new = input_ids[:, self.prompt_length:]
            start = max(new.shape[1] - self.window, 0)
            tails = self.tokenizer.batch_decode(new[:, start:], skip_special_tokens=True)
            for row, tail in enumerate(tails):
                if any(s in tail for s in self.stops):
                    done[row] = True
                    self.stopped_at.setdefault(row, new.shape[1])
            return done

    return StopOnStrings


def generation_kwargs(config: GenerateConfig, model, tokenizer) -> dict:
    """Keyword arguments for ``model.generate`` from the settings (sampling knobs only when sampling)."""
    if config.max_new_tokens < 1:
        raise GenerationError(f"--max_new_tokens={config.max_new_tokens}: must be at least 1")
    if config.num_beams < 1:
        raise GenerationError(f"--num_beams={config.num_beams}: must be at least 1")
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    kwargs = dict(max_new_tokens=config.max_new_tokens, num_beams=config.num_beams,
                  repetition_penalty=config.repetition_penalty, do_sample=config.do_sample,
                  eos_token_id=sorted(eos_ids), pad_token_id=tokenizer.pad_token_id)
    if config.do_sample:
        if config.temperature <= 0:
            raise GenerationError(f"--temperature={config.temperature}: must be above 0 when sampling "
                                  f"(or set --do_sample=False for greedy decoding)")
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


def _tokenize(tokenizer, texts: list[str], config: GenerateConfig, device):
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=config.prompt_type != "chat")
    return {k: v.to(device) for k, v in batch.items()}


def _new_token_count(row_ids, eos_ids: list[int], stopped_at: int | None) -> tuple[int, str | None]:
    """How many tokens a row really generated (before padding), and what ended it."""
    ids = row_ids.tolist()
    eos_at = next((i + 1 for i, t in enumerate(ids) if t in eos_ids), None)
    ends = [(n, why) for n, why in ((eos_at, "eos"), (stopped_at, "stop_string")) if n is not None]
    return min(ends) if ends else (len(ids), None)


def generate_answers(model, tokenizer, prompt_texts: list[str], config: GenerateConfig,
                     cancel: threading.Event | None = None) -> list[Answer]:
    """Answer rendered prompts together in one ``generate`` call (left-padded), without streaming."""
    import torch

    kwargs = generation_kwargs(config, model, tokenizer)
    stops = answer_stop_strings(config, tokenizer)
    inputs = _tokenize(tokenizer, prompt_texts, config, model.device)
    prompt_length = inputs["input_ids"].shape[1]
    criteria = _stopping_criteria_class()(tokenizer, stops, prompt_length, cancel)
    _reseed(config)
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**inputs, **kwargs, stopping_criteria=[criteria])
    seconds = time.perf_counter() - start
    answers = []
    for row, ids in enumerate(output[:, prompt_length:]):
        # With beams the criteria see candidate beams, not output rows: count up to EOS only.
        stopped_at = criteria.stopped_at.get(row) if config.num_beams == 1 else None
        count, reason = _new_token_count(ids, kwargs["eos_token_id"], stopped_at)
        text, found = cut_at_stop(tokenizer.decode(ids[:count], skip_special_tokens=True), stops)
        if reason is None:
            reason = "cancelled" if cancel is not None and cancel.is_set() else "max_new_tokens"
        answers.append(Answer(text.strip(), count, seconds, None, "stop_string" if found else reason))
    return answers


class TokenStreamer:
    """A ``generate`` streamer (TextIteratorStreamer-style) that hands decoded text to another thread.

    Each new token's text is queued as soon as it decodes to whole characters; the answer is decoded
    from its start every time so tokenizers that merge spaces across tokens stream correctly.
    """

    _END = object()

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.queue: queue.Queue = queue.Queue()
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False
        self.first_token_time: float | None = None

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        if value.dim() > 1:
            if value.shape[0] != 1:
                raise ValueError("TokenStreamer streams one sequence at a time")
            value = value[0]
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        self.ids.extend(value.tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its next byte
            return
        if len(text) > self.sent:
            self.queue.put(text[self.sent:])
            self.sent = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.sent:
            self.queue.put(text[self.sent:])
            self.sent = len(text)
        self.queue.put(self._END)

    def fail(self, exc: BaseException) -> None:
        self.queue.put(exc)
        self.queue.put(self._END)

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class AnswerStream:
    """Streams one answer: iterate for the text as it is generated; ``.answer`` once finished.

    Generation runs in a background thread. Leaving the loop early (closing the iterator, a Stop
    button, Ctrl-C) or setting ``cancel`` stops that thread at the next token. With beam search,
    which cannot stream, the whole answer arrives as one piece.
    """

    def __init__(self, model, tokenizer, prompt_text: str, config: GenerateConfig,
                 cancel: threading.Event | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_text = prompt_text
        self.config = config
        self.cancel = cancel or threading.Event()
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        if self.config.num_beams > 1:
            (answer,) = generate_answers(self.model, self.tokenizer, [self.prompt_text], self.config, self.cancel)
            self.answer = answer
            if answer.text:
                yield answer.text
            return
        yield from self._stream()

    def _stream(self) -> Iterator[str]:
        import torch

        config, tokenizer, model = self.config, self.tokenizer, self.model
        kwargs = generation_kwargs(config, model, tokenizer)
        stops = answer_stop_strings(config, tokenizer)
        inputs = _tokenize(tokenizer, [self.prompt_text], config, model.device)
        halt = threading.Event()  # set here once a stop string shows, so the thread ends at once
        criteria = _stopping_criteria_class()(tokenizer, stops, inputs["input_ids"].shape[1], self.cancel, halt)
        streamer = TokenStreamer(tokenizer)
        shown = StopTextFilter(stops)
        result: dict = {}

        def work():
            try:
                _reseed(config)
                with torch.inference_mode():
                    result["output"] = model.generate(**inputs, **kwargs, stopping_criteria=[criteria],
                                                      streamer=streamer)
                streamer.end()
            except BaseException as exc:  # re-raised in the consuming thread
                streamer.fail(exc)

        start = time.perf_counter()
        thread = threading.Thread(target=work, name="sftkit-generate", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                visible = shown.feed(piece)
                if visible:
                    yield visible
                if shown.stopped:
                    halt.set()
            tail = shown.flush()
            if tail:
                yield tail
        finally:
            if thread.is_alive():
                self.cancel.set()
                thread.join()
        count, reason = len(streamer.ids), None
        if "output" in result:
            new = result["output"][0, inputs["input_ids"].shape[1]:]
            count, reason = _new_token_count(new, kwargs["eos_token_id"], criteria.stopped_at.get(0))
        if shown.stopped:
            reason = "stop_string"
        elif reason is None:
            reason = "cancelled" if self.cancel.is_set() else "max_new_tokens"
        first = streamer.first_token_time - start if streamer.first_token_time else None
        self.answer = Answer(shown.shown.strip(), count, time.perf_counter() - start, first, reason)


# ---------------------------------------------------------------- batch mode

def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a JSON list or JSONL file: strings, or rows with 'prompt' or 'instruction' (+ 'input')."""
    path = Path(path)
    if not path.is_file():
        raise GenerationError(f"--eval_prompts_file={path}: no such file")
    raw = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = [(n, json.loads(line)) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
            where = "line"
        else:
            data = json.loads(raw)
            if not isinstance(data, list):
                raise GenerationError(f"{path}: expected a JSON list of prompts, got a {type(data).__name__}")
            rows = list(enumerate(data, 1))
            where = "item"
    except json.JSONDecodeError as exc:
        raise GenerationError(f"{path}: not valid JSON{'L' if path.suffix == '.jsonl' else ''} ({exc})") from None
    prompts = []
    for n, row in rows:
        if isinstance(row, dict):
            if "prompt" in row:
                text = row["prompt"]
            elif "instruction" in row:
                text = "\n\n".join(str(part) for part in (row["instruction"], row.get("input")) if part)
            else:
                raise GenerationError(f"{path} {where} {n}: a row needs 'prompt' or 'instruction'; "
                                      f"it has {sorted(row)}")
        else:
            text = row
        if not isinstance(text, str) or not text.strip():
            raise GenerationError(f"{path} {where} {n}: empty or non-text prompt {text!r}")
        prompts.append(text)
    if not prompts:
        raise GenerationError(f"{path}: holds no prompts")
    return prompts


def answer_batch(model, tokenizer, prompts: list[str], config: GenerateConfig, *,
                 on_rows: Callable[[list[dict]], None] | None = None, progress: bool = True) -> list[dict]:
    """Answer single-turn prompts: ``[{prompt, response, seconds, new_tokens}]`` (+ ``score`` with a reward model).

    ``seconds`` is the wall time of the generate call that made the answer (shared within a batch).
    """
    from tqdm.auto import tqdm

    context = context_length(model, config)
    rows: list[dict] = []
    size = max(config.batch_size, 1)
    with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(prompts), size):
            chunk = prompts[start:start + size]
            rendered = []
            for n, message in enumerate(chunk, start + 1):
                prompt = build_prompt(tokenizer, [], message, config, context)
                if prompt.warning():
                    warnings.warn(f"prompt {n}: {prompt.warning()}", stacklevel=2)
                rendered.append(prompt.text)
            answers = generate_answers(model, tokenizer, rendered, config)
            new = [dict(prompt=p, response=a.text, seconds=round(a.seconds, 3), new_tokens=a.new_tokens)
                   for p, a in zip(chunk, answers)]
            rows += new
            if on_rows:
                on_rows(new)
            bar.update(len(chunk))
    if config.reward_model:
        add_scores(rows, load_scorer(config))
    return rows


def load_scorer(config: GenerateConfig):
    """The reward model of ``--reward_model``, the same scorer as the grade stage of create_data.py."""
    from sftkit.reward import RewardModelScorer, ScorerError

    try:
        return RewardModelScorer(config.reward_model, device=config.device, local_files_only=config.local_files_only,
                                 trust_remote_code=config.trust_remote_code)
    except ScorerError as exc:
        raise GenerationError(str(exc)) from None


def add_scores(rows: list[dict], scorer) -> list[dict]:
    """Add the reward model's ``score`` of each (prompt, response) to its row."""
    scores = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    for row, score in zip(rows, scores):
        row["score"] = float(score)
    return rows


def _progress_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial.jsonl")


def _read_progress(progress: Path, prompts: list[str]) -> list[dict]:
    """Rows finished by an interrupted run, checked to be answers to the same prompts."""
    if not progress.is_file():
        return []
    rows = []
    for n, line in enumerate(progress.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by the interruption: redo it
    for n, row in enumerate(rows):
        if n >= len(prompts) or row.get("prompt") != prompts[n]:
            raise GenerationError(f"{progress} holds answers to other prompts (row {n + 1}); delete it to "
                                  f"start over")
    return rows


def run_batch(config: GenerateConfig, model=None, tokenizer=None) -> list[dict]:
    """Batch mode: answer every prompt of eval_prompts_file into eval_output_file; resumes if interrupted."""
    if not config.eval_output_file:
        raise GenerationError("--eval_prompts_file needs --eval_output_file (where to write the answers)")
    output = Path(config.eval_output_file)
    if output.exists() and not config.overwrite:
        raise GenerationError(f"--eval_output_file={output} exists; pass --overwrite=True to replace it or "
                              f"choose another file")
    if not output.parent.is_dir():
        raise GenerationError(f"--eval_output_file={output}: directory {output.parent} does not exist")
    prompts = read_prompts(config.eval_prompts_file)
    progress = _progress_path(output)
    done = _read_progress(progress, prompts)
    if done:
        print(f"sftkit: resuming {output}: {len(done)} of {len(prompts)} prompts already answered", file=sys.stderr)
    scorer = load_scorer(config) if config.reward_model else None  # fail before generating, not after
    if model is None:
        model, tokenizer = load_for_generation(config)
    with progress.open("w", encoding="utf-8") as fh:
        for row in done:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()

        def save(new_rows):
            for row in new_rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

        rows = done + answer_batch(model, tokenizer, prompts[len(done):], replace(config, reward_model=None),
                                   on_rows=save)
    if scorer is not None:
        add_scores(rows, scorer)
    atomic.write_json(output, rows)
    progress.unlink()
    seconds = sum(r["seconds"] for r in rows)
    tokens = sum(r["new_tokens"] for r in rows)
    score = f", mean score {sum(r['score'] for r in rows) / len(rows):.3f}" if config.reward_model else ""
    print(f"generate: {len(rows)} answers, {tokens} new tokens in {seconds:.1f} s of generation{score} "
          f"-> {output}", file=sys.stderr)
    return rows


# ---------------------------------------------------------------- entry point

def main(config: GenerateConfig):
    """generate.py: batch mode with --eval_prompts_file, the terminal with --cli, else the browser UI."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GenerationError("generate.py serves one model in one process: run it with plain python or "
                              "torchrun --nproc_per_node=1")
    if config.eval_output_file and not config.eval_prompts_file:
        raise GenerationError("--eval_output_file needs --eval_prompts_file (the prompts to answer)")
    if config.eval_prompts_file:
        return run_batch(config)
    model, tokenizer = load_for_generation(config)
    if config.cli:
        from sftkit.terminal import chat_loop

        return chat_loop(model, tokenizer, config)
    from sftkit.ui import serve

    return serve(model, tokenizer, config)
