"""Stage 5, finalize: last clean, seeded shuffle, and the training file with its data card.

Writes ``<work_dir>/oig_instruct_cleaned.json``, a JSON list of ``{"id", "input", "prompt_type",
"source"}`` in the ``<human>: …\\n<bot>: …`` format that finetune.py reads (a tool conversation's row
adds its ``messages`` and ``tools``, which finetune.py reads first, and its ``input`` is its whole
``human_bot`` text, tools as the h2oGPT types write them), and
``oig_instruct_cleaned.card.json`` / ``.card.md``: one output over every shard of grade. The shuffle never holds more than
``shuffle_bucket_rows`` rows: rows are dealt to random buckets on disk, then each bucket is
shuffled in memory; the order depends only on the row ids and ``--seed``.

Before the shuffle, near duplicates are dropped and personality rows added. Near duplicates are found
in one pass over every grade part (all shards' rows), the rows of a cluster taken in row-id order, so
the same row of each cluster is kept however the data was sharded. After it, the OpenAssistant
ranked pairs of every input file are merged into ``oasst_pairs.json``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sftkit import atomic, rows
from sftkit.data import DataError
from sftkit.data.algorithms import neardup, personality, toolrows
from sftkit.data.algorithms.hashing import row_ids, uniform_draws
from sftkit.data.config import EXECUTION_SETTINGS, DataConfig
from sftkit.data.inputs.files import resolve_files
from sftkit.data.inputs.sources import PAIRS_SUFFIX
from sftkit.data.run.contract import Shard, ShardPhase, Stage, Step
from sftkit.data.run.parquet_io import ParquetSink, count_rows, iter_batches
from sftkit.data.run.stats import StageStats
from sftkit.data.run.workdir import FINAL_JSON, stage_dir, stage_parts
from sftkit.data.stages import datacard
from sftkit.prompts import render_conversation

VERSION = 3  # 3: tool conversations
ROW_SCHEMA = pa.schema([("id", pa.uint64()), ("text", pa.string()), ("source", pa.string()),
                        (toolrows.COLUMN, pa.string())])
PAIRS_JSON = "oasst_pairs.json"
# The DataConfig fields that change the output (a change re-runs finalize).
SETTINGS = ("seed", "censor_words", "unhelpful_phrases", "shuffle_bucket_rows", "near_dup_threshold",
            "near_dup_shingle_words", "near_dup_num_perm", "personality", "personality_repeat", "bot_name", "bot_maker")


def any_of_pattern(words: list[str]) -> str | None:
    """A case-insensitive regex matching any of ``words``, whole words where they start or end with one."""
    parts = []
    for word in words:
        word = word.strip()
        if word:
            parts.append(("\\b" if word[0].isalnum() else "") + re.escape(word) + ("\\b" if word[-1].isalnum() else ""))
    return "(?i)(?:" + "|".join(parts) + ")" if parts else None


def clean_drops(texts: pa.Array, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Masks of rows dropped for a censored word or an unhelpful phrase (first reason wins)."""
    drops = {}
    taken = np.zeros(len(texts), dtype=bool)
    for reason, words in (("censored_word", cfg.censor_words), ("unhelpful_answer", cfg.unhelpful_phrases)):
        pattern = any_of_pattern(words)
        mask = (pc.match_substring_regex(texts, pattern).to_numpy(zero_copy_only=False) if pattern
                else np.zeros(len(texts), dtype=bool))
        drops[reason] = mask & ~taken
        taken |= mask
    return drops


def _plain(text: str) -> str:
    """A row's words for shingling: turn markers become spaces, so the words around them stay apart."""
    return text.replace("<human>:", " ").replace("<bot>:", " ")


def near_duplicate_ids(cfg: DataConfig, inputs: list[Path]) -> np.ndarray:
    """Sorted ids of the rows to drop as near duplicates (empty when --near_dup_threshold >= 1)."""
    if cfg.near_dup_threshold >= 1:
        return np.empty(0, dtype=np.uint64)
    items = ((row_id, _plain(text)) for batch in iter_batches(inputs, cfg.batch_rows, ["id", "text"])
             for row_id, text in zip(batch.column("id").to_numpy().tolist(), batch.column("text").to_pylist()))
    return neardup.near_duplicate_ids(items, cfg.near_dup_threshold, cfg.near_dup_shingle_words,
                                      cfg.near_dup_num_perm, cfg.batch_rows, scratch_dir=cfg.work_dir)


def personality_batch(cfg: DataConfig, schema: pa.Schema) -> pa.RecordBatch:
    """The personality rows, each repeated --personality_repeat times (ids differ per copy)."""
    texts = personality.personality_texts(cfg.bot_name, cfg.bot_maker) if cfg.personality else []
    rows = [text for _ in range(max(cfg.personality_repeat, 0)) for text in texts]
    ids = row_ids([f"{text}\x00copy {i // max(len(texts), 1)}" for i, text in enumerate(rows)])
    return pa.RecordBatch.from_pydict({"id": ids, "text": rows, "source": [personality.SOURCE] * len(rows),
                                       toolrows.COLUMN: [None] * len(rows)}, schema=schema)


def write_oasst_pairs(cfg: DataConfig) -> Path | None:
    """Merge the download stage's OpenAssistant pairs into ``<work_dir>/oasst_pairs.json`` (a JSON list of
    {"prompt": [{"role", "content"}...], "chosen", "rejected", "source"}); None when no input had any."""
    download_dir = stage_dir(cfg.work_dir, "download")
    pair_files = [download_dir / f"{name}{PAIRS_SUFFIX}" for name in resolve_files(cfg)]
    pairs = [json.loads(line) for path in pair_files if path.is_file()
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = Path(cfg.work_dir) / PAIRS_JSON
    if not pairs:
        out.unlink(missing_ok=True)  # left from a run whose inputs had OpenAssistant trees
        return None
    atomic.write_text(out, json.dumps(pairs, ensure_ascii=False, indent=1) + "\n")
    print(f"[finalize] wrote {out} ({len(pairs):,} ranked OpenAssistant answer pairs)")
    return out


def tool_record(messages: str) -> dict:
    """A tool conversation's fields of the training file: ``input`` its whole ``human_bot`` text (what
    h2oGPT's trainer, which reads ``input`` alone, then learns), ``messages`` and ``tools``."""
    conversation = json.loads(messages)
    turns = rows.message_turns(conversation["messages"])
    text, _ = render_conversation(turns, "human_bot", tools=conversation["tools"])
    return {"input": text, **conversation}


def output_path(cfg: DataConfig) -> Path:
    return Path(cfg.work_dir) / FINAL_JSON


def card_paths(out: Path) -> tuple[Path, Path]:
    return out.with_suffix(".card.json"), out.with_suffix(".card.md")


def finalize(cfg: DataConfig, inputs: list[Path], out: Path) -> StageStats:
    stats = StageStats("finalize", rows_in=count_rows(inputs))
    n_buckets = max(1, math.ceil(stats.rows_in / cfg.shuffle_bucket_rows))
    scratch = atomic.temp_path(out.parent / "finalize-buckets")  # a killed run's is cleaned at the next start
    sources: Counter = Counter()
    near_duplicates = near_duplicate_ids(cfg, inputs)
    try:
        with contextlib.ExitStack() as stack:  # pass 1: deal the kept rows to random buckets on disk
            sinks = [stack.enter_context(ParquetSink(scratch / f"bucket-{b:05d}.parquet", ROW_SCHEMA, durable=False))
                     for b in range(n_buckets)]

            def deal(batch: pa.RecordBatch) -> None:
                buckets = (uniform_draws(batch.column("id").to_numpy(), cfg.seed, 3) * n_buckets).astype(np.int64)
                for b in np.unique(buckets):
                    sinks[b].write(batch.filter(pa.array(buckets == b)))

            for batch in iter_batches(inputs, cfg.batch_rows, ROW_SCHEMA.names):
                near = np.isin(batch.column("id").to_numpy(), near_duplicates)
                stats.drop("near_duplicate", int(near.sum()))
                keep = ~near
                for reason, mask in clean_drops(batch.column("text"), cfg).items():
                    stats.drop(reason, int((mask & keep).sum()))
                    keep &= ~mask
                deal(batch.filter(pa.array(keep)))
            personality = personality_batch(cfg, ROW_SCHEMA)
            stats.add("personality", personality.num_rows)
            deal(personality)
        with atomic.replacing(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write("[")
            for sink in sinks:  # pass 2: shuffle each bucket in memory, stream it out
                table = pq.read_table(sink.path)
                ids = table.column("id").to_numpy()
                order = np.argsort(uniform_draws(ids, cfg.seed, 4), kind="stable")
                texts, row_sources = table.column("text").to_pylist(), table.column("source").to_pylist()
                tools = table.column(toolrows.COLUMN).to_pylist()
                for i in order:
                    record = {"id": f"{int(ids[i]):016x}", "input": texts[i], "prompt_type": "human_bot",
                              "source": row_sources[i]}
                    if tools[i] is not None:
                        record.update(tool_record(tools[i]))
                    fh.write(("\n" if stats.rows_out == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
                    stats.rows_out += 1
                    sources[row_sources[i]] += 1
            fh.write("\n]\n")
            if stats.rows_out == stats.added["personality"] and not cfg.allow_empty:  # generated rows alone
                raise DataError(f"finalize: 0 rows left of {stats.rows_in:,} (see each stage's summary for where "
                                "they went); nothing was written. Check --source/--files and the thresholds, or "
                                "pass --allow_empty=True to write an empty dataset")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in EXECUTION_SETTINGS}
    card = datacard.build(datacard.earlier_stages(cfg) + [stats], out, sources, settings,
                          datacard.input_files(cfg))  # every input file's format, counts, drops and sha256
    card_json, card_md = card_paths(out)
    atomic.write_text(card_json, json.dumps(card, indent=1))
    atomic.write_text(card_md, datacard.markdown(card))
    return stats


def shard_steps(cfg: DataConfig, shard: Shard) -> list[Step]:
    inputs = stage_parts(cfg.work_dir, "grade", "finalize")
    out = output_path(cfg)
    return [Step("finalize", out.with_suffix(".manifest.json"), inputs, [out, *card_paths(out)], SETTINGS,
                 lambda: finalize(cfg, inputs, out))]


def report(cfg: DataConfig, stats: StageStats) -> None:
    out = output_path(cfg)
    print(f"[finalize] wrote {out} ({stats.rows_out:,} rows) and its data card {card_paths(out)[1].name}")
    write_oasst_pairs(cfg)


STAGE = Stage(
    "finalize", VERSION, [ShardPhase(shard_steps)],
    num_shards=lambda cfg: 1,  # the shuffle is global: one output, whatever --num_shards
    describe=lambda cfg, shard: f"every part in {stage_dir(cfg.work_dir, 'grade')}",
    temp_dirs=lambda cfg: [Path(cfg.work_dir)], report=report)

