"""Prompting: a conversation awaiting an answer rendered exactly as training rendered it, cut to fit.

The text comes from :func:`sftkit.prompts.render_open` and is counted with
:func:`sftkit.prompts.encode`, the one place that decides a prompt type's special tokens. When the
prompt and room for the answer exceed the context, the oldest exchanges go first, then the start
of the last turn (its end is nearest the answer).
"""
from __future__ import annotations

from dataclasses import dataclass

from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig
from sftkit.prompts import Turn, encode, render_open


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


def most_chars_per_token(tokenizer) -> int | None:
    """The most characters of text one token stands for: its longest vocabulary entry (a byte-level or
    piece vocabulary spells each entry with at least one character per character it covers). None
    when the tokenizer normalizes text first, which can shrink it: then no such bound holds."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return None
    return max(map(len, tokenizer.get_vocab()), default=None)


def count_tokens(tokenizer, text: str, prompt_type: str) -> int:
    """Tokens of a prompt as the engine will feed it."""
    return len(encode(tokenizer, text, prompt_type)["input_ids"])


def build_prompt(tokenizer, history: list[tuple[str, str]], message: str, config: GenerateConfig,
                 context: int) -> Prompt:
    """Render history + message (a list of (human, bot) exchanges, then the new message) to fit."""
    message = message.strip()
    if not message:
        raise GenerationError("empty message: type something to ask")
    turns: list[Turn] = [turn for human, bot in history for turn in (("human", human), ("bot", bot))]
    return fit_prompt(tokenizer, turns + [("human", message)], config, context)


def fit_prompt(tokenizer, turns: list[Turn], config: GenerateConfig, context: int,
               tools: list[dict] | None = None) -> Prompt:
    """Render a conversation that awaits an answer (:func:`sftkit.prompts.render_open`); drop its oldest
    exchanges, then the start of its last turn, to fit, always keeping room for ``max_new_tokens``. An
    exchange starts at a human turn after an answer or a tool result; system turns stay
    (``--system_prompt`` joins a conversation without one).
    """
    budget = context - config.max_new_tokens
    if budget < 8:
        raise GenerationError(f"--max_new_tokens={config.max_new_tokens} leaves no room for a prompt in a "
                              f"context of {context} tokens; lower it (or raise --max_context_tokens)")
    lead_end = next((i for i, (role, _) in enumerate(turns) if role not in ("system", "context")), len(turns))
    lead, body = list(turns[:lead_end]), list(turns[lead_end:])
    if config.system_prompt and not any(role == "system" for role, _ in lead):
        lead.insert(0, ("system", config.system_prompt))
    starts = [i for i, (role, _) in enumerate(body) if role == "human" and (i == 0 or body[i - 1][0] not in
                                                                            ("human", "input"))]

    def render(kept: list[Turn]) -> str:
        return render_open(lead + kept, config.prompt_type, tokenizer, tools)

    for dropped, start in enumerate(starts or [0]):
        text = render(body[start:])
        tokens = count_tokens(tokenizer, text, config.prompt_type)
        if tokens <= budget:
            return Prompt(text, tokens, dropped_turns=dropped)
    # Even alone the last exchange is too long: keep the end of its last turn, which is nearest the answer.
    final = body[starts[-1]:] if starts else body
    (role, message), before = final[-1], final[:-1]
    overhead = count_tokens(tokenizer, render(before + [(role, "")]), config.prompt_type)
    ids = tokenizer(message, add_special_tokens=False)["input_ids"]
    keep = max(budget - overhead - 2, 1)
    while keep > 0:
        text = render(before + [(role, tokenizer.decode(ids[len(ids) - keep:]).strip() or ".")])
        tokens = count_tokens(tokenizer, text, config.prompt_type)
        if tokens <= budget:
            return Prompt(text, tokens, dropped_turns=max(len(starts) - 1, 0), truncated_tokens=len(ids) - keep)
        keep -= max(tokens - budget, 1)
    raise GenerationError(f"the prompt format alone needs more than {budget} tokens; shorten --system_prompt")
