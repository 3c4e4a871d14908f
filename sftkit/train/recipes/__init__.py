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
from dataclasses import dataclass, field
from pathlib import Path

from sftkit import atomic
from sftkit.errors import DataError
from sftkit.prompt_format import write_prompt_format
from sftkit.prompts import PromptError, get_prompt_type
from sftkit.train.batching import collate_pairs
from sftkit.train.config import TrainConfig
from sftkit.train.data import split_validation
from sftkit.train.modeling import is_peft
from sftkit.train.preference import load_pairs
from sftkit.train.tokenize import tokenize_pairs


@dataclass
class Data:
    """What a recipe trains and validates on, with every count for metrics.json."""

    train: list
    valid: list
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


def read_pair_data(config: TrainConfig, tokenizer, progress: bool, *, add_eos_token: bool) -> Data:
    """Preference pairs for RM and DPO: read, split off validation, tokenize."""
    if get_prompt_type(config.fixed_prompt_type).name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise PromptError("--prompt_type=chat needs a tokenizer with a chat template; this one has none")
    path = config.resolved_data_path()
    pairs, read_stats = load_pairs(path, config.data_col_dict)
    stats: dict = {"data_path": path, "rows_read": read_stats.rows, "rows_skipped": read_stats.skipped}
    if config.valid_path:
        val_pairs, val_read = load_pairs(config.valid_path, config.data_col_dict)
        stats["valid_rows_skipped"] = val_read.skipped
    elif config.val_set_size > 0:
        pairs, val_pairs = split_validation(pairs, config.val_set_size, config.seed)
    else:
        val_pairs = []
    kw = dict(cutoff_len=config.cutoff_len, add_eos_token=add_eos_token, progress=progress)
    train = tokenize_pairs(pairs, tokenizer, config.fixed_prompt_type, drop_truncations=config.drop_truncations,
                           desc="tokenize train pairs", **kw)
    val = tokenize_pairs(val_pairs, tokenizer, config.fixed_prompt_type, desc="tokenize valid pairs", **kw)
    stats["train"], stats["valid"] = train.stats.as_dict(), val.stats.as_dict()
    t = stats["train"]
    if not train.examples:
        raise DataError(f"{path}: no training pairs left after tokenizing {t['rows']}: "
                        f"{t['skipped_identical_after_truncation']} became identical when cut at "
                        f"--cutoff_len={config.cutoff_len}, {t['skipped_no_answer_in_cutoff']} had no answer within it, "
                        f"{t['dropped_truncations']} were dropped as too long, {t['skipped_render']} could not be "
                        f"rendered; raise --cutoff_len or check the prompt_type")
    skipped = (sum(read_stats.skipped.values()) + t["skipped_no_answer_in_cutoff"] + t["skipped_render"]
               + t["skipped_identical_after_truncation"])
    summary = (f"data: {path}: {read_stats.rows} rows read, {len(train.examples)} train / {len(val.examples)} "
               f"valid pairs; truncated {t['truncated']}, dropped {t['dropped_truncations']}, skipped {skipped} "
               f"(identical after truncation {t['skipped_identical_after_truncation']})")
    if read_stats.summary():
        summary += f"\ndata: {path}: {read_stats.summary()}"
    return Data(train.examples, val.examples, stats, summary)


class PairRecipe(Recipe):
    """The objectives over (chosen, rejected) pairs (reward model, DPO): pairs batched together, counted in pairs."""

    unit = "pair"

    def collate(self, micro_batch, pad_token_id):
        return collate_pairs(micro_batch, pad_token_id)

    def units(self, batch):
        return batch["num_pairs"]
