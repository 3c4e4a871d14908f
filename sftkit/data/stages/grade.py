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
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sftkit import atomic
from sftkit.data import DataError
from sftkit.data.algorithms.readability import ensure_cmudict, flesch_kincaid_grades
from sftkit.data.algorithms.scorers import plain_text, profane_flags
from sftkit.data.algorithms import toolrows
from sftkit.data.config import DataConfig
from sftkit.data.run.contract import DriverPhase, Shard, ShardInput, ShardPhase, Stage, Step, shard_input
from sftkit.data.run.filtering import Verdict, filter_rows
from sftkit.data.run.manifest import sha256_file
from sftkit.data.run.parallel import ordered_map, resolve_workers
from sftkit.data.run.parquet_io import ParquetSink, count_rows, iter_batches, read_schema
from sftkit.data.run.stats import StageStats
from sftkit.data.run.workdir import stage_dir
from sftkit.prompts import BOT, split_turns

VERSION = 3  # 3: tool conversations


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


def score(cfg: DataConfig, source: ShardInput, out: Path) -> StageStats:
    stats = StageStats("grade")
    schema = read_schema(source.paths[0])
    schema = pa.schema(list(schema) + [("fk_grade", pa.float32()), ("profane", pa.bool_())])
    bound = source.row_bound()
    workers = min(resolve_workers(cfg.workers), max(1, math.ceil(bound / cfg.batch_rows)))
    batches = []

    def texts():
        for batch in source.batches(cfg.batch_rows):
            stats.rows_in += batch.num_rows
            batches.append(batch)
            yield batch.column("text").to_pylist()

    with ParquetSink(out, schema) as sink, tqdm(total=bound, desc="grade", unit=" rows", leave=False) as bar:
        for grades, profane in ordered_map(text_scores, texts(), workers, initializer=ensure_cmudict):
            batch = batches.pop(0)
            sink.write(batch.append_column("fk_grade", pa.array(grades)).append_column("profane", pa.array(profane)))
            bar.update(batch.num_rows)
    stats.rows_out = sink.rows
    return stats


def text_drops(batch: pa.RecordBatch, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Masks of the rows each text threshold drops, in the order their reasons are counted."""
    return _text_verdict(batch, cfg)[0]


def _text_verdict(batch: pa.RecordBatch, cfg: DataConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:func:`text_drops`, and the rows the reward model scores: those it keeps that have answer text. A
    tool conversation whose answers are all calls has none to grade (sftkit.data.algorithms.toolrows)."""
    grade = batch.column("fk_grade").to_numpy()
    judged = ~toolrows.answerless(batch)
    drops = {"grade_too_low": judged & (grade < cfg.min_grade), "grade_too_high": judged & (grade > cfg.max_grade),
             "profane": batch.column("profane").to_numpy(zero_copy_only=False) & cfg.drop_profane}
    return drops, judged & ~np.logical_or.reduce(list(drops.values()))


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


def reward_units(cfg: DataConfig, scored: list[Path], cache: RewardCache, counts: dict) -> Iterator[tuple]:
    """Units of ``reward_progress_rows`` rows (ids, questions, answers) that pass the text thresholds and
    have no reward in the cache yet; ``counts`` gets the passing and already-cached totals."""
    pending: dict[str, list] = {"ids": [], "questions": [], "answers": []}
    for batch in iter_batches(scored, cfg.batch_rows):
        _, passes = _text_verdict(batch, cfg)
        ids = batch.column("id").to_numpy()
        found, _ = cache.lookup(ids)
        counts["passing"] += int(passes.sum())
        counts["cached"] += int((passes & found).sum())
        counts["skipped"] += batch.num_rows - int((passes & ~found).sum())
        texts = batch.column("text").to_pylist()
        for i in np.flatnonzero(passes & ~found):
            question, answer = question_and_answer(texts[i])
            pending["ids"].append(ids[i])
            pending["questions"].append(question)
            pending["answers"].append(answer)
            if len(pending["ids"]) >= cfg.reward_progress_rows:
                yield np.array(pending["ids"], dtype=np.uint64), list(pending["questions"]), list(pending["answers"])
                for values in pending.values():
                    values.clear()
    if pending["ids"]:
        yield np.array(pending["ids"], dtype=np.uint64), pending["questions"], pending["answers"]


def score_rewards(cfg: DataConfig, scored: list[Path], cache: RewardCache, executor) -> tuple[int, int]:
    """Reward-score every row that passes the text thresholds and is not in the cache yet, each finished
    unit written at once (a killed run resumes there). Returns (rows passing, how many were cached)."""
    counts = {"passing": 0, "cached": 0, "skipped": 0}
    with tqdm(total=count_rows(scored), desc="reward", unit=" rows", leave=False) as bar:
        for ids, rewards in executor.score_rewards(cfg, reward_units(cfg, scored, cache, counts)):
            cache.add(ids, rewards)
            bar.update(len(ids) + counts["skipped"])
            counts["skipped"] = 0
    return counts["passing"], counts["cached"]


def scored_path(cfg: DataConfig, shard: Shard) -> Path:
    return stage_dir(cfg.work_dir, "grade") / "scored" / f"{shard.part}.parquet"


def reward_phase(cfg: DataConfig, shards: list[Shard], executor) -> None:
    if not cfg.use_reward_model:
        return
    cache = open_reward_cache(cfg, reward_key(cfg))
    passing, cached = score_rewards(cfg, [scored_path(cfg, shard) for shard in shards], cache, executor)
    print(f"[grade/reward] {passing:,} rows pass the text thresholds; {cached:,} of them were already "
          f"scored in {cache.directory}", flush=True)


def judge(batch: pa.RecordBatch, cfg: DataConfig, cache: RewardCache | None, scored: Path) -> Verdict:
    """The text thresholds, then (with a reward cache) the reward threshold; every row gets its ``reward``
    (null when the reward model is off)."""
    drops, rewardable = _text_verdict(batch, cfg)
    rewards = np.full(batch.num_rows, np.nan, dtype=np.float32)
    if cache is not None:  # a row with no answer text has no reward, and passes it
        found, rewards = cache.lookup(batch.column("id").to_numpy())
        if (~found & rewardable).any():
            raise DataError(f"{scored}: rows lack a reward in {cache.directory}; run grade again")
        drops["reward_too_low"] = rewards < cfg.reward_threshold
    return Verdict(drops, {"reward": pa.array(rewards, pa.float32(), mask=np.isnan(rewards))})


def filter_scored(cfg: DataConfig, scored: Path, out: Path, cache: RewardCache | None) -> StageStats:
    schema = pa.schema(list(read_schema(scored)) + [("reward", pa.float32())])
    stats = filter_rows("grade", iter_batches([scored], cfg.batch_rows), out, schema,
                        lambda batch: judge(batch, cfg, cache, scored))
    stats.notes.append(f"reward model: {cfg.reward_model} (keep >= {cfg.reward_threshold})" if cache else
                       "reward model: off (enable with --use_reward_model=true)")
    return stats


def score_steps(cfg: DataConfig, shard: Shard) -> list[Step]:
    source, scored = shard_input(cfg, "chop", "grade", shard), scored_path(cfg, shard)
    return [Step("grade/score", scored.with_suffix(".manifest.json"), source.paths, [scored], (),
                 lambda: score(cfg, source, scored))]


def filter_steps(cfg: DataConfig, shard: Shard) -> list[Step]:
    scored = scored_path(cfg, shard)
    out = stage_dir(cfg.work_dir, "grade") / f"{shard.part}.parquet"
    settings, derived = ("min_grade", "max_grade", "drop_profane", "use_reward_model"), {}
    if cfg.use_reward_model:
        settings += ("reward_threshold",)
        derived["reward_key"] = reward_key(cfg)

    def compute():
        cache = open_reward_cache(cfg, derived["reward_key"]) if cfg.use_reward_model else None
        return filter_scored(cfg, scored, out, cache)

    return [Step("grade/filter", out.with_suffix(".manifest.json"), [scored], [out], settings, compute, derived)]


STAGE = Stage(
    "grade", VERSION, [ShardPhase(score_steps), DriverPhase(reward_phase), ShardPhase(filter_steps)],
    num_shards=lambda cfg: cfg.num_shards,
    describe=lambda cfg, shard: f"{stage_dir(cfg.work_dir, 'chop')}, rows with id % {shard.count} == {shard.index}",
    temp_dirs=lambda cfg: [stage_dir(cfg.work_dir, "grade"), stage_dir(cfg.work_dir, "grade") / "scored",
                           *(stage_dir(cfg.work_dir, "grade") / "reward_cache").glob("*")])

