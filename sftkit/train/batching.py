"""Tokenized rows to micro-batches: the epoch's plan over a length array, best-fit packing, collation.

A tokenized set is anything with ``len(ts)``, ``ts.lengths`` (a numpy array of token counts) and
``ts[i]`` giving an item with ``input_ids`` and ``labels`` (lists or numpy arrays): a list of
examples through :class:`ExampleList`, or a memory-mapped cache. The plan of an epoch is a pure
function of (lengths, seed, epoch) held in flat index arrays, so a resumed run rebuilds exactly the
batches it would have seen, and a rank fetches only the rows of its own micro-batches.
"""
from __future__ import annotations

import array
import random
from dataclasses import dataclass

import numpy as np
import torch

from sftkit.train.tokenize import IGNORE

MEGABATCH_FACTOR = 50  # group_by_length sorts within random windows of this many micro-batches, like HF's sampler


class ExampleList:
    """A list of tokenized items (examples, or pairs of them) seen as a tokenized set."""

    def __init__(self, items: list):
        self.items = items
        self.lengths = np.fromiter((len(item.input_ids) for item in items), dtype=np.int32, count=len(items))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def as_tokenized_set(items):
    """``items`` if it already is a tokenized set (has ``lengths``), else the list wrapped as one."""
    return items if hasattr(items, "lengths") else ExampleList(items)


# ---------------------------------------------------------------- the plan of an epoch
@dataclass(frozen=True)
class EpochPlan:
    """One epoch's micro-batches as flat arrays: ``order`` lists item indices in the order they are
    trained on; a row is a run of ``order`` (``row_bounds``), a micro-batch a run of rows (``batch_bounds``)."""

    order: np.ndarray
    row_bounds: np.ndarray
    batch_bounds: np.ndarray
    tokens: int  # non-padding tokens of the epoch
    slots: int  # tokens the padded micro-batches hold: rows x their longest row, summed

    def __len__(self) -> int:
        return len(self.batch_bounds) - 1

    @property
    def efficiency(self) -> float:
        """Non-padding tokens over the slots of the padded micro-batches."""
        return self.tokens / max(self.slots, 1)

    def batch(self, index: int) -> list[np.ndarray]:
        """The rows of micro-batch ``index``, each an array of item indices."""
        first, last = self.batch_bounds[index], self.batch_bounds[index + 1]
        bounds = self.row_bounds[first:last + 1]
        return [self.order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def shuffled_range(n: int, rng: random.Random) -> np.ndarray:
    """``range(n)`` shuffled by ``rng.shuffle``: the very permutation a shuffle of any n-item list gets
    (the order of earlier releases, which shuffled the examples), in 8 bytes an item."""
    order = array.array("q", range(n))
    rng.shuffle(order)
    return np.frombuffer(order, dtype=np.int64)


def reorder_runs(values: np.ndarray, bounds: np.ndarray, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` cut into runs at ``bounds``, the runs put in the order ``perm``; (values, bounds)."""
    sizes = np.diff(bounds)[perm]
    new_bounds = np.zeros(len(perm) + 1, dtype=np.int64)
    np.cumsum(sizes, out=new_bounds[1:])
    starts = np.repeat(bounds[:-1][perm] - new_bounds[:-1], sizes)
    return values[starts + np.arange(new_bounds[-1])], new_bounds


def best_fit_decreasing(lengths: np.ndarray, order: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin packing of the items ``order`` into rows of at most ``capacity`` tokens; (items by row, row bounds).

    Longest item first (equal lengths in ``order``'s order), each into the open row it leaves with
    the least room (best fit), or a new row when none has room. Open rows are kept by free space,
    with one bit per free-space value in a Python int, so finding the best fit is a shift and a
    lowest-set-bit: O(n log n) for the sort and a few integer operations per item.
    """
    by_size = order[np.argsort(-lengths[order], kind="stable")]
    sizes, starts = np.unique(-lengths[by_size], return_index=True)
    counts = np.diff(np.append(starts, len(by_size)))
    smallest = int(-sizes[-1]) if len(sizes) else 0
    rows_by_room: dict[int, list[int]] = {}
    has_room = 0  # bit r set: some open row has exactly r tokens free
    row_of = array.array("q")
    rows = 0
    for neg_size, count in zip(sizes.tolist(), counts.tolist()):
        size = -neg_size
        for _ in range(count):
            fits = has_room >> size
            if fits:
                room = size + (fits & -fits).bit_length() - 1
                waiting = rows_by_room[room]
                row = waiting.pop()
                if not waiting:
                    has_room ^= 1 << room
            else:
                row, room = rows, capacity
                rows += 1
            row_of.append(row)
            left = room - size
            if left >= smallest:
                waiting = rows_by_room.setdefault(left, [])
                if not waiting:
                    has_room |= 1 << left
                waiting.append(row)
    row_of_item = np.frombuffer(row_of, dtype=np.int64) if len(row_of) else np.zeros(0, dtype=np.int64)
    grouped = np.argsort(row_of_item, kind="stable")  # rows in order of opening, items in order of arrival
    bounds = np.searchsorted(row_of_item[grouped], np.arange(rows + 1))
    return by_size[grouped], bounds.astype(np.int64)


def epoch_plan(lengths: np.ndarray, micro_batch_size: int, *, seed: int, epoch: int, pack: bool = False,
               group_by_length: bool = False, cutoff_len: int = 0, world_size: int = 1) -> EpochPlan:
    """The micro-batches of one epoch over items of these ``lengths``.

    Unpacked, the order is the one of earlier releases: the items shuffled by
    ``random.Random(seed * 1_000_003 + epoch)``, then with ``group_by_length`` sorted longest first
    within windows of ``MEGABATCH_FACTOR`` global batches and the micro-batches shuffled by the same
    generator. Packed, the shuffled items are packed best-fit-decreasing into rows of ``cutoff_len``
    tokens and the rows shuffled by that generator (ties between equal lengths follow the shuffle, so
    every epoch packs differently).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = random.Random(seed * 1_000_003 + epoch)
    order = shuffled_range(len(lengths), rng)
    if pack:
        order, row_bounds = best_fit_decreasing(lengths, order, cutoff_len)
        order, row_bounds = reorder_runs(order, row_bounds, shuffled_range(len(row_bounds) - 1, rng))
    else:
        if group_by_length:
            window = micro_batch_size * world_size * MEGABATCH_FACTOR
            order = order[np.lexsort((-lengths[order], np.arange(len(order)) // window))]
        row_bounds = np.arange(len(order) + 1, dtype=np.int64)
    rows = len(row_bounds) - 1
    batch_bounds = np.append(np.arange(0, rows, micro_batch_size, dtype=np.int64), rows)
    if group_by_length:
        perm = shuffled_range(len(batch_bounds) - 1, rng)
        order, _ = reorder_runs(order, row_bounds[batch_bounds], perm)
        row_sizes, batch_bounds = reorder_runs(np.diff(row_bounds), batch_bounds, perm)
        row_bounds = np.append(0, np.cumsum(row_sizes))
    return EpochPlan(order, row_bounds, batch_bounds, *_tokens_and_slots(lengths, order, row_bounds, batch_bounds))


def _tokens_and_slots(lengths, order, row_bounds, batch_bounds) -> tuple[int, int]:
    if len(order) == 0:
        return 0, 0
    row_tokens = np.add.reduceat(lengths[order], row_bounds[:-1])
    widest = np.maximum.reduceat(row_tokens, batch_bounds[:-1])
    return int(row_tokens.sum()), int((widest * np.diff(batch_bounds)).sum())


# ---------------------------------------------------------------- tensors of a micro-batch
def collate(batch: list[list], pad_token_id: int, *, pad_to: int | None = None,
            block_mask: bool = False, mask_dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Right-padded tensors for one micro-batch: rows, each a list of items (one unless packed).

    Rows holding one item get a 2D ``attention_mask``. Packed rows (several items) get
    ``position_ids`` restarting at 0 for every item and no 2D mask, which transformers'
    padding-free path turns into per-item attention; with ``block_mask`` they get an explicit
    4D block-diagonal additive mask instead, for models whose attention ignores that signal.
    """
    packed = any(len(row) > 1 for row in batch)
    lengths = [sum(len(e.input_ids) for e in row) for row in batch]
    width = max(max(lengths), pad_to or 0)
    input_ids = np.full((len(batch), width), pad_token_id, dtype=np.int64)
    labels = np.full((len(batch), width), IGNORE, dtype=np.int64)
    position_ids = np.zeros((len(batch), width), dtype=np.int64)
    segment = np.full((len(batch), width), -1, dtype=np.int64)
    for r, row in enumerate(batch):
        at = 0
        for s, ex in enumerate(row):
            n = len(ex.input_ids)
            input_ids[r, at:at + n] = ex.input_ids
            labels[r, at:at + n] = ex.labels
            position_ids[r, at:at + n] = np.arange(n)
            segment[r, at:at + n] = s
            at += n
        position_ids[r, at:] = np.arange(width - at)  # padding: its own segment, never learned
    segment = torch.from_numpy(segment)
    real = segment >= 0
    out = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels), "num_tokens": int(real.sum())}
    if not packed:
        out["attention_mask"] = real.long()
        return out
    out["position_ids"] = torch.from_numpy(position_ids)
    if block_mask:
        same = segment[:, :, None] == segment[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = same & causal & real[:, :, None] | torch.eye(width, dtype=torch.bool)
        mask = torch.zeros(allowed.shape, dtype=mask_dtype)
        mask.masked_fill_(~allowed, torch.finfo(mask_dtype).min)
        out["attention_mask"] = mask[:, None]
    return out


def collate_pairs(batch: list[list], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One micro-batch of preference pairs as a single forward's rows: every chosen answer, then every
    rejected one (rows ``i`` and ``i + n`` are a pair), with the pairs' reference log-probs."""
    pairs = [p for row in batch for p in row]
    out = collate([[p.chosen] for p in pairs] + [[p.rejected] for p in pairs], pad_token_id)
    out["num_pairs"] = len(pairs)
    out["ref_chosen"] = torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32)
    out["ref_rejected"] = torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32)
    return out
