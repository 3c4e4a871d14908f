"""Reading training data: every row a conversation with the prompt type it is trained in.

Files (json, jsonl, parquet, gzipped or not, or a directory of them) are read by :mod:`sftkit.rows`,
the reader every wing shares, so training takes every format the data stages take (ShareGPT,
OpenAssistant trees and message tables, alpaca, messages with tool calls, h2oGPT/OIG
``<human>:``/``<bot>:`` text, ``create_data.py finalize`` output) and the preference shapes (their
prompt and chosen answer); a name that is neither is loaded as a hub dataset. ``data_col_dict``
renames columns first. Under ``plain`` a text without markers is learned whole.

An optional ``prompt_type`` column names each row's format (an h2oGPT name or code, or ``chat``):
it is honoured unless ``--prompt_type`` is given, and :class:`ReadStats` records which won. An
h2oGPT ``context`` column is raw text put before the prompt.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

from sftkit import rows
from sftkit.errors import DataError
from sftkit.prompts import DEFAULT_PROMPT_TYPE, PromptError, get_prompt_type, has_markers
from sftkit.rows import Conversation


@dataclass
class ReadStats(rows.Skipped):
    """Rows read, rows skipped by reason (see :data:`sftkit.rows.REASONS`), and the prompt types chosen."""

    rows: int = 0
    prompt_types: dict[str, int] = field(default_factory=dict)  # usable rows per prompt type
    prompt_type_from: dict[str, int] = field(default_factory=dict)  # usable rows per deciding source
    overridden: dict[str, int] = field(default_factory=dict)  # row columns the flag overrode, by value

    def prompt_type_summary(self) -> str:
        """One line saying which prompt type each row got and what decided it."""
        types = ", ".join(f"{name} x{n}" for name, n in sorted(self.prompt_types.items()))
        sources = ", ".join(f"{n} by {source}" for source, n in sorted(self.prompt_type_from.items()))
        line = f"prompt_type: {types} ({sources})"
        if self.overridden:
            line += ("; --prompt_type overrode the rows' own prompt_type column ("
                     + ", ".join(f"{value} x{n}" for value, n in sorted(self.overridden.items())) + ")")
        return line


def _hub_records(name: str) -> Iterator[rows.Record]:
    for number, record in enumerate(rows.hub_dataset(name), 1):
        yield number, dict(record), None, ""


def read_units(path: str, col_dict: dict | None = None, mode: str = "train") -> Iterator[rows.Unit]:
    """Every record at ``path`` (files, or a hub dataset) as a :class:`sftkit.rows.Unit`."""
    options = rows.ReadOptions(mode=mode, renames=tuple((col_dict or {}).items()), oasst_langs=None)
    files = rows.data_files(path)
    if not files:
        yield from rows.read_records(_hub_records(path), path, options=options)
    for f in files:
        yield from rows.read(f, options=options)


def choose_prompt_type(own: str | None, prompt_type: str, fallback: str = DEFAULT_PROMPT_TYPE) -> tuple[str, str]:
    """(the row's prompt type, what decided it): ``--prompt_type`` when given, else the row's own
    ``prompt_type`` column ``own``, else ``fallback``. Names and codes come back as canonical names;
    an unknown column value is the reason ``unknown_prompt_type``."""
    if prompt_type:
        return get_prompt_type(prompt_type).name, "--prompt_type"
    if own:
        try:
            return get_prompt_type(own).name, "the rows' prompt_type column"
        except PromptError:
            return "unknown_prompt_type", ""
    return get_prompt_type(fallback).name, f"default ({fallback}; no prompt_type column)"


def trainable(conversation: Conversation, prompt_type: str = "",
              fallback: str = DEFAULT_PROMPT_TYPE) -> tuple[Conversation, str] | str:
    """The conversation with the prompt type it trains in and what decided it, or the reason it cannot train.

    A markup row keeps its text (with its ``context`` before it) for the types that train it as
    written; it needs a non-empty bot answer, unless ``plain`` learns an unmarked text whole.
    """
    chosen, decided_by = choose_prompt_type(conversation.prompt_type, prompt_type, fallback)
    if not decided_by:
        return chosen
    text, turns = conversation.text, conversation.turns
    if text is not None:
        context = turns[0][1] if turns and turns[0][0] == "context" else ""
        text = context + text
        if chosen == "plain" and not has_markers(text):
            return replace(conversation, turns=[], text=text, prompt_type=chosen), decided_by
        answers = [body for role, body in turns if role == "bot"]
        if not answers:
            return "no_bot_turn"
        if not all(answers):
            return "empty_turn"
    return replace(conversation, text=text, prompt_type=chosen), decided_by


def _canonical(own: str | None) -> str:
    """A row's prompt_type column as a canonical name ('' when absent; unknown values as written)."""
    try:
        return get_prompt_type(own).name if own else ""
    except PromptError:
        return own


def iter_conversations(path: str, stats: ReadStats, col_dict: dict | None = None, prompt_type: str = "",
                       fallback: str = DEFAULT_PROMPT_TYPE) -> Iterator[Conversation]:
    """The usable conversations at ``path`` one by one, in file order, each in the prompt type it
    trains in; unusable rows are counted in ``stats`` by reason, never silently lost.

    ``prompt_type`` (the flag) given: every row uses it. Empty: each row's ``prompt_type`` column,
    else ``fallback``.
    """
    for name in (prompt_type, fallback):
        if name:
            get_prompt_type(name)  # a typo in the flag fails here, not as one skip per row
    for unit in read_units(path, col_dict):
        stats.rows += 1
        if unit.reason:
            stats.skip(unit.reason, unit.where)
        for found in unit.conversations:
            result = trainable(found, prompt_type, fallback)
            if isinstance(result, str):
                stats.skip(result, found.where)
                continue
            conversation, decided_by = result
            chosen = conversation.prompt_type
            stats.prompt_types[chosen] = stats.prompt_types.get(chosen, 0) + 1
            stats.prompt_type_from[decided_by] = stats.prompt_type_from.get(decided_by, 0) + 1
            own = _canonical(found.prompt_type)
            if prompt_type and own and own != chosen:
                stats.overridden[own] = stats.overridden.get(own, 0) + 1
            yield conversation


def check_usable(path: str, stats: ReadStats, usable: int, what: str = "usable rows") -> None:
    """A dataset that is empty, or where no row is usable, is a DataError naming the first problem."""
    if not stats.rows:
        raise DataError(f"{path}: the dataset is empty")
    if not usable:
        raise DataError(f"{path}: no {what} out of {stats.rows}; first problem: {stats.first_problem}")


def load_conversations(path: str, col_dict: dict | None = None, prompt_type: str = "",
                       fallback: str = DEFAULT_PROMPT_TYPE) -> tuple[list[Conversation], ReadStats]:
    """Every usable conversation at ``path`` in a list (see :func:`iter_conversations`)."""
    stats = ReadStats()
    conversations = list(iter_conversations(path, stats, col_dict, prompt_type, fallback))
    check_usable(path, stats, len(conversations))
    return conversations, stats


def mix_in_picks(base: int, extra: int, factor: float, seed: int) -> np.ndarray:
    """Which of ``extra`` rows are added to ``base`` rows: ``round(factor * base)`` indices, every
    extra row as often as it fits whole, the rest sampled without replacement by ``seed``."""
    want = round(factor * base)
    if want <= 0 or not extra:
        return np.zeros(0, dtype=np.int64)
    whole = want // extra
    rest = random.Random(seed).sample(range(extra), want - whole * extra)
    return np.concatenate([np.tile(np.arange(extra, dtype=np.int64), whole), np.array(rest, dtype=np.int64)])


def mix_in(base: list, extra: list, factor: float, seed: int) -> list:
    """``base`` plus ``round(factor * len(base))`` rows of ``extra`` (with replacement beyond its size)."""
    return list(base) + [extra[i] for i in mix_in_picks(len(base), len(extra), factor, seed)]


def validation_indices(count: int, val_set_size: float, seed: int) -> np.ndarray:
    """The sorted indices of the ``val_set_size`` items (a count, or a fraction when below 1) of
    ``count`` held out for validation, chosen by ``seed``."""
    held = round(val_set_size * count) if val_set_size < 1 else int(val_set_size)
    if val_set_size > 0:
        held = max(held, 1)
    if held >= count:
        raise DataError(f"--val_set_size={val_set_size} leaves no training rows out of {count}; "
                        f"lower it or give --valid_path")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return np.sort(np.array(order[:held], dtype=np.int64))


def split_validation(items: list, val_set_size: float, seed: int) -> tuple[list, list]:
    """Hold out ``val_set_size`` items (see :func:`validation_indices`)."""
    held = set(validation_indices(len(items), val_set_size, seed).tolist())
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]
