"""Preference pairs for reward-model and DPO training: reading them.

Rows are read by :mod:`sftkit.rows` (see its ``pair`` shape): ``prompt`` + ``chosen`` +
``rejected`` with the prompt as text or messages and each answer as text, as ``[assistant
message]`` or as the whole conversation repeating the prompt (TRL / alignment-handbook;
``create_data.py``'s ``oasst_pairs.json``); hh-rlhf's ``chosen``/``rejected`` whole conversations
(``\\n\\nHuman: … \\n\\nAssistant: …`` or ``<human>:``/``<bot>:`` text, or messages);
LLaMA-Factory's ranking rows (``conversations`` + ``chosen``/``rejected`` as ``{from, value}``
messages); alpaca-style ``instruction`` (+ ``input``) + ``chosen`` + ``rejected``; and an
OpenAssistant export's ranked answers directly. A pair is two conversations sharing all but their
last answer; :func:`sftkit.train.tokenize.tokenize_pairs` renders them exactly like SFT rows and
learns only that last answer (DPO sums its log-probabilities).
"""
from __future__ import annotations

from typing import Iterator

from sftkit.rows import Pair
from sftkit.train.data import ReadStats, check_usable, read_units


def iter_pairs(path: str, stats: ReadStats, col_dict: dict | None = None) -> Iterator[Pair]:
    """The pairs at ``path`` one by one, in file order; unusable rows are counted in ``stats`` by reason."""
    for unit in read_units(path, col_dict, mode="pairs"):
        stats.rows += 1
        if unit.reason and not unit.pairs:
            stats.skip(unit.reason, unit.where)
        yield from unit.pairs


def load_pairs(path: str, col_dict: dict | None = None) -> tuple[list[Pair], ReadStats]:
    """Read ``path`` into pairs; unusable rows are counted by reason. No usable row is a DataError."""
    stats = ReadStats()
    pairs = list(iter_pairs(path, stats, col_dict))
    check_usable(path, stats, len(pairs), "usable preference pairs")
    return pairs, stats
