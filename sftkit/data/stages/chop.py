"""Stage 3, chop: drop rows whose turns are too short or too long, short ones by seeded chance.

Rows with a mean human or bot turn below ``min_turn_mean_chars`` always go; rows below a key of
``short_turn_keep`` are kept with its probability (the lowest that applies); rows with a turn over
``max_turn_chars`` go. Each row's draw comes from its id and ``--seed``, so a run is reproducible
whatever the batching or sharding. The turn statistics are kept as columns. A tool conversation is
judged on its natural-language turns; one whose answers are all calls has no bot turn to judge
(sftkit.data.algorithms.toolrows), so only its human turns are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from sftkit.data import DataError
from sftkit.data.algorithms import toolrows
from sftkit.data.algorithms.hashing import uniform_draws
from sftkit.data.algorithms.lengths import STAT_COLUMNS, turn_length_stats
from sftkit.data.config import DataConfig
from sftkit.data.run.contract import Shard, ShardInput, ShardPhase, Stage, Step, shard_input
from sftkit.data.run.filtering import Verdict, filter_rows
from sftkit.data.run.parquet_io import read_schema
from sftkit.data.run.stats import StageStats
from sftkit.data.run.workdir import stage_dir

VERSION = 3  # 3: tool conversations


def keep_thresholds(short_turn_keep: dict) -> list[tuple[float, float]]:
    """``{chars: probability}`` as sorted ``(chars, probability)`` pairs, checked."""
    try:
        pairs = sorted((float(k), float(v)) for k, v in short_turn_keep.items())
    except (TypeError, ValueError):
        raise DataError(f"--short_turn_keep={short_turn_keep!r}: expected a mapping of characters to "
                        "probabilities such as {30: 0.2, 50: 0.5}") from None
    if any(not 0.0 <= p <= 1.0 for _, p in pairs):
        raise DataError(f"--short_turn_keep={short_turn_keep!r}: probabilities must lie in [0, 1]")
    return pairs


def keep_probability(mean_chars: np.ndarray, thresholds: list[tuple[float, float]]) -> np.ndarray:
    """Per row, the lowest probability among the thresholds its mean turn length is below (else 1)."""
    probability = np.ones(len(mean_chars))
    for chars, p in thresholds:
        probability = np.where(mean_chars < chars, np.minimum(probability, p), probability)
    return probability


def judge(batch: pa.RecordBatch, cfg: DataConfig) -> Verdict:
    """Rows with a too short mean turn, then with a too long turn, then those losing their keep-draw;
    every row gets the turn statistics as columns."""
    lengths = turn_length_stats(batch.column("text"))
    ids = batch.column("id").to_numpy()
    thresholds = keep_thresholds(cfg.short_turn_keep)
    judged = ~toolrows.answerless(batch)  # rows with bot turns
    too_short = ((lengths["human_len_mean"] < cfg.min_turn_mean_chars)
                 | (judged & (lengths["bot_len_mean"] < cfg.min_turn_mean_chars)))
    too_long = (lengths["human_len_max"] > cfg.max_turn_chars) | (lengths["bot_len_max"] > cfg.max_turn_chars)
    kept_by_draw = ((uniform_draws(ids, cfg.seed, 1) < keep_probability(lengths["human_len_mean"], thresholds))
                    & (~judged | (uniform_draws(ids, cfg.seed, 2) < keep_probability(lengths["bot_len_mean"],
                                                                                      thresholds))))
    return Verdict({"turn_too_short": too_short, "turn_too_long": too_long, "short_turn_draw": ~kept_by_draw},
                   {name: pa.array(lengths[name]) for name in STAT_COLUMNS})


def chop(cfg: DataConfig, source: ShardInput, out: Path) -> StageStats:
    schema = read_schema(source.paths[0])
    schema = pa.schema(list(schema) + [(n, pa.float32() if n.endswith("mean") else pa.int32()) for n in STAT_COLUMNS])
    return filter_rows("chop", source.batches(cfg.batch_rows), out, schema, lambda batch: judge(batch, cfg))


def shard_steps(cfg: DataConfig, shard: Shard) -> list[Step]:
    source = shard_input(cfg, "detox", "chop", shard)
    out = stage_dir(cfg.work_dir, "chop") / f"{shard.part}.parquet"
    return [Step("chop", out.with_suffix(".manifest.json"), source.paths, [out],
                 ("seed", "min_turn_mean_chars", "max_turn_chars"), lambda: chop(cfg, source, out),
                 derived={"short_turn_keep": keep_thresholds(cfg.short_turn_keep)})]


STAGE = Stage(
    "chop", VERSION, [ShardPhase(shard_steps)],
    num_shards=lambda cfg: cfg.num_shards,
    describe=lambda cfg, shard: f"{stage_dir(cfg.work_dir, 'detox')}, rows with id % {shard.count} == {shard.index}",
    check=lambda cfg: keep_thresholds(cfg.short_turn_keep) and None,
    temp_dirs=lambda cfg: [stage_dir(cfg.work_dir, "chop")])

