"""Stage 2, detox: split conversations into rows, drop exact duplicates, score and drop toxic rows.

Two phases, a shuffle between them, so that no shard repeats another's work:
``split`` (shard k) splits the conversations of its blocks (``CONVERSATION_BLOCK`` consecutive
conversations each, dealt round-robin: block b to shard b % shards) and scores them with
alt-profanity-check, into ``2_detox/split/<part>.parquet``; ``score`` (shard j) reads from every
split file the rows whose id falls in its partition, in the input's own order (a merge by block),
drops exact duplicates (equal rows share an id, hence a shard: dedup stays global), runs detoxify
when enabled, into ``2_detox/scored/<part>.parquet``; ``filter`` applies the thresholds into
``2_detox/<part>.parquet``. The score columns stay, so changing a threshold re-runs only the cheap
filter. A shard run alone (``--shard_index``) first splits, or reuses, the blocks of the others.
A tool conversation (sftkit.data.algorithms.toolrows) stays one row, never split or cut; its id
covers its messages as well as its text.
"""
from __future__ import annotations

import heapq
import math
from collections import Counter
from operator import itemgetter
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from sftkit.data import DataError
from sftkit.data.algorithms.hashing import SeenIds, row_ids
from sftkit.data.algorithms.scorers import DetoxifyScorer, plain_text, profanity_probs
from sftkit.data.algorithms import toolrows
from sftkit.data.algorithms.splitting import split_conversation
from sftkit.data.config import DataConfig
from sftkit.data.inputs.files import resolve_files
from sftkit.data.run.contract import Shard, ShardPhase, Stage, Step, run_step
from sftkit.data.run.filtering import Verdict, filter_rows
from sftkit.data.run.manifest import digests
from sftkit.data.run.parallel import ordered_map, resolve_workers
from sftkit.data.run.parquet_io import ParquetSink, count_rows, iter_batches, read_schema
from sftkit.data.run.stats import StageStats
from sftkit.data.run.workdir import download_part, stage_dir

VERSION = 4  # 4: tool conversations, whole
DETOXIFY_PREFIX = "detoxify_"
CONVERSATION_BLOCK = 1024  # conversations per block: the unit the split phase deals to shards
SPLIT_SETTINGS = ("target_row_chars", "max_row_chars")
SPLIT_SCHEMA = pa.schema([("id", pa.uint64()), ("text", pa.string()), ("source", pa.string()),
                          ("profanity_prob", pa.float32()), ("conversation", pa.uint64()),
                          (toolrows.COLUMN, pa.string())])
# a split row's columns the scored file keeps
SCORED_COLUMNS = ["id", "text", "source", "profanity_prob", toolrows.COLUMN]


def split_and_score(job: tuple) -> dict:
    """Worker: split a batch of conversations into rows and score each for profanity."""
    texts, sources, tools, conversations, target_chars, max_chars = job
    rows, row_sources, row_tools, row_conversations = [], [], [], []
    dropped, added, events = Counter(), Counter(), Counter()
    for text, source, messages, conversation in zip(texts, sources, tools, conversations):
        if messages is not None:  # a tool conversation: whole, or not at all
            pieces = [text] if len(text) <= max_chars else []
            dropped["tool_conversation_too_long"] += not pieces
            events["tool_conversation"] += 1
        else:
            pieces, happened = split_conversation(text, target_chars, max_chars)
            events.update(happened)
            if not pieces:
                dropped["exchange_too_long" if happened["exchange_too_long"] else "no_complete_exchange"] += 1
        added["split"] += max(len(pieces) - 1, 0)
        rows += pieces
        row_sources += [source] * len(pieces)
        row_tools += [messages] * len(pieces)
        row_conversations += [conversation] * len(pieces)
    keys = [row if messages is None else f"{row}\x00{messages}" for row, messages in zip(rows, row_tools)]
    return {"conversations": len(texts), "ids": row_ids(keys), "rows": rows, "sources": row_sources,
            "tools": row_tools, "conversation": np.array(row_conversations, dtype=np.uint64),
            "profanity": profanity_probs([plain_text(r) for r in rows]), "dropped": dropped, "added": added,
            "events": events}


def input_files(cfg: DataConfig) -> list[Path]:
    paths = [download_part(cfg.work_dir, name) for name in resolve_files(cfg)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"detox needs the download output {', '.join(missing)} in "
                        f"{stage_dir(cfg.work_dir, 'download')}: run `python create_data.py download` first "
                        "(same --work_dir, --source and --files; every shard of it)")
    return paths


def _my_conversations(inputs: list[Path], batch_rows: int, shard: Shard) -> Iterator[tuple]:
    """(texts, sources, tool messages, conversation numbers) of this shard's blocks, about ``batch_rows`` at
    a time."""
    offset = 0
    for batch in iter_batches(inputs, batch_rows, ["text", "source", toolrows.COLUMN]):
        numbers = np.arange(offset, offset + batch.num_rows, dtype=np.uint64)
        offset += batch.num_rows
        mine = (numbers // np.uint64(CONVERSATION_BLOCK)) % np.uint64(shard.count) == np.uint64(shard.index)
        if mine.any():
            picked = batch.filter(pa.array(mine))
            yield (picked.column("text").to_pylist(), picked.column("source").to_pylist(),
                   picked.column(toolrows.COLUMN).to_pylist(), numbers[mine].tolist())


def split(cfg: DataConfig, inputs: list[Path], out: Path, shard: Shard = Shard(0, 1)) -> StageStats:
    """Split and profanity-score the conversations of this shard's blocks (rows for every shard)."""
    stats, events = StageStats("detox"), Counter()
    total = count_rows(inputs)
    workers = min(resolve_workers(cfg.workers), max(1, math.ceil(total / shard.count / cfg.batch_rows)))
    jobs = ((texts, sources, tools, numbers, cfg.target_row_chars, cfg.max_row_chars)
            for texts, sources, tools, numbers in _my_conversations(inputs, cfg.batch_rows, shard))
    with ParquetSink(out, SPLIT_SCHEMA) as sink, \
            tqdm(total=math.ceil(total / shard.count), desc="detox split", unit=" conv", leave=False) as bar:
        for result in ordered_map(split_and_score, jobs, workers):
            stats.rows_in += result["conversations"]
            stats.dropped.update(result["dropped"])
            stats.added.update(result["added"])
            events.update(result["events"])
            sink.write(pa.RecordBatch.from_pydict(
                {"id": result["ids"], "text": result["rows"], "source": result["sources"],
                 "profanity_prob": result["profanity"], "conversation": result["conversation"],
                 toolrows.COLUMN: result["tools"]},
                schema=SPLIT_SCHEMA))
            bar.update(result["conversations"])
    stats.rows_out = sink.rows
    stats.dropped, stats.added = +stats.dropped, +stats.added
    stats.count("exchanges", +events)
    return stats


def _blocks(path: Path, shard: Shard, batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """This shard's rows of one split file as (block, rows) pieces, in the file's (input) order."""
    for batch in iter_batches([path], batch_rows):
        batch = batch.filter(pa.array(shard.mask(batch.column("id").to_numpy())))
        if not batch.num_rows:
            continue
        blocks = batch.column("conversation").to_numpy() // np.uint64(CONVERSATION_BLOCK)
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(blocks)]):
            yield int(blocks[start]), batch.slice(start, end - start)


def _in_input_order(paths: list[Path], shard: Shard, batch_rows: int) -> Iterator[pa.Table]:
    """This shard's rows from every split file, merged back into the input's order (each block lives in
    one file), about ``batch_rows`` rows at a time."""
    pending, rows = [], 0
    for _, piece in heapq.merge(*(_blocks(p, shard, batch_rows) for p in paths), key=itemgetter(0)):
        pending.append(piece)
        rows += piece.num_rows
        if rows >= batch_rows:
            yield pa.Table.from_batches(pending)
            pending, rows = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def split_step(cfg: DataConfig, inputs: list[Path], shard: Shard) -> Step:
    out = stage_dir(cfg.work_dir, "detox") / "split" / f"{shard.part}.parquet"
    # The blocks come from conversation numbers, not batches, so batch_rows changes nothing here.
    return Step("detox/split", out.with_suffix(".manifest.json"), inputs, [out], SPLIT_SETTINGS,
                lambda: split(cfg, inputs, out, shard))


def ensure_splits(cfg: DataConfig, inputs: list[Path], shard: Shard) -> list[Path]:
    """Every shard's split file, computed here where one is missing or stale (a shard run alone)."""
    input_digests = digests(inputs)  # hashed once for every shard's manifest check
    outputs = []
    for other in (Shard(i, shard.count) for i in range(shard.count)):
        step = split_step(cfg, inputs, other)
        _, note = run_step(STAGE, step, cfg, other, input_digests=input_digests)
        if note is None or "up to date" not in note:
            print(f"[detox] split {other.part} here: it was missing or stale", flush=True)
        outputs += step.outputs
    return outputs


def score(cfg: DataConfig, inputs: list[Path], out: Path, shard: Shard = Shard(0, 1)) -> StageStats:
    """This shard's rows of every split file, in input order: drop exact duplicates, add detoxify scores."""
    splits = ensure_splits(cfg, inputs, shard)
    detoxify = None
    if cfg.detoxify:
        detoxify = DetoxifyScorer(cfg.detoxify_model_type, cfg.detoxify_checkpoint, cfg.detoxify_config_path,
                                  cfg.device, cfg.detoxify_batch_size)
    heads = [DETOXIFY_PREFIX + h for h in (detoxify.heads if detoxify else [])]
    schema = pa.schema([SPLIT_SCHEMA.field(name) for name in SCORED_COLUMNS] + [(h, pa.float32()) for h in heads])
    seen = SeenIds()

    def judge(table: pa.Table) -> Verdict:
        fresh = seen.first_occurrences(table.column("id").to_numpy())
        columns = {}
        if detoxify is not None:  # only the rows kept are scored; a duplicate's scores stay NaN and go with it
            texts = table.column("text").to_pylist()
            for head, values in detoxify.score([plain_text(texts[i]) for i in np.flatnonzero(fresh)]).items():
                scores = np.full(table.num_rows, np.nan, dtype=np.float32)
                scores[fresh] = values
                columns[DETOXIFY_PREFIX + head] = pa.array(scores)
        return Verdict({"duplicate": ~fresh}, columns)

    expected = math.ceil(count_rows(splits) / shard.count)  # ids balance the shards: for the progress bar
    with tqdm(total=expected, desc="detox score", unit=" rows", leave=False) as bar:
        def tables() -> Iterator[pa.Table]:
            for table in _in_input_order(splits, shard, cfg.batch_rows):
                yield table.select(SCORED_COLUMNS)
                bar.update(table.num_rows)

        stats = filter_rows("detox", tables(), out, schema, judge)
    stats.notes.append(f"detoxify: {cfg.detoxify_model_type}" if detoxify else
                       "detoxify: off (enable with --detoxify=true and its weights)")
    return stats


def judge(batch: pa.RecordBatch, cfg: DataConfig) -> Verdict:
    """Rows at or above the profanity threshold, then rows any detoxify head scores at or above its own."""
    toxic = np.zeros(batch.num_rows, dtype=bool)
    for head in (n for n in batch.schema.names if n.startswith(DETOXIFY_PREFIX)):
        toxic |= batch.column(head).to_numpy() >= cfg.detoxify_threshold
    return Verdict({"profanity": batch.column("profanity_prob").to_numpy() >= cfg.profanity_threshold,
                    "detoxify": toxic})


def split_steps(cfg: DataConfig, shard: Shard) -> list[Step]:
    return [split_step(cfg, input_files(cfg), shard)]


def score_steps(cfg: DataConfig, shard: Shard) -> list[Step]:
    inputs = input_files(cfg)
    directory = stage_dir(cfg.work_dir, "detox")
    scored, out = directory / "scored" / f"{shard.part}.parquet", directory / f"{shard.part}.parquet"
    # The split files are derived from the inputs and SPLIT_SETTINGS (ensure_splits checks them).
    score_inputs, score_settings = list(inputs), (*SPLIT_SETTINGS, "detoxify")
    if cfg.detoxify:
        score_settings += ("detoxify_model_type", "detoxify_checkpoint", "detoxify_config_path")
        if cfg.detoxify_checkpoint and Path(cfg.detoxify_checkpoint).is_file():
            score_inputs.append(Path(cfg.detoxify_checkpoint))
    return [Step("detox/score", scored.with_suffix(".manifest.json"), score_inputs, [scored], score_settings,
                 lambda: score(cfg, inputs, scored, shard)),
            Step("detox/filter", out.with_suffix(".manifest.json"), [scored], [out],
                 ("profanity_threshold", "detoxify_threshold"),
                 lambda: filter_rows("detox", iter_batches([scored], cfg.batch_rows), out, read_schema(scored),
                                     lambda batch: judge(batch, cfg)))]


STAGE = Stage(
    "detox", VERSION, [ShardPhase(split_steps), ShardPhase(score_steps)],
    num_shards=lambda cfg: cfg.num_shards,
    describe=lambda cfg, shard: f"every file in {stage_dir(cfg.work_dir, 'download')}: conversation blocks "
                                f"b % {shard.count} == {shard.index}, then rows with id % {shard.count} == "
                                f"{shard.index} of every block",
    temp_dirs=lambda cfg: [stage_dir(cfg.work_dir, "detox"), stage_dir(cfg.work_dir, "detox") / "split",
                           stage_dir(cfg.work_dir, "detox") / "scored"])

