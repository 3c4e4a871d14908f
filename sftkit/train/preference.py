"""Preference pairs for reward-model and DPO training: reading rows, rendering and tokenizing them.

Accepted rows (after ``data_col_dict`` renames), each giving a prompt and two answers to it:

* ``prompt`` + ``chosen`` + ``rejected``: the prompt as text (plain, or ``<human>:``/``Human:``
  marked turns) or as a messages list; each answer as text, as a messages list ending with the
  assistant's answer, or as the whole conversation repeating the prompt (TRL / alignment-handbook
  convention; ``create_data.py``'s ``oasst_pairs.json`` rows are of this kind);
* ``chosen`` + ``rejected`` only (Anthropic hh-rlhf style): two whole conversations, as
  ``<human>: … <bot>: …`` or ``Human: … Assistant: …`` text or messages lists, that share every
  turn but the last answer.

Pairs are rendered with :mod:`sftkit.prompts`, exactly like SFT rows; only the final answer's
tokens are labelled (DPO sums their log-probabilities).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from tqdm import tqdm

from sftkit.errors import DataError, PromptError
from sftkit.prompts import Turn, get_prompt_type, render_conversation, split_turns
from sftkit.train.data import ReadStats, read_rows, usable_rows
from sftkit.train.tokenize import IGNORE, Example, TokenizeStats

_ROLE_NAMES = {"system": "system", "user": "human", "human": "human", "prompter": "human",
               "assistant": "bot", "bot": "bot", "gpt": "bot", "model": "bot"}
_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")


@dataclass
class Pair:
    """A prompt (turns ending with a human turn) and a better and a worse answer to it."""

    prompt: list[Turn]
    chosen: str
    rejected: str
    source: str = ""


@dataclass
class PairExample:
    """A tokenized pair. ``ref_*`` are the reference model's answer log-probs (DPO fills them in)."""

    chosen: Example
    rejected: Example
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0

    @property
    def input_ids(self) -> list[int]:
        """Both rows' ids: what group_by_length sorts by and tokens/s counts."""
        return self.chosen.input_ids + self.rejected.input_ids


# ---------------------------------------------------------------- rows to pairs
def _messages_to_turns(messages) -> list[Turn]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"expected a non-empty list of messages, got {type(messages).__name__}")
    turns = []
    for m in messages:
        if not isinstance(m, dict):
            raise DataError("each message must be an object with 'role' and 'content'")
        role, content = m.get("role", m.get("from")), m.get("content", m.get("value", m.get("text")))
        if role not in _ROLE_NAMES or not isinstance(content, str):
            raise DataError(f"message with role {role!r}: expected role in {sorted(_ROLE_NAMES)} and text content")
        turns.append((_ROLE_NAMES[role], content.strip()))
    return turns


def text_to_turns(text: str) -> list[Turn]:
    """``<human>:/<bot>:`` or hh-rlhf ``Human:/Assistant:`` text as turns; unmarked text is one human turn."""
    if "<human>:" in text or "<bot>:" in text:
        return split_turns(text)
    parts = _HH_MARKER.split("\n\n" + text.strip())
    if len(parts) > 1:
        return [("human" if who == "Human" else "bot", body.strip()) for who, body in zip(parts[1::2], parts[2::2])]
    return [("human", text.strip())]


def _turns(value) -> list[Turn]:
    if isinstance(value, str):
        return text_to_turns(value)
    return _messages_to_turns(value)


def _answer(value, prompt: list[Turn], name: str) -> str:
    """The answer in a ``chosen``/``rejected`` value: plain text, [assistant message], or the whole conversation."""
    if isinstance(value, str) and not ("<bot>:" in value or "\n\nAssistant:" in "\n\n" + value):
        return value.strip()
    turns = _turns(value)
    if not turns or turns[-1][0] != "bot":
        raise DataError(f"'{name}' does not end with an assistant answer")
    if len(turns) > 1 and turns[:-1] != prompt:
        raise DataError(f"'{name}' is a conversation whose turns before the answer differ from 'prompt'")
    return turns[-1][1]


def row_to_pair(row: dict, source: str = "") -> Pair:
    """The preference pair in a row (see the module docstring), or DataError/PromptError saying why not."""
    if row.get("chosen") is None or row.get("rejected") is None:
        raise DataError(f"no 'chosen' and 'rejected' columns (found {sorted(row)[:8]}); map yours with "
                        f"--data_col_dict")
    if row.get("prompt") is not None:
        prompt = _turns(row["prompt"])
        chosen, rejected = _answer(row["chosen"], prompt, "chosen"), _answer(row["rejected"], prompt, "rejected")
    else:
        chosen_turns, rejected_turns = _turns(row["chosen"]), _turns(row["rejected"])
        for name, turns in (("chosen", chosen_turns), ("rejected", rejected_turns)):
            if len(turns) < 2 or turns[-1][0] != "bot":
                raise DataError(f"'{name}' must be a conversation ending with an assistant answer")
        if chosen_turns[:-1] != rejected_turns[:-1]:
            raise DataError("'chosen' and 'rejected' differ before their last answer")
        prompt, chosen, rejected = chosen_turns[:-1], chosen_turns[-1][1], rejected_turns[-1][1]
    if not prompt or prompt[-1][0] != "human":
        raise DataError("the prompt must end with a human turn")
    if not chosen or not rejected:
        raise DataError("an answer is empty")
    if chosen == rejected:
        raise DataError("'chosen' and 'rejected' are the same answer")
    for role, _ in prompt:
        if role not in ("system", "human", "bot"):
            raise PromptError(f"unknown role {role!r}")
    return Pair(prompt, chosen, rejected, source)


def load_pairs(path: str, col_dict: dict | None = None) -> tuple[list[Pair], ReadStats]:
    """Read ``path`` into pairs; unusable rows are counted by reason. No usable row is a DataError."""
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: the dataset is empty")
    stats = ReadStats(rows=len(rows))
    pairs = [pair for _, pair in usable_rows(rows, col_dict, stats, row_to_pair)]
    if not pairs:
        raise DataError(f"{path}: no usable preference pairs out of {len(rows)}; first problem: "
                        f"{stats.first_problem}")
    return pairs, stats


# ---------------------------------------------------------------- tokenizing
def tokenize_answer(prompt: list[Turn], answer: str, tokenizer, prompt_type: str, *,
                    add_eos_token: bool) -> Example:
    """Ids of the rendered prompt + answer; labels only on the answer (and the EOS after it)."""
    text, spans = render_conversation(prompt + [("bot", answer)], prompt_type, tokenizer)
    start, end = spans[-1]
    add_special = get_prompt_type(prompt_type).name != "chat"
    encoded = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [t if (b > a and a < end and b > start) else IGNORE for t, (a, b) in zip(ids, encoded["offset_mapping"])]
    eos = tokenizer.eos_token_id
    if add_eos_token and eos is not None and ids and ids[-1] != eos:
        ids.append(eos)
        labels.append(eos)
    if labels:
        labels[0] = IGNORE
    return Example(ids, labels, prompt=text[:start], reference=answer)


@dataclass
class TokenizedPairs:
    examples: list[PairExample] = field(default_factory=list)
    stats: TokenizeStats = field(default_factory=TokenizeStats)


def tokenize_pairs(pairs: list[Pair], tokenizer, prompt_type: str, cutoff_len: int, *, add_eos_token: bool,
                   drop_truncations: bool = False, desc: str = "tokenize pairs",
                   progress: bool = True) -> TokenizedPairs:
    """Tokenize both answers of every pair, cutting rows at ``cutoff_len`` (or dropping the pair)."""
    out = TokenizedPairs()
    out.stats.rows = len(pairs)
    for pair in tqdm(pairs, desc=desc, disable=not progress, mininterval=2):
        try:
            rows = [tokenize_answer(pair.prompt, answer, tokenizer, prompt_type, add_eos_token=add_eos_token)
                    for answer in (pair.chosen, pair.rejected)]
        except (ValueError, PromptError):
            out.stats.skipped_render += 1
            continue
        if any(len(r.input_ids) > cutoff_len for r in rows):
            if drop_truncations:
                out.stats.dropped_truncations += 1
                continue
            out.stats.truncated += 1
            for r in rows:
                r.input_ids, r.labels = r.input_ids[:cutoff_len], r.labels[:cutoff_len]
        if any(all(label == IGNORE for label in r.labels) for r in rows):
            out.stats.skipped_no_answer_in_cutoff += 1
            continue
        out.examples.append(PairExample(*rows))
        out.stats.kept += 1
        out.stats.tokens += sum(len(r.input_ids) for r in rows)
    return out
