"""Training objectives. The step loop (sftkit/train/loop.py) is written once; each objective is a
recipe saying how to build its model, read its data, batch it, compute a micro-batch's loss and save
the result:

* ``sft``: next-token loss on answers (sft.py);
* ``rm``: a reward model from preference pairs, pairwise loss −log σ(r_chosen − r_rejected) (rm.py);
* ``dpo``: direct preference optimisation against a reference model (dpo.py);
* ``ppo``, ``grpo``: online RLHF: the model's own answers, scored by a reward, with a KL penalty
  to a reference model (online.py, ppo.py, grpo.py). They make their rows as they go: the loop
  steps through their :class:`~sftkit.train.recipes.online.RolloutPlan` instead of its own Plan.

This module holds what they share (``Recipe``, ``PairRecipe``, ``Data``); ``registry.py`` names them
by ``--stage``.

A recipe's ``loss`` returns the *sum* over a micro-batch of its per-unit losses (tokens for SFT,
pairs for RM/DPO) and the sums of the metrics it reports; the loop divides by the global number of
units in the step, so the gradient is the same whatever the split over micro-batches and processes.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sftkit import atomic
from sftkit.errors import DataError
from sftkit.prompt_format import write_prompt_format
from sftkit.prompts import PromptError, get_prompt_type
from sftkit.train import distributed, token_cache
from sftkit.train.batching import collate_pairs
from sftkit.train.config import TrainConfig
from sftkit.train.data import validation_indices
from sftkit.train.modeling import is_peft
from sftkit.train.tokenize import TokenizeStats


@dataclass
class Data:
    """What a recipe trains and validates on, with every count for metrics.json."""

    train: object  # a tokenized set (sftkit/train/batching.py): a token_cache view, or a list
    valid: object
    stats: dict = field(default_factory=dict)
    summary: str = ""  # one log line


class Recipe:
    name = ""
    online = False  # True: rows are made during training (rollout_plan), not read before it
    unit = "token"  # what the loss is a mean over
    metrics: tuple[str, ...] = ()  # per-unit means logged besides the loss
    pad_token_id = 0  # set by the loop once the tokenizer is loaded

    def __init__(self, config: TrainConfig):
        self.config = config

    def build_model(self, device: str, dtype, tokenizer):
        raise NotImplementedError

    def read_data(self, tokenizer, progress: bool) -> Data:
        raise NotImplementedError

    def prepare(self, model, data: Data, world, autocast) -> None:
        """Work needed once before training (DPO's reference log-probs)."""

    def collate(self, micro_batch: list, pad_token_id: int) -> dict:
        raise NotImplementedError

    def units(self, batch: dict) -> int:
        raise NotImplementedError

    def loss(self, model, batch: dict, device: str):
        """(sum of the per-unit losses as a tensor, {metric: sum over units})."""
        raise NotImplementedError

    def extra_eval(self, model, tokenizer, valid: list, world, synced: bool) -> dict:
        return {}

    def window_metrics(self, window) -> dict:
        """What the recipe measured itself over the steps of a log line (online recipes: their rollouts)."""
        return {}

    def save_state(self, folder: Path, world, zero3: bool) -> None:
        """Recipe state a checkpoint needs for an exact resume, besides weights, optimizer and RNG."""

    def load_state(self, folder: Path, world) -> None:
        """Restore what :meth:`save_state` wrote."""

    def trained_prompt_type(self) -> str:
        """The prompt type the saved model's chat template renders."""
        return self.config.fixed_prompt_type

    def save_final(self, model, tokenizer, output_dir: Path, save_weights, world, zero3: bool) -> None:
        """Weights (adapter, or the whole model), tokenizer with the chat template and stop tokens
        (sftkit/prompt_format.py) at the top of output_dir, swapped in atomically."""
        with atomic.replacing_entries(output_dir) if world.is_main else contextlib.nullcontext() as staging:
            save_weights(staging)  # collective under ZeRO-3; only the main process writes
            if world.is_main:
                write_prompt_format(staging, tokenizer, self.trained_prompt_type(),
                                    generation_config=None if is_peft(model) else model.generation_config)


def open_cache(config: TrainConfig, source: token_cache.Source, tokenizer, progress: bool,
               desc: str) -> token_cache.TokenCache:
    """``source``'s tokenized cache, built once per node: local rank 0 builds, the other ranks wait on
    its lock (every rank prints what it did, the main one the progress bar)."""
    rank, size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    prefix = f"[rank {rank}] " if size > 1 else ""
    return token_cache.open_source(source, tokenizer, config.tokenized_cache_dir, workers=config.tokenize_workers,
                                   progress=progress, desc=desc, local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                                   barrier=distributed.barrier, say=lambda message: tqdm.write(prefix + message))


def split_off_validation(config: TrainConfig, cache: token_cache.TokenCache, sources: dict, tokenizer,
                         progress: bool, desc: str) -> tuple:
    """(the training units of ``cache``: a mask, or None for all; the validation cache, or None; its
    rows; their counts; what metrics.json adds): ``--valid_path``'s own cache, else ``--val_set_size``
    units of ``cache`` held out by ``--seed``, else none. Validation rows are cut, never dropped."""
    if "valid" in sources:
        valid = open_cache(config, sources["valid"], tokenizer, progress, desc)
        return (None, valid, *token_cache.select(valid, None, False),
                {"valid_rows_skipped": valid.read_stats.skipped})
    if config.val_set_size > 0:
        train_units = np.ones(len(cache.status), dtype=bool)
        train_units[validation_indices(len(cache.status), config.val_set_size, config.seed)] = False
        return (train_units, cache, *token_cache.select(cache, ~train_units, False), {})
    return None, None, np.zeros(0, dtype=np.int64), TokenizeStats(), {}


def read_pair_data(config: TrainConfig, tokenizer, progress: bool, *, add_eos_token: bool) -> Data:
    """Preference pairs for RM and DPO: tokenized once into a cache, the validation pairs split off."""
    if get_prompt_type(config.fixed_prompt_type).name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise PromptError("--prompt_type=chat needs a tokenizer with a chat template; this one has none")
    sources = token_cache.config_sources(config, "pairs", add_eos_token)
    path = sources["train"].path
    cache = open_cache(config, sources["train"], tokenizer, progress, "tokenize train pairs")
    read_stats = cache.read_stats
    stats: dict = {"data_path": path, "rows_read": read_stats.rows, "rows_skipped": read_stats.skipped}
    train_units, val_cache, val_rows, val_stats, more = split_off_validation(config, cache, sources, tokenizer,
                                                                             progress, "tokenize valid pairs")
    stats.update(more)
    train_rows, train_stats = token_cache.select(cache, train_units, config.drop_truncations)
    train = token_cache.Pairs(cache, token_cache.pair_firsts(train_rows))
    valid = token_cache.Pairs(val_cache, token_cache.pair_firsts(val_rows)) if val_cache else token_cache.Pairs()
    stats["train"], stats["valid"] = train_stats.as_dict(), val_stats.as_dict()
    t = stats["train"]
    if not len(train):
        raise DataError(f"{path}: no training pairs left after tokenizing {t['rows']}: "
                        f"{t['skipped_identical_after_truncation']} became identical when cut at "
                        f"--cutoff_len={config.cutoff_len}, {t['skipped_no_answer_in_cutoff']} had no answer within it, "
                        f"{t['dropped_truncations']} were dropped as too long, {t['skipped_render']} could not be "
                        f"rendered; raise --cutoff_len or check the prompt_type")
    skipped = (sum(read_stats.skipped.values()) + t["skipped_no_answer_in_cutoff"] + t["skipped_render"]
               + t["skipped_identical_after_truncation"])
    summary = (f"data: {path}: {read_stats.rows} rows read, {len(train)} train / {len(valid)} "
               f"valid pairs; truncated {t['truncated']}, dropped {t['dropped_truncations']}, skipped {skipped} "
               f"(identical after truncation {t['skipped_identical_after_truncation']})")
    if read_stats.summary():
        summary += f"\ndata: {path}: {read_stats.summary()}"
    return Data(train, valid, stats, summary)


class PairRecipe(Recipe):
    """The objectives over (chosen, rejected) pairs (reward model, DPO): pairs batched together, counted in pairs."""

    unit = "pair"

    def collate(self, micro_batch, pad_token_id):
        return collate_pairs(micro_batch, pad_token_id)

    def units(self, batch):
        return batch["num_pairs"]
