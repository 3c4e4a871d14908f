"""Stage 4, grade: readability, profanity words and (optionally) a reward model, then thresholds.

Three steps, each reused when its inputs and settings are unchanged:

* ``score``: Flesch–Kincaid grade of the answers (textstat) and better_profanity's flag, over both
  cores, into ``4_grade/scored/<part>.parquet``;
* ``reward``: rows that pass the text thresholds are scored by the reward model in units of
  ``reward_progress_rows``; each finished unit is written at once as parquet (id, reward) under
  ``4_grade/reward_cache/<model key>/``, so a killed run resumes where it stopped and a later run
  with other thresholds reuses every score already computed;
* ``filter``: thresholds into ``4_grade/<part>.parquet``, with the ``reward`` column (null when off).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sftkit import atomic
from sftkit.data import DataError
from sftkit.data.config import DataConfig
from sftkit.data.detox import plain_text
from sftkit.data.manifest import cached_step, digests, sha256_file
from sftkit.data.parallel import ordered_map, resolve_workers
from sftkit.data.parquet_io import ParquetSink, count_rows, iter_batches, read_schema
from sftkit.data.readability import ensure_cmudict, flesch_kincaid_grades
from sftkit.data.scorers import profane_flags
from sftkit.reward import RewardModelScorer
from sftkit.data.stats import StageStats
from sftkit.data.workdir import check_shard, part_name, shard_mask, stage_dir, stage_parts
from sftkit.prompts import BOT, split_turns

VERSION = 1


def answers_text(row: str) -> str:
    """The bot answers of a row, joined: what the model will learn, and what readability is judged on."""
    return "\n".join(text for role, text in split_turns(row) if role == "bot")


def question_and_answer(row: str) -> tuple[str, str]:
    """The reward model's pair: everything before the last answer, and the last answer."""
    cut = row.rfind(BOT)
    return row[:cut].strip(), row[cut + len(BOT):].strip()


def text_scores(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Worker: (Flesch–Kincaid grade of the answers, better_profanity flag of the row)."""
    return (flesch_kincaid_grades([answers_text(t) for t in texts]),
            profane_flags([plain_text(t) for t in texts]))


def score(cfg: DataConfig, inputs: list[Path], out: Path) -> StageStats:
    stats = StageStats("grade", rows_in=count_rows(inputs))
    schema = read_schema(inputs[0])
    schema = pa.schema(list(schema) + [("fk_grade", pa.float32()), ("profane", pa.bool_())])
    workers = min(resolve_workers(cfg.workers), max(1, math.ceil(stats.rows_in / cfg.batch_rows)))
    batches = []

    def mine():
        for batch in iter_batches(inputs, cfg.batch_rows):
            keep = shard_mask(batch.column("id").to_numpy(), cfg.shard_index, cfg.num_shards)
            stats.drop("other_shard", int((~keep).sum()))
            batch = batch.filter(pa.array(keep))
            batches.append(batch)
            yield batch.column("text").to_pylist()

    with ParquetSink(out, schema) as sink, tqdm(total=stats.rows_in, desc="grade", unit=" rows", leave=False) as bar:
        for grades, profane in ordered_map(text_scores, mine(), workers, initializer=ensure_cmudict):
            batch = batches.pop(0)
            sink.write(batch.append_column("fk_grade", pa.array(grades)).append_column("profane", pa.array(profane)))
            bar.update(batch.num_rows)
    stats.rows_out = sink.rows
    return stats


def text_keep(batch: pa.RecordBatch, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Masks of the rows each text threshold drops (a row counted under its first reason)."""
    grade = batch.column("fk_grade").to_numpy()
    low = grade < cfg.min_grade
    high = (grade > cfg.max_grade) & ~low
    profane = batch.column("profane").to_numpy(zero_copy_only=False) & cfg.drop_profane & ~low & ~high
    return {"grade_too_low": low, "grade_too_high": high, "profane": profane}


def reward_key(cfg: DataConfig) -> str:
    """Names the reward cache: the model (and the hash of its files when local) and the max length."""
    model = Path(cfg.reward_model)
    files = {}
    if model.is_dir():
        files = {p.name: sha256_file(p) for p in sorted(model.iterdir())
                 if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".model", ".txt")}
    described = json.dumps({"model": cfg.reward_model, "files": files, "max_length": cfg.reward_max_length},
                           sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


class RewardCache:
    """Rewards by row id, stored as parquet units; 12 bytes per scored row in memory."""

    def __init__(self, directory: Path, description: dict):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        atomic.write_text(directory / "model.json", json.dumps(description, indent=1, sort_keys=True))
        units = sorted(directory.glob("unit-*.parquet"))
        tables = [pq.read_table(p, columns=["id", "reward"]) for p in units]
        self.ids = np.concatenate([t.column("id").to_numpy() for t in tables]) if tables else np.empty(0, np.uint64)
        self.rewards = (np.concatenate([t.column("reward").to_numpy() for t in tables]) if tables
                        else np.empty(0, np.float32))
        self._sort()
        self.next_unit = len(units)

    def _sort(self) -> None:
        order = np.argsort(self.ids, kind="stable")
        self.ids, self.rewards = self.ids[order], self.rewards[order]

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, rewards) for ``ids``."""
        if not len(self.ids):
            return np.zeros(len(ids), bool), np.full(len(ids), np.nan, np.float32)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        found = self.ids[pos] == ids
        return found, np.where(found, self.rewards[pos], np.nan).astype(np.float32)

    def add(self, ids: np.ndarray, rewards: np.ndarray) -> None:
        """Write one finished unit at once (temp file, then rename), then remember it."""
        table = pa.table({"id": pa.array(ids, pa.uint64()), "reward": pa.array(rewards, pa.float32())})
        with ParquetSink(self.directory / f"unit-{self.next_unit:06d}.parquet", table.schema) as sink:
            sink.write(table)
        self.next_unit += 1
        self.ids, self.rewards = np.concatenate([self.ids, ids]), np.concatenate([self.rewards, rewards])
        self._sort()


def open_reward_cache(cfg: DataConfig, key: str) -> RewardCache:
    return RewardCache(stage_dir(cfg.work_dir, "grade") / "reward_cache" / key,
                       {"model": cfg.reward_model, "max_length": cfg.reward_max_length, "key": key})


def score_rewards(cfg: DataConfig, scored: Path, cache: RewardCache) -> tuple[int, int]:
    """Reward-score every row that passes the text thresholds and is not in the cache yet.

    Returns (rows passing the text thresholds, how many of them were already in the cache).
    """
    scorer: RewardModelScorer | None = None
    pending: dict[str, list] = {"ids": [], "questions": [], "answers": []}
    passing = cached = 0

    def flush() -> None:
        rewards = scorer.score(pending["questions"], pending["answers"])
        cache.add(np.array(pending["ids"], dtype=np.uint64), np.array(rewards, dtype=np.float32))
        bar.update(len(pending["ids"]))
        for values in pending.values():
            values.clear()

    with tqdm(total=count_rows([scored]), desc="reward", unit=" rows", leave=False) as bar:
        for batch in iter_batches([scored], cfg.batch_rows):
            passes = ~np.logical_or.reduce(list(text_keep(batch, cfg).values()))
            ids = batch.column("id").to_numpy()
            found, _ = cache.lookup(ids)
            todo = np.flatnonzero(passes & ~found)
            passing += int(passes.sum())
            cached += int((passes & found).sum())
            bar.update(batch.num_rows - len(todo))
            texts = batch.column("text").to_pylist()
            for i in todo:
                if scorer is None:
                    scorer = RewardModelScorer(cfg.reward_model, batch_size=cfg.reward_batch_size, device=cfg.device,
                                               max_length=cfg.reward_max_length,
                                               local_files_only=cfg.local_files_only,
                                               trust_remote_code=cfg.trust_remote_code)
                question, answer = question_and_answer(texts[i])
                pending["ids"].append(ids[i])
                pending["questions"].append(question)
                pending["answers"].append(answer)
                if len(pending["ids"]) >= cfg.reward_progress_rows:
                    flush()
        if pending["ids"]:
            flush()
    return passing, cached


def filter_rows(cfg: DataConfig, scored: Path, out: Path, cache: RewardCache | None) -> StageStats:
    stats = StageStats("grade", rows_in=count_rows([scored]))
    schema = pa.schema(list(read_schema(scored)) + [("reward", pa.float32())])
    with ParquetSink(out, schema) as sink:
        for batch in iter_batches([scored], cfg.batch_rows):
            drops = text_keep(batch, cfg)
            dropped = np.logical_or.reduce(list(drops.values()))
            for reason, mask in drops.items():
                stats.drop(reason, int(mask.sum()))
            rewards = np.full(batch.num_rows, np.nan, dtype=np.float32)
            if cache is not None:
                found, rewards = cache.lookup(batch.column("id").to_numpy())
                if (~found & ~dropped).any():
                    raise DataError(f"{scored}: rows lack a reward in {cache.directory}; run grade again")
                low = ~dropped & (rewards < cfg.reward_threshold)
                stats.drop("reward_too_low", int(low.sum()))
                dropped |= low
            batch = batch.append_column("reward", pa.array(rewards, pa.float32(), mask=np.isnan(rewards)))
            sink.write(batch.filter(pa.array(~dropped)))
    stats.rows_out = sink.rows
    stats.notes.append(f"reward model: {cfg.reward_model} (keep >= {cfg.reward_threshold})" if cache else
                       "reward model: off (enable with --use_reward_model=true)")
    return stats


def run(cfg: DataConfig) -> StageStats:
    check_shard(cfg.shard_index, cfg.num_shards)
    inputs = stage_parts(cfg.work_dir, "chop", "grade")
    directory, part = stage_dir(cfg.work_dir, "grade"), part_name(cfg.shard_index, cfg.num_shards)
    scored, out = directory / "scored" / f"{part}.parquet", directory / f"{part}.parquet"
    scored_stats = cached_step("grade/score", scored.with_suffix(".manifest.json"), digests(inputs),
                               {"version": VERSION, "shard": [cfg.shard_index, cfg.num_shards]}, [scored],
                               lambda: score(cfg, inputs, scored))
    cache = None
    if cfg.use_reward_model:
        cache = open_reward_cache(cfg, reward_key(cfg))
        passing, cached = score_rewards(cfg, scored, cache)
        print(f"[grade/reward] {passing:,} rows pass the text thresholds; {cached:,} of them were already "
              f"scored in {cache.directory}")
    settings = {"version": VERSION, "min_grade": cfg.min_grade, "max_grade": cfg.max_grade,
                "drop_profane": cfg.drop_profane,
                "reward": cache is not None and {"key": cache.directory.name, "threshold": cfg.reward_threshold}}
    return cached_step("grade/filter", out.with_suffix(".manifest.json"), digests([scored]), settings, [out],
                       lambda: scored_stats.then(filter_rows(cfg, scored, out, cache)))
