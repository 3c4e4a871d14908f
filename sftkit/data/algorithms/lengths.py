"""Per-row human and bot turn length statistics, vectorized with Arrow compute (no Python loop per row)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sftkit.prompts import BOT, HUMAN

STAT_COLUMNS = ["human_len_min", "human_len_max", "human_len_mean", "bot_len_min", "bot_len_max", "bot_len_mean"]


def _per_row(lengths: np.ndarray, parents: np.ndarray, n_rows: int) -> tuple[np.ndarray, ...]:
    """Min, max and mean of ``lengths`` grouped by their row index ``parents`` (non-decreasing); 0 if none."""
    counts = np.bincount(parents, minlength=n_rows)
    mean = np.bincount(parents, weights=lengths, minlength=n_rows) / np.maximum(counts, 1)
    low, high = np.zeros(n_rows, dtype=np.int32), np.zeros(n_rows, dtype=np.int32)
    if len(lengths):
        starts = np.flatnonzero(np.r_[True, parents[1:] != parents[:-1]])
        low[parents[starts]] = np.minimum.reduceat(lengths, starts)
        high[parents[starts]] = np.maximum.reduceat(lengths, starts)
    return low, high, mean.astype(np.float32)


def _stripped_lengths(pieces: pa.Array) -> np.ndarray:
    return pc.utf8_length(pc.utf8_trim_whitespace(pieces)).to_numpy(zero_copy_only=False).astype(np.int32)


def turn_length_stats(texts: pa.Array) -> dict[str, np.ndarray]:
    """Character lengths of each row's human and bot turns (stripped): min, max and mean per row.

    A row is split at ``<human>:`` into exchanges, each exchange at ``<bot>:`` into its question and
    answers; text before a row's first ``<human>:`` is not a turn.
    """
    n_rows = len(texts)
    segments = pc.split_pattern(texts, HUMAN)
    seg_parents = pc.list_parent_indices(segments).to_numpy()
    segments = pc.list_flatten(segments)
    is_first = np.r_[True, seg_parents[1:] != seg_parents[:-1]] if len(seg_parents) else np.zeros(0, bool)
    exchanges = segments.filter(pa.array(~is_first))
    exchange_rows = seg_parents[~is_first]

    parts = pc.split_pattern(exchanges, BOT)
    part_parents = pc.list_parent_indices(parts).to_numpy()
    parts = pc.list_flatten(parts)
    is_question = np.r_[True, part_parents[1:] != part_parents[:-1]] if len(part_parents) else np.zeros(0, bool)
    part_rows = exchange_rows[part_parents]
    lengths = _stripped_lengths(parts)

    human = _per_row(lengths[is_question], part_rows[is_question], n_rows)
    bot = _per_row(lengths[~is_question], part_rows[~is_question], n_rows)
    return dict(zip(STAT_COLUMNS, human + bot))
