"""The generation engine: answer rendered prompts, streamed or not, several in one padded batch.

Every front end (browser UI, terminal, OpenAI-compatible API, batch/eval mode) and training
validation answer through this module, so a model is stopped the same way everywhere: at an
end-of-sequence token, or at the prompt type's stop strings (``<human>:`` …) even when a stop
string spans several tokens (:mod:`sftkit.generation.decoding`). Each request of a batch names its
model (:class:`~sftkit.generation.loading.Models`); peft's mixed-adapter batches let rows use
different adapters of one base model, so switching adapters never reloads anything. Answers are
made in one place (:func:`_answers`), with one rule for their text and why they ended.
This module knows nothing of its front ends.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
from transformers import StoppingCriteriaList

from sftkit.generation.config import GenerateConfig
from sftkit.generation.decoding import (AnswerFollower, answer_stop_strings, cut_at_stop, generation_kwargs,
                                        reseed)
from sftkit.generation.loading import Models, is_peft
from sftkit.prompts import encode


@dataclass
class Answer:
    """One finished answer and how it was made."""

    text: str
    new_tokens: int
    seconds: float
    first_token_seconds: float | None
    finish_reason: str  # "eos", "stop_string", "max_new_tokens" or "cancelled"
    prompt_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)  # the new tokens as generated, stop string included


@dataclass
class Request:
    """One row of a batch: a rendered prompt and what is particular to it.

    ``model`` names the model that answers (one of :attr:`Models.names`; None: the default);
    ``max_new_tokens`` (None: the config's) and ``stop`` (added to the prompt type's) apply to this
    row only, and setting ``cancel`` ends this row alone.
    """

    prompt: str
    model: str | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    cancel: threading.Event | None = field(default=None, compare=False)


class _Batch:
    """One ``generate`` call over a list of requests: its inputs, arguments and the follower of its rows."""

    def __init__(self, models: Models, requests: list[Request], config: GenerateConfig,
                 cancel: threading.Event | None, on_text=None):
        model, tokenizer = models.model, models.tokenizer
        self.models, self.requests, self.config, self.cancel = models, requests, config, cancel
        self.beams = config.num_beams > 1
        common = answer_stop_strings(config, tokenizer)
        self.stops = [[*common, *(s for s in r.stop if s)] for r in requests]
        self.limits = [r.max_new_tokens or config.max_new_tokens for r in requests]
        batch = encode(tokenizer, [r.prompt for r in requests], config.prompt_type, return_tensors="pt",
                       padding=True, padding_side="left")
        self.inputs = {k: v.to(model.device) for k, v in batch.items()}
        self.kwargs = generation_kwargs(config, model, tokenizer, self.stops, self.inputs["attention_mask"])
        self.kwargs["max_new_tokens"] = max(self.limits)
        self.prompt_length = self.inputs["input_ids"].shape[1]
        self.prompt_tokens = self.inputs["attention_mask"].sum(dim=1).tolist()
        self.follower = AnswerFollower(tokenizer, self.stops, self.prompt_length, self.limits,
                                       self.kwargs["eos_token_id"], [r.cancel for r in requests], [cancel],
                                       beams=self.beams, on_text=on_text)
        names = [models.peft_adapter(r.model) for r in requests]  # an unknown name fails here
        if is_peft(model) and set(names) != {model.active_adapter}:  # else a plain forward does it
            self.kwargs["adapter_names"] = names

    def generate(self, **extra):
        reseed(self.config)
        return self.models.model.generate(**self.inputs, **self.kwargs,
                                          stopping_criteria=StoppingCriteriaList([self.follower]), **extra)


def _answers(batch: _Batch, output, seconds: float) -> list[Answer]:
    """The answers of a finished batch. An answer's text is its tokens decoded and cut at the first stop
    string; it ended at a stop string if one was found, else at its end-of-sequence token, else by a
    cancel before its limit, else at its limit."""
    eos_ids, beams, tokenizer = set(batch.kwargs["eos_token_id"]), batch.beams, batch.models.tokenizer
    per_request = output.shape[0] // len(batch.requests)
    follower = batch.follower
    answers = []
    for row, ids in enumerate(output[:, batch.prompt_length:].tolist()):
        source = row // per_request
        request = batch.requests[source]
        # With beams the follower saw candidate beams, not output rows: count up to EOS only.
        ends = [n for n in (next((i + 1 for i, t in enumerate(ids) if t in eos_ids), None),
                            None if beams else follower.stopped_at.get(row),
                            None if beams else follower.cut_at.get(row)) if n is not None]
        count = min(ends, default=len(ids))
        text, found = cut_at_stop(tokenizer.decode(ids[:count], skip_special_tokens=True), batch.stops[source])
        cancelled = any(event is not None and event.is_set() for event in (batch.cancel, request.cancel))
        if found:
            reason = "stop_string"
        elif count and ids[count - 1] in eos_ids:
            reason = "eos"
        elif cancelled and count < batch.limits[source]:
            reason = "cancelled"
        else:
            reason = "max_new_tokens"
        answers.append(Answer(text.strip(), count, seconds, follower.first_text.get(row), reason,
                              int(batch.prompt_tokens[source]), ids[:count]))
    return answers


def _as_requests(prompts: list[str] | list[Request]) -> list[Request]:
    return [p if isinstance(p, Request) else Request(p) for p in prompts]


def generate_answers(models: Models, prompts: list[str] | list[Request], config: GenerateConfig,
                     cancel: threading.Event | None = None, synced_gpus: bool = False) -> list[Answer]:
    """Answer rendered prompts together in one ``generate`` call (left-padded), without streaming.

    With ``num_return_sequences`` > 1 there are that many answers per prompt, in prompt order.
    ``synced_gpus`` keeps every rank stepping until all are done (DeepSpeed ZeRO-3 gathers weights
    collectively in each forward; training validation uses it).
    """
    requests = _as_requests(prompts)
    repeats = config.num_return_sequences
    beams = config.num_beams > 1
    if repeats > 1 and not beams:  # sampled alternatives: repeat the rows
        requests = [r for r in requests for _ in range(repeats)]
    batch = _Batch(models, requests, config, cancel)
    extra = {"synced_gpus": True} if synced_gpus else {}
    if repeats > 1 and beams:
        extra["num_return_sequences"] = min(repeats, config.num_beams)
    start = time.perf_counter()
    # Under ZeRO-3 the gathered weights must not become inference tensors: training goes on after.
    with torch.no_grad() if synced_gpus else torch.inference_mode():
        output = batch.generate(**extra)
    return _answers(batch, output, time.perf_counter() - start)


class BatchStream:
    """Streams the answers of several requests generated together in one padded batch.

    Iterate for ``(row, text)`` pieces as they are generated; ``.answers`` once finished. Generation
    runs in a background thread. Leaving the loop early or setting ``cancel`` stops the whole batch
    at the next token; a request's own ``cancel`` ends its row only. With beam search, which cannot
    stream, each answer arrives as one piece.
    """

    _END = object()

    def __init__(self, models: Models, requests: list[Request], config: GenerateConfig,
                 cancel: threading.Event | None = None):
        self.models = models
        self.requests = requests
        self.config = replace(config, num_return_sequences=1)
        self.cancel = cancel or threading.Event()
        self.answers: list[Answer] | None = None

    def __iter__(self) -> Iterator[tuple[int, str]]:
        if self.config.num_beams > 1:
            self.answers = generate_answers(self.models, self.requests, self.config, self.cancel)
            for row, answer in enumerate(self.answers):
                if answer.text:
                    yield row, answer.text
            return
        pieces: queue.Queue = queue.Queue()
        batch = _Batch(self.models, self.requests, self.config, self.cancel,
                       on_text=lambda row, text: pieces.put((row, text)))
        result: dict = {}

        def work():
            try:
                with torch.inference_mode():
                    result["output"] = batch.generate()
                batch.follower.finish()
            except BaseException as exc:  # re-raised in the consuming thread
                result["error"] = exc
            pieces.put(self._END)

        start = time.perf_counter()
        thread = threading.Thread(target=work, name="sftkit-generate", daemon=True)
        thread.start()
        try:
            while (item := pieces.get()) is not self._END:
                yield item
        finally:
            if thread.is_alive():
                self.cancel.set()
                thread.join()
        if "error" in result:
            raise result["error"]
        self.answers = _answers(batch, result["output"], time.perf_counter() - start)


class AnswerStream:
    """Streams one answer: iterate for the text as it is generated; ``.answer`` once finished.

    Generation runs in a background thread. Leaving the loop early (closing the iterator, a Stop
    button, Ctrl-C) or setting ``cancel`` stops that thread at the next token. With beam search,
    which cannot stream, the whole answer arrives as one piece.
    """

    def __init__(self, models: Models, request: Request | str, config: GenerateConfig,
                 cancel: threading.Event | None = None):
        self.batch = BatchStream(models, _as_requests([request]), config, cancel)
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
