"""Conversations to token ids and labels: loss masking and truncation at cutoff_len.

Masking follows the character spans :func:`sftkit.prompts.render_conversation` gives for bot
answers, so every prompt type (and the tokenizer's chat template) masks the same way: a token
is learned only if it overlaps a bot answer, unless ``train_on_inputs``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tqdm import tqdm

from sftkit.prompts import get_prompt_type, render_conversation
from sftkit.train.data import Conversation

IGNORE = -100


@dataclass
class Example:
    """One training row. ``labels[0]`` is always IGNORE: no token predicts it, packed or not."""

    input_ids: list[int]
    labels: list[int]
    prompt: str  # the text up to the last bot answer, for generation-based validation
    reference: str  # the last bot answer


@dataclass
class TokenizeStats:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_truncations: int = 0
    skipped_no_answer_in_cutoff: int = 0
    skipped_render: int = 0
    tokens: int = 0
    learned_tokens: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Tokenized:
    examples: list[Example] = field(default_factory=list)
    stats: TokenizeStats = field(default_factory=TokenizeStats)


def tokenize_conversation(turns, tokenizer, prompt_type: str, *, train_on_inputs: bool = False,
                          add_eos_token: bool = True) -> Example:
    """Token ids and labels of a whole conversation, before truncation."""
    text, spans = render_conversation(turns, prompt_type, tokenizer)
    # A chat template writes its own special tokens; the other prompt types get the tokenizer's (e.g. BOS).
    add_special = get_prompt_type(prompt_type).name != "chat"
    encoded = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = []
    for token_id, (start, end) in zip(ids, encoded["offset_mapping"]):
        learned = train_on_inputs or (end > start and any(start < b and end > a for a, b in spans))
        labels.append(token_id if learned else IGNORE)
    eos = tokenizer.eos_token_id
    if add_eos_token and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        labels.append(eos if (train_on_inputs or turns[-1][0] == "bot") else IGNORE)
    elif ids and ids[-1] == eos and turns[-1][0] == "bot":
        labels[-1] = eos  # a template's own EOS after the last answer is part of answering
    if labels:
        labels[0] = IGNORE
    last_answer = next(body for role, body in reversed(turns) if role == "bot")
    return Example(ids, labels, prompt=text[:spans[-1][0]], reference=last_answer)


def tokenize_all(conversations: list[Conversation], tokenizer, prompt_type: str, cutoff_len: int, *,
                 train_on_inputs: bool = False, add_eos_token: bool = True, drop_truncations: bool = False,
                 desc: str = "tokenize", progress: bool = True) -> Tokenized:
    """Tokenize, mask and truncate every conversation, counting what was truncated, dropped or skipped.

    A row that still has no learned token after truncation (its prompt fills cutoff_len) is skipped.
    """
    out = Tokenized()
    out.stats.rows = len(conversations)
    for conv in tqdm(conversations, desc=desc, disable=not progress, mininterval=2):
        try:
            example = tokenize_conversation(conv.turns, tokenizer, prompt_type, train_on_inputs=train_on_inputs,
                                            add_eos_token=add_eos_token)
        except ValueError:
            out.stats.skipped_render += 1
            continue
        if len(example.input_ids) > cutoff_len:
            if drop_truncations:
                out.stats.dropped_truncations += 1
                continue
            out.stats.truncated += 1
            example.input_ids = example.input_ids[:cutoff_len]
            example.labels = example.labels[:cutoff_len]
        learned = sum(label != IGNORE for label in example.labels)
        if learned == 0:
            out.stats.skipped_no_answer_in_cutoff += 1
            continue
        out.examples.append(example)
        out.stats.kept += 1
        out.stats.tokens += len(example.input_ids)
        out.stats.learned_tokens += learned
    return out
