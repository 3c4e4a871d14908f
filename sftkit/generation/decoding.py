"""Decoding: what steers and ends ``model.generate`` — stop strings, the stopping criteria, the
repetition penalty that spares the tokens ending an answer, and ``generate``'s keyword arguments.

Stop strings are found by :class:`StopMatcher`, an Aho–Corasick automaton over all of them: each new
character moves it one step, and its state says how much of the text read so far could still grow
into a stop string (that much is held back from display). Answers are decoded a token at a time by
:class:`TokenDecoder`, which decodes the last few tokens again for context, never the whole answer.
So the work per generated token grows neither with the answer's length nor with the number or
length of the stop strings; a stop string split across tokens is still found, and never shown.
"""
from __future__ import annotations

import collections
import functools
import threading
import time
from typing import Callable, Iterable

import torch
from transformers import LogitsProcessorList, StoppingCriteria

from sftkit.generation.config import GenerateConfig
from sftkit.models import resolve_base_model
from sftkit.prompt_format import read_prompt_format
from sftkit.prompts import stop_strings


def answer_stop_strings(config: GenerateConfig, tokenizer) -> list[str]:
    """The prompt type's stop strings (``<human>:`` and ``<bot>:`` for human_bot), ``--stop``, and those
    an exported model recorded in its ``sftkit_prompt.json`` (the ones it learned to end answers with)."""
    recorded = read_prompt_format(resolve_base_model(config.base_model)) or {}
    stops = [*stop_strings(config.prompt_type, tokenizer), *config.stop, *recorded.get("stop", [])]
    return list(dict.fromkeys(s for s in stops if s))


# ---------------------------------------------------------------- finding stop strings

class StopMatcher:
    """Aho–Corasick over a set of stop strings: a trie of them whose failure links say, after each
    character, the longest suffix of the text read that begins some stop string.

    States are ints; :meth:`scan` moves a state over new text in time linear in that text. Built in
    time linear in the stop strings' total length.
    """

    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(dict.fromkeys(s for s in stops if s))
        self.children: list[dict[str, int]] = [{}]
        self.depth = [0]  # length of the stop-string prefix each state stands for
        self.longest = [0]  # length of the longest stop string ending at this state (0: none)
        for stop in self.stops:
            state = 0
            for char in stop:
                child = self.children[state].get(char)
                if child is None:
                    child = len(self.children)
                    self.children[state][char] = child
                    self.children.append({})
                    self.depth.append(self.depth[state] + 1)
                    self.longest.append(0)
                state = child
            self.longest[state] = len(stop)
        self.fail = [0] * len(self.children)
        queue = collections.deque(self.children[0].values())
        while queue:  # breadth first: a state's failure link is shallower, so already complete
            state = queue.popleft()
            self.longest[state] = max(self.longest[state], self.longest[self.fail[state]])
            for char, child in self.children[state].items():
                self.fail[child] = self._step(self.fail[state], char) if state else 0
                queue.append(child)

    def _step(self, state: int, char: str) -> int:
        while state and char not in self.children[state]:
            state = self.fail[state]
        return self.children[state].get(char, 0)

    def scan(self, state: int, text: str) -> tuple[int, int | None]:
        """The state after ``text``, and where in ``text`` the earliest-starting stop string found in it
        begins (negative: it began in earlier text), or None."""
        first = None
        for index, char in enumerate(text):
            state = self._step(state, char)
            if self.longest[state]:
                start = index + 1 - self.longest[state]
                first = start if first is None else min(first, start)
        return state, first


@functools.lru_cache(maxsize=64)
def _matcher(stops: tuple[str, ...]) -> StopMatcher:
    return StopMatcher(stops)


def stop_matcher(stops: Iterable[str]) -> StopMatcher:
    """The matcher of ``stops`` (built once per set of stop strings)."""
    return _matcher(tuple(s for s in stops if s))


def cut_at_stop(text: str, stops: Iterable[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    _, start = stop_matcher(stops).scan(0, text)
    return (text, False) if start is None else (text[:start], True)


class StopTextFilter:
    """Turns streamed text pieces into what may be shown: never a stop string, nor any part of one.

    Text that could be the start of a stop string is held back until the next piece tells whether it
    is one, so a stop string split across tokens ("<hu" + "man>:") never flashes on screen.
    Whitespace around the answer is dropped (answers follow ``<bot>:`` and a space), so the text
    shown adds up to exactly the final answer.
    """

    def __init__(self, stops: Iterable[str]):
        self.matcher = stop_matcher(stops)
        self.state = 0
        self.buffer = ""  # decoded, not shown yet
        self.parts: list[str] = []
        self.stopped = False

    @property
    def shown(self) -> str:
        return "".join(self.parts)

    def feed(self, piece: str) -> str:
        """Add a piece; return the newly showable text ("" when held back or after a stop)."""
        if self.stopped or not piece:
            return ""
        self.state, start = self.matcher.scan(self.state, piece)
        self.buffer += piece
        if not self.parts:
            self.buffer = self.buffer.lstrip()
        if start is not None:
            self.stopped = True
            return self._show(self.buffer[:max(len(self.buffer) - len(piece) + start, 0)].rstrip())
        hold = min(self.matcher.depth[self.state], len(self.buffer))
        # Trailing whitespace waits too: it is shown only if more answer follows it.
        return self._show(self.buffer[:len(self.buffer) - hold].rstrip())

    def flush(self) -> str:
        """At the end of generation: whatever was held back, as it cannot start a stop string any more."""
        return "" if self.stopped else self._show(self.buffer.rstrip())

    def _show(self, text: str) -> str:
        if text:
            self.buffer = self.buffer[len(text):]
            self.parts.append(text)
        return text


class TokenDecoder:
    """One answer's text, a token at a time: the tokens of the last piece are decoded again with the new
    ones (a leading space, a character split across tokens depend on them), never the whole answer."""

    UNFINISHED = 6  # tokens a character may span before its bytes are let through as "\ufffd"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.window: list[int] = []
        self.read = 0  # tokens of the window already turned into text

    def add(self, token: int) -> str:
        """The text ``token`` adds ("" while it ends in an unfinished character)."""
        self.window.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)

    def copy(self) -> "TokenDecoder":
        twin = TokenDecoder(self.tokenizer)
        twin.window, twin.read = list(self.window), self.read
        return twin

    def _advance(self, final: bool) -> str:
        if self.read == len(self.window):
            return ""
        before = self.tokenizer.decode(self.window[:self.read], skip_special_tokens=True) if self.read else ""
        text = self.tokenizer.decode(self.window, skip_special_tokens=True)
        if text.endswith("\ufffd") and not final and len(self.window) - self.read < self.UNFINISHED:
            return ""
        self.window = self.window[self.read:]
        self.read = len(self.window)
        return text[len(before):]


# ---------------------------------------------------------------- following rows as they are generated

class AnswerFollower(StoppingCriteria):
    """Follows each row of one ``generate`` call, token by token, in the generating thread.

    A row ends at its first stop string, its own token limit, or its cancel event; every row once a
    batch-wide event is set (the Stop button, Ctrl-C, a server shutting down). With ``on_text`` each
    row's text is decoded as it grows and handed over as it becomes showable (streaming); without it
    text is decoded only when there are stop strings to look for. With beam search the criteria see
    candidate beams, each the continuation of one candidate of the step before: each carries on
    from that one's decoder and matcher state.
    """

    def __init__(self, tokenizer, stops: list[list[str]], prompt_length: int, limits: list[int],
                 eos_ids: Iterable[int], row_cancel: list[threading.Event | None],
                 cancel: list[threading.Event | None], beams: bool = False,
                 on_text: Callable[[int, str], None] | None = None):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.limits = limits
        self.eos_ids = set(eos_ids)
        self.row_cancel = row_cancel
        self.cancel = [event for event in cancel if event is not None]
        self.beams = beams
        self.on_text = on_text
        self.decode = on_text is not None or any(stops)
        self.filters = [StopTextFilter(row) for row in stops]
        self.decoders = [TokenDecoder(tokenizer) for _ in stops]
        self.finished = [False] * len(stops)
        self.stopped_at: dict[int, int] = {}  # row -> tokens when a stop string completed
        self.cut_at: dict[int, int] = {}  # row -> tokens when its limit or a cancel ended it
        self.first_text: dict[int, float] = {}  # row -> when its first text was shown
        self.started = time.perf_counter()
        self.candidates: dict[tuple[int, ...], tuple[TokenDecoder, int]] = {}

    def __call__(self, input_ids, scores, **kwargs):
        rows = input_ids.shape[0]
        if any(event.is_set() for event in self.cancel):
            for row in range(len(self.finished)):
                self._finish(row, self.cut_at, input_ids.shape[1] - self.prompt_length)
            return torch.ones(rows, dtype=torch.bool, device=input_ids.device)
        if self.beams:
            return self._candidates(input_ids)
        done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        length = input_ids.shape[1] - self.prompt_length
        last = input_ids[:, -1].tolist()
        for row in range(rows):
            if self.finished[row]:
                done[row] = True
                continue
            if last[row] in self.eos_ids:  # generate ends the row itself
                self._finish(row, None, length)
                continue
            if self.decode:
                self._show(row, self.filters[row].feed(self.decoders[row].add(last[row])))
                if self.filters[row].stopped:
                    self._finish(row, self.stopped_at, length)
            event = self.row_cancel[row]
            if length >= self.limits[row] or (event is not None and event.is_set()):
                self._finish(row, self.cut_at, length)
            done[row] = self.finished[row]
        return done

    def finish(self) -> None:
        """After generation: show what each row still held back."""
        for row in range(len(self.finished)):
            self._finish(row, None, None)

    def _finish(self, row: int, where: dict | None, length: int | None) -> None:
        if self.finished[row]:
            return
        self.finished[row] = True
        if where is not None:
            where.setdefault(row, length)
        if self.on_text is not None and not self.filters[row].stopped:
            self._show(row, self.filters[row].feed(self.decoders[row].flush()) + self.filters[row].flush())

    def _show(self, row: int, text: str) -> None:
        if text and self.on_text is not None:
            self.first_text.setdefault(row, time.perf_counter() - self.started)
            self.on_text(row, text)

    def _candidates(self, input_ids):
        """Beam candidates: stopped when their text holds a stop string (the batch row's own)."""
        rows = input_ids.shape[0]
        done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        if not self.decode:
            return done
        new = input_ids[:, self.prompt_length:].tolist()
        following = {}
        for candidate, ids in enumerate(new):
            matcher = self.filters[candidate * len(self.filters) // rows].matcher
            key = tuple(ids)
            decoder, state = self.candidates.get(key[:-1], (None, 0))
            if decoder is None:  # the first step: decode from the start
                decoder, state, fed = TokenDecoder(self.tokenizer), 0, ids
            else:
                decoder, fed = decoder.copy(), ids[-1:]
            text = "".join(decoder.add(token) for token in fed if token not in self.eos_ids)
            state, start = matcher.scan(state, text)
            following[key] = (decoder, state)
            done[candidate] = start is not None
        self.candidates = following
        return done


# ---------------------------------------------------------------- repetition penalty and generate's arguments

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


def end_of_sequence_ids(model, tokenizer) -> list[int]:
    """Every token that ends an answer by itself: the model's EOS tokens and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    return sorted(eos_ids)


def generation_kwargs(config: GenerateConfig, model, tokenizer, stops: list[list[str]] | None = None,
                      attention_mask=None) -> dict:
    """Keyword arguments for ``model.generate`` from the settings (sampling knobs only when sampling);
    the settings were checked when the config was made.

    The repetition penalty is :class:`SparingRepetitionPenalty`, sparing each row's ``stops`` (by
    default the prompt type's and ``--stop``, the same for every row); ``attention_mask`` tells it the
    rows' left padding.
    """
    eos_ids = end_of_sequence_ids(model, tokenizer)
    kwargs = dict(max_new_tokens=config.max_new_tokens, num_beams=config.num_beams,
                  repetition_penalty=1.0, do_sample=config.do_sample,
                  eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)
    if config.repetition_penalty != 1.0:
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
        kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    else:
        # Greedy: override sampling defaults a model's generation_config may carry.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def reseed(config: GenerateConfig) -> None:
    """Seed torch before an answer when a seed is set (0 included), so sampling repeats."""
    if config.seed is not None:
        torch.manual_seed(config.seed)
