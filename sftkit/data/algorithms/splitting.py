"""Splitting long conversations into training rows at exchange and sentence boundaries.

A row is always a valid example: it starts with a human turn and ends with a bot answer. Whole
exchanges (human turn(s) then bot turn(s)) are packed greedily into rows of about
``target_chars``; an exchange longer than ``max_chars`` has its answer cut at the last sentence
boundary that fits (a shorter but coherent answer), and is left out when even its question and
first sentence do not fit.
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache

from sftkit.prompts import Turn, join_turns, split_turns

SENTENCE_LOOKAHEAD = 2048  # characters segmented past an answer's budget when cutting it


@lru_cache(maxsize=1)
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (pysbd: rule-based, offline); joining them gives back the text."""
    return _segmenter().segment(text)


def exchanges(turns: list[Turn]) -> list[list[Turn]]:
    """Group turns into exchanges: a run of human turns followed by a run of bot turns.

    Bot turns before the first human turn and a trailing unanswered human turn are left out.
    """
    groups: list[list[Turn]] = []
    current: list[Turn] = []
    for role, text in turns:
        if role == "human" and current and current[-1][0] == "bot":
            groups.append(current)
            current = []
        if role == "bot" and not current:
            continue
        current.append((role, text))
    if current and current[-1][0] == "bot":
        groups.append(current)
    return groups


def _cut_answer(exchange: list[Turn], max_chars: int) -> list[Turn] | None:
    """The exchange with its answer cut at the last sentence boundary under ``max_chars``, or None."""
    questions = [t for t in exchange if t[0] == "human"]
    answer = " ".join(text for role, text in exchange if role == "bot")
    budget = max_chars - len(join_turns(questions + [("bot", "")]))
    kept = ""
    # Only the answer's start can be kept, so only a window a little past the budget is segmented: pysbd's
    # time grows faster than the text (a megabyte answer would stall the stage). The sentence the window's
    # end cuts ends past the budget, so it is never kept; the look-ahead lets pysbd see what follows.
    for sentence in split_sentences(answer[:max(budget, 0) + SENTENCE_LOOKAHEAD]):
        if len(kept) + len(sentence) > budget:
            break
        kept += sentence
    kept = kept.strip()
    return questions + [("bot", kept)] if kept else None


def split_conversation(text: str, target_chars: int, max_chars: int) -> tuple[list[str], Counter]:
    """Rows of at most ``max_chars`` characters, and counts of exchanges cut or left out."""
    events: Counter = Counter()
    rows: list[str] = []
    pending: list[Turn] = []
    for exchange in exchanges(split_turns(text)):
        if len(join_turns(exchange)) > max_chars:
            cut = _cut_answer(exchange, max_chars)
            if cut is None:
                events["exchange_too_long"] += 1
                continue
            events["answer_cut_at_sentence"] += 1
            exchange = cut
        if pending and len(join_turns(pending + exchange)) > target_chars:
            rows.append(join_turns(pending))
            pending = []
        pending += exchange
    if pending:
        rows.append(join_turns(pending))
    return rows, events
