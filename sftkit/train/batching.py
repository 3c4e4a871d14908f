"""Examples to micro-batches: padding, group_by_length, packing, and the packed attention mask.

The plan of an epoch is a pure function of (examples, seed, epoch), so a resumed run rebuilds
exactly the batches it would have seen and skips the ones already trained on.
"""
from __future__ import annotations

import random

import torch

from sftkit.train.tokenize import IGNORE, Example

MEGABATCH_FACTOR = 50  # group_by_length sorts within random windows of this many micro-batches, like HF's sampler


def pack_examples(examples: list[Example], cutoff_len: int) -> list[list[Example]]:
    """Greedily fill sequences of at most ``cutoff_len`` tokens with whole examples, in order."""
    bins: list[list[Example]] = []
    used = cutoff_len
    for ex in examples:
        if used + len(ex.input_ids) > cutoff_len:
            bins.append([])
            used = 0
        bins[-1].append(ex)
        used += len(ex.input_ids)
    return bins


def epoch_plan(examples: list[Example], micro_batch_size: int, *, seed: int, epoch: int, pack: bool = False,
               group_by_length: bool = False, cutoff_len: int = 0, world_size: int = 1) -> list[list[list[Example]]]:
    """The micro-batches of one epoch, in order; each is a list of rows, each row a list of examples
    (one example per row unless packing)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(examples)
    rng.shuffle(order)
    if pack:
        rows = pack_examples(order, cutoff_len)
    elif group_by_length:
        window = micro_batch_size * world_size * MEGABATCH_FACTOR
        rows = []
        for i in range(0, len(order), window):
            rows.extend(sorted(order[i:i + window], key=lambda e: len(e.input_ids), reverse=True))
        rows = [[e] for e in rows]
    else:
        rows = [[e] for e in order]
    batches = [rows[i:i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def collate(batch: list[list[Example]], pad_token_id: int, *, pad_to: int | None = None,
            block_mask: bool = False, mask_dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Right-padded tensors for one micro-batch.

    Rows holding one example get a 2D ``attention_mask``. Packed rows (several examples) get
    ``position_ids`` restarting at 0 for every example and no 2D mask, which transformers'
    padding-free path turns into per-example attention; with ``block_mask`` they get an explicit
    4D block-diagonal additive mask instead, for models whose attention ignores that signal.
    """
    packed = any(len(row) > 1 for row in batch)
    lengths = [sum(len(e.input_ids) for e in row) for row in batch]
    width = max(max(lengths), pad_to or 0)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(batch), width), dtype=torch.long)
    segment = torch.full((len(batch), width), -1, dtype=torch.long)
    for r, row in enumerate(batch):
        at = 0
        for s, ex in enumerate(row):
            n = len(ex.input_ids)
            input_ids[r, at:at + n] = torch.tensor(ex.input_ids)
            labels[r, at:at + n] = torch.tensor(ex.labels)
            position_ids[r, at:at + n] = torch.arange(n)
            segment[r, at:at + n] = s
            at += n
        position_ids[r, at:] = torch.arange(width - at)  # padding: its own segment, never learned
    real = segment >= 0
    out = {"input_ids": input_ids, "labels": labels, "num_tokens": int(real.sum())}
    if not packed:
        out["attention_mask"] = real.long()
        return out
    out["position_ids"] = position_ids
    if block_mask:
        same = segment[:, :, None] == segment[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = same & causal & real[:, :, None] | torch.eye(width, dtype=torch.bool)
        mask = torch.zeros(allowed.shape, dtype=mask_dtype)
        mask.masked_fill_(~allowed, torch.finfo(mask_dtype).min)
        out["attention_mask"] = mask[:, None]
    return out


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position next-token cross entropy (0 where the label is ignored), shape (batch, seq-1)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                             shift_labels.reshape(-1), ignore_index=IGNORE, reduction="none")
    return loss.view(shift_labels.shape)


def collate_pairs(batch: list[list], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One micro-batch of preference pairs as a single forward's rows: every chosen answer, then every
    rejected one (rows ``i`` and ``i + n`` are a pair), with the pairs' reference log-probs."""
    pairs = [p for row in batch for p in row]
    out = collate([[p.chosen] for p in pairs] + [[p.rejected] for p in pairs], pad_token_id)
    out["num_pairs"] = len(pairs)
    out["ref_chosen"] = torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32)
    out["ref_rejected"] = torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32)
    return out


def answer_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probabilities of each row's labelled tokens, shape (batch,)."""
    return -token_losses(logits, labels).sum(-1)
