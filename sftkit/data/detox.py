"""Stage 2, detox: split conversations into rows, drop exact duplicates, score and drop toxic rows.

Two steps, each reused when its inputs and settings are unchanged:
``score`` splits, deduplicates and scores (alt-profanity-check, and detoxify when enabled) into
``2_detox/scored/<part>.parquet``; ``filter`` applies the thresholds into ``2_detox/<part>.parquet``.
The score columns stay in both, so changing a threshold re-runs only the cheap filter.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from sftkit.data import DataError
from sftkit.data.config import DataConfig
from sftkit.data.download import parquet_path, resolve_files
from sftkit.data.hashing import SeenIds, row_ids
from sftkit.data.parallel import ordered_map, resolve_workers
from sftkit.data.parquet_io import ParquetSink, count_rows, iter_batches, read_schema
from sftkit.data.scorers import DetoxifyScorer, profanity_probs
from sftkit.data.runner import Shard, ShardPhase, Stage, Step, run_stage
from sftkit.data.splitting import split_conversation
from sftkit.data.stats import StageStats
from sftkit.data.workdir import shard_mask, stage_dir

VERSION = 2
DETOXIFY_PREFIX = "detoxify_"


def plain_text(row: str) -> str:
    """The row without turn markers, as the text classifiers see it."""
    return row.replace("<human>:", "").replace("<bot>:", "")


def split_and_score(job: tuple) -> dict:
    """Worker: split a batch of conversations, keep this shard's rows, score them for profanity."""
    texts, sources, target_chars, max_chars, shard_index, num_shards = job
    rows, row_sources = [], []
    dropped, added, events = Counter(), Counter(), Counter()
    for text, source in zip(texts, sources):
        pieces, happened = split_conversation(text, target_chars, max_chars)
        events.update(happened)
        if not pieces:
            dropped["exchange_too_long" if happened["exchange_too_long"] else "no_complete_exchange"] += 1
        added["split"] += max(len(pieces) - 1, 0)
        rows += pieces
        row_sources += [source] * len(pieces)
    ids = row_ids(rows)
    mine = shard_mask(ids, shard_index, num_shards)
    dropped["other_shard"] += int((~mine).sum())
    rows = [r for r, keep in zip(rows, mine) if keep]
    row_sources = [s for s, keep in zip(row_sources, mine) if keep]
    return {"conversations": len(texts), "ids": ids[mine], "rows": rows, "sources": row_sources,
            "profanity": profanity_probs([plain_text(r) for r in rows]), "dropped": dropped, "added": added,
            "events": events}


def input_files(cfg: DataConfig) -> list[Path]:
    paths = [parquet_path(cfg, name) for name in resolve_files(cfg)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"detox needs the download output {', '.join(missing)} in "
                        f"{stage_dir(cfg.work_dir, 'download')}: run `python create_data.py download` first "
                        "(same --work_dir, --source and --files; every shard of it)")
    return paths


def score(cfg: DataConfig, inputs: list[Path], out: Path, shard: Shard = Shard(0, 1)) -> StageStats:
    """Split every conversation, keep this shard's rows, drop exact duplicates and score the rest.

    Every shard reads every conversation (a row's shard comes from its id, known only after the
    split), so conversation-level counts (rows in, splits, too-long exchanges) are counted by the
    shard that owns the input batch (batch number % shards): the shards' counts add up to the
    unsharded run's. Equal rows share an id, hence a shard: exact dedup stays global.
    """
    stats = StageStats("detox")
    detoxify = None
    if cfg.detoxify:
        detoxify = DetoxifyScorer(cfg.detoxify_model_type, cfg.detoxify_checkpoint, cfg.detoxify_config_path,
                                  cfg.device, cfg.detoxify_batch_size)
    heads = [DETOXIFY_PREFIX + h for h in (detoxify.heads if detoxify else [])]
    schema = pa.schema([("id", pa.uint64()), ("text", pa.string()), ("source", pa.string()),
                        ("profanity_prob", pa.float32())] + [(h, pa.float32()) for h in heads])
    total = count_rows(inputs)
    workers = min(resolve_workers(cfg.workers), max(1, math.ceil(total / cfg.batch_rows)))
    jobs = ((b.column("text").to_pylist(), b.column("source").to_pylist(), cfg.target_row_chars,
             cfg.max_row_chars, shard.index, shard.count)
            for b in iter_batches(inputs, cfg.batch_rows, ["text", "source"]))
    seen, events = SeenIds(), Counter()
    with ParquetSink(out, schema) as sink, tqdm(total=total, desc="detox", unit=" conv", leave=False) as bar:
        for number, result in enumerate(ordered_map(split_and_score, jobs, workers)):
            if number % shard.count == shard.index:
                stats.rows_in += result["conversations"]
                stats.dropped.update({k: v for k, v in result["dropped"].items() if k != "other_shard"})
                stats.added.update(result["added"])
                events.update(result["events"])
            fresh = seen.first_occurrences(result["ids"])
            stats.drop("duplicate", int((~fresh).sum()))
            rows = [r for r, keep in zip(result["rows"], fresh) if keep]
            columns = {"id": result["ids"][fresh], "text": rows,
                       "source": [s for s, keep in zip(result["sources"], fresh) if keep],
                       "profanity_prob": result["profanity"][fresh]}
            if detoxify is not None:
                scores = detoxify.score([plain_text(r) for r in rows])
                columns.update({DETOXIFY_PREFIX + h: v for h, v in scores.items()})
            sink.write(pa.RecordBatch.from_pydict(columns, schema=schema))
            bar.update(result["conversations"])
    stats.rows_out = sink.rows
    stats.dropped, stats.added = +stats.dropped, +stats.added
    stats.count("exchanges", +events)
    stats.notes.append(f"detoxify: {cfg.detoxify_model_type}" if detoxify else
                       "detoxify: off (enable with --detoxify=true and its weights)")
    return stats


def filter_rows(cfg: DataConfig, scored: Path, out: Path) -> StageStats:
    """Drop rows at or above the profanity or detoxify thresholds (each row counted once)."""
    stats = StageStats("detox", rows_in=count_rows([scored]))
    schema = read_schema(scored)
    heads = [n for n in schema.names if n.startswith(DETOXIFY_PREFIX)]
    with ParquetSink(out, schema) as sink:
        for batch in iter_batches([scored], cfg.batch_rows):
            profane = batch.column("profanity_prob").to_numpy() >= cfg.profanity_threshold
            toxic = np.zeros(batch.num_rows, dtype=bool)
            for head in heads:
                toxic |= batch.column(head).to_numpy() >= cfg.detoxify_threshold
            stats.drop("profanity", int(profane.sum()))
            stats.drop("detoxify", int((toxic & ~profane).sum()))
            sink.write(batch.filter(pa.array(~(profane | toxic))))
    stats.rows_out = sink.rows
    return stats


def shard_steps(cfg: DataConfig, shard: Shard) -> list[Step]:
    inputs = input_files(cfg)
    directory = stage_dir(cfg.work_dir, "detox")
    scored, out = directory / "scored" / f"{shard.part}.parquet", directory / f"{shard.part}.parquet"
    score_inputs, score_settings = list(inputs), ("target_row_chars", "max_row_chars", "detoxify")
    if cfg.detoxify:
        score_settings += ("detoxify_model_type", "detoxify_checkpoint", "detoxify_config_path")
        if cfg.detoxify_checkpoint and Path(cfg.detoxify_checkpoint).is_file():
            score_inputs.append(Path(cfg.detoxify_checkpoint))
    return [Step("detox/score", scored.with_suffix(".manifest.json"), score_inputs, [scored], score_settings,
                 lambda: score(cfg, inputs, scored, shard)),
            Step("detox/filter", out.with_suffix(".manifest.json"), [scored], [out],
                 ("profanity_threshold", "detoxify_threshold"), lambda: filter_rows(cfg, scored, out))]


STAGE = Stage(
    "detox", VERSION, [ShardPhase(shard_steps)],
    num_shards=lambda cfg: cfg.num_shards,
    describe=lambda cfg, shard: f"every file in {stage_dir(cfg.work_dir, 'download')}, rows with id % "
                                f"{shard.count} == {shard.index}",
    temp_dirs=lambda cfg: [stage_dir(cfg.work_dir, "detox"), stage_dir(cfg.work_dir, "detox") / "scored"])


def run(cfg: DataConfig) -> StageStats:
    return run_stage(STAGE, cfg)
