"""Epoch plans at scale: time and memory of planning over a length array vs the list-based planning of
earlier releases, and packing efficiency of best-fit-decreasing vs greedy packing.

Row lengths are drawn (with replacement) from the bundled sample tokenized by the embedded tokenizer
(``--lengths=lognormal`` draws a long-tailed synthetic distribution instead), at 100k, 400k and 1M rows.
The baseline, in the same run, is the planning of earlier releases: a shuffled Python list of the
examples, sorted windows, lists of rows and batches, greedy packing in shuffled order (reimplemented
here; its items are stand-ins whose ``input_ids`` are ``range`` objects, so only the plan's own memory
is measured, not the token lists). Memory is the peak traced by ``tracemalloc`` during the call
(numpy's buffers included), beyond the input.

    .venv/bin/python bench/bench_plan.py [--rows=100000,400000,1000000] [--cutoff_len=2048] [--micro_batch_size=8]
"""
from __future__ import annotations

import random
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sftkit import flags  # noqa: E402
from sftkit.models import DEFAULT_BASE_MODEL  # noqa: E402
from sftkit.train.batching import MEGABATCH_FACTOR, epoch_plan  # noqa: E402


@dataclass
class BenchConfig:
    rows: str = flags.flag("100000,400000,1000000", "Row counts to plan, comma-separated.")
    cutoff_len: int = flags.flag(2048, "Packed row length (and the longest row).")
    micro_batch_size: int = flags.flag(8, "Rows per micro-batch.")
    lengths: str = flags.flag("sample", "sample: lengths of the bundled sample under the embedded tokenizer; "
                                        "lognormal: synthetic long-tailed lengths.")
    base_model: str = flags.flag(DEFAULT_BASE_MODEL, "Tokenizer for --lengths=sample.")


class Row:
    """A stand-in example for the baseline: only its length matters to a plan."""

    __slots__ = ("input_ids",)

    def __init__(self, length: int):
        self.input_ids = range(length)


def legacy_plan(examples: list, micro_batch_size: int, seed: int, epoch: int, *, pack: bool, group_by_length: bool,
                cutoff_len: int) -> list:
    """The list-based planning of earlier releases (the baseline)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(examples)
    rng.shuffle(order)
    if pack:
        rows, used = [], cutoff_len
        for ex in order:
            if used + len(ex.input_ids) > cutoff_len:
                rows.append([])
                used = 0
            rows[-1].append(ex)
            used += len(ex.input_ids)
    elif group_by_length:
        window = micro_batch_size * MEGABATCH_FACTOR
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


def sample_lengths(cfg: BenchConfig) -> np.ndarray:
    if cfg.lengths == "lognormal":
        return np.minimum(np.random.default_rng(0).lognormal(5.5, 1.0, 100_000).astype(np.int64) + 8, cfg.cutoff_len)
    from sftkit.models import load_tokenizer
    from sftkit.train.data import load_conversations
    from sftkit.train.tokenize import tokenize_all

    tokenizer = load_tokenizer(cfg.base_model)
    convs, _ = load_conversations(str(REPO / "data" / "sample"))
    examples = tokenize_all(convs, tokenizer, "human_bot", cfg.cutoff_len, progress=False).examples
    return np.array([len(e.input_ids) for e in examples], dtype=np.int64)


def measured(work) -> tuple[object, float, float]:
    """(result, seconds, peak MiB traced during the call): timed untraced, then traced in a second call
    (tracing slows every allocation)."""
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    del result
    tracemalloc.start()
    result = work()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def efficiency_of_rows(lengths: np.ndarray, rows: list[list[int]], cutoff_len: int) -> float:
    return float(lengths.sum()) / (cutoff_len * len(rows))


def main(cfg: BenchConfig) -> None:
    pool = sample_lengths(cfg)
    counts = [int(n) for n in cfg.rows.split(",") if n.strip()]
    print(f"bench_plan: row lengths from {cfg.lengths} ({len(pool)} distinct rows, mean {pool.mean():.0f} tokens), "
          f"cutoff_len {cfg.cutoff_len}, micro_batch_size {cfg.micro_batch_size}\n")
    print(f"{'rows':>9}  {'mode':<16}{'array s':>9}{'array MiB':>11}{'list s':>9}{'list MiB':>10}"
          f"{'time vs list':>14}{'mem vs list':>13}")
    packing = []
    for n in counts:
        lengths = pool[np.random.default_rng(n).integers(0, len(pool), n)].astype(np.int32)
        examples = [Row(int(length)) for length in lengths]
        for mode, options in (("shuffle", {}), ("group_by_length", {"group_by_length": True}),
                              ("pack", {"pack": True})):
            plan, seconds, mib = measured(lambda: epoch_plan(lengths, cfg.micro_batch_size, seed=0, epoch=0,
                                                             cutoff_len=cfg.cutoff_len, **options))
            legacy, legacy_seconds, legacy_mib = measured(lambda: legacy_plan(
                examples, cfg.micro_batch_size, 0, 0, pack=mode == "pack", group_by_length=mode == "group_by_length",
                cutoff_len=cfg.cutoff_len))
            print(f"{n:>9}  {mode:<16}{seconds:>9.2f}{mib:>11.1f}{legacy_seconds:>9.2f}{legacy_mib:>10.1f}"
                  f"{legacy_seconds / seconds:>13.2f}x{legacy_mib / mib:>12.2f}x", flush=True)
            if mode == "pack":
                legacy_rows = [row for batch in legacy for row in batch]
                rows = len(plan.row_bounds) - 1
                packing.append((n, rows, float(lengths.sum()) / (cfg.cutoff_len * rows), plan.efficiency,
                                len(legacy_rows), efficiency_of_rows(lengths, legacy_rows, cfg.cutoff_len)))
            del plan, legacy
    print("\ntime/mem vs list: the baseline's seconds and traced peak MiB over the array plan's (higher: the array "
          "plan is faster / smaller)")
    print(f"\n{'rows':>9}{'BFD rows':>10}{'BFD fill':>10}{'BFD slots':>11}{'greedy rows':>13}{'greedy fill':>13}")
    for n, rows, fill, slots, greedy_rows, greedy_fill in packing:
        print(f"{n:>9}{rows:>10}{fill:>10.1%}{slots:>11.1%}{greedy_rows:>13}{greedy_fill:>13.1%}")
    print("\nfill: non-padding tokens / (rows x cutoff_len); slots: non-padding tokens / the padded micro-batches' "
          "slots (rows x longest row of each micro-batch), as the run summary reports it")


if __name__ == "__main__":
    flags.main(BenchConfig, main, prog="bench_plan.py", summary=__doc__.strip().splitlines()[0])
