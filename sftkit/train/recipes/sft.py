"""Supervised fine-tuning: next-token cross entropy on the bot answers of conversations."""
from __future__ import annotations

import torch

from sftkit.generation import GenerateConfig, Models, Request
from sftkit.generation import generate_answers as engine_answers
from sftkit.prompts import encode, stop_strings
from sftkit.train import distributed, token_cache
from sftkit.train.batching import collate
from sftkit.train.data import DataError, mix_in_picks
from sftkit.train.loss import CausalLMLoss
from sftkit.train.metrics import compute_metrics
from sftkit.train.modeling import build_causal_lm
from sftkit.train.recipes import Data, Recipe, open_cache, split_off_validation
from sftkit.train.tokenize import IGNORE


def packing_needs_block_mask(model) -> bool:
    """Whether packed rows need an explicit block-diagonal mask to keep examples apart.

    Flash-attention kernels read example boundaries from restarting position_ids (padding-free,
    varlen). transformers 5.23's sdpa and eager paths try to derive a mask from them too, but on
    the CPU packed examples after the first still attend to earlier ones (tests/train/test_batching.py
    shows it), so every other attention implementation gets the explicit mask.
    """
    return not str(getattr(model.config, "_attn_implementation", "")).startswith("flash_attention")


def shard(items: list, world) -> tuple[list, int]:
    """This rank's share and how many of it are real: padded by repetition so every rank runs the
    same number of forwards (ZeRO-3 gathers weights collectively in each one)."""
    per_rank = -(-len(items) // world.size)
    mine = items[world.rank::world.size]
    return mine + items[: per_rank - len(mine)], len(mine)


class SFTRecipe(Recipe):
    name = "sft"
    unit = "token"

    block_mask = False
    mask_dtype = torch.float32
    lm_loss = CausalLMLoss(chunked=False)  # set for the model by build_model
    data_prompt_types: dict | None = None  # usable training rows per prompt type, once read

    def build_model(self, device, dtype, tokenizer):
        model = build_causal_lm(self.config, device, dtype)
        self.block_mask = self.config.pack and packing_needs_block_mask(model)
        # The additive mask must match the attention's activations: float32 where 8/4-bit preparation
        # upcasts the non-quantized layers (the embeddings among them), else the weights' dtype.
        self.mask_dtype = model.get_input_embeddings().weight.dtype
        self.lm_loss = CausalLMLoss.for_model(model)
        return model

    def read_data(self, tokenizer, progress: bool) -> Data:
        """Tokenize once into caches (sftkit/train/token_cache.py), then split and mix over their rows;
        train and validation sets with every count."""
        config = self.config
        sources = token_cache.config_sources(config, "sft", config.add_eos_token)
        path = sources["train"].path
        # Each row keeps its own prompt_type column unless --prompt_type is given; the summary says which won.
        cache = open_cache(config, sources["train"], tokenizer, progress, "tokenize train")
        read_stats = cache.read_stats
        self.data_prompt_types = dict(read_stats.prompt_types)
        stats: dict = {"data_path": path, "rows_read": read_stats.rows, "rows_skipped": read_stats.skipped,
                       "prompt_type": read_stats.prompt_type_summary()}
        train_units, val_cache, val_rows, val_stats, more = split_off_validation(config, cache, sources, tokenizer,
                                                                                 progress, "tokenize valid")
        stats.update(more)
        valid = token_cache.Examples([(val_cache, val_rows)] if val_cache else [])
        train_rows, train_stats = token_cache.select(cache, train_units, config.drop_truncations)
        stats["train"] = train_stats.as_dict()
        parts = [(cache, train_rows)]
        if "mix_in" in sources:
            mix_cache = open_cache(config, sources["mix_in"], tokenizer, progress, "tokenize mix-in")
            mix_rows, mix_stats = token_cache.select(mix_cache, None, config.drop_truncations)
            picks = mix_in_picks(len(train_rows), len(mix_rows), config.data_mix_in_factor, config.seed)
            parts.append((mix_cache, mix_rows[picks]))
            stats["mix_in"] = {"path": config.data_mix_in_path, "rows_skipped": mix_cache.read_stats.skipped,
                               **mix_stats.as_dict(), "rows_added": len(picks)}
        examples = token_cache.Examples(parts)
        stats["valid"] = val_stats.as_dict()
        if not len(examples):
            raise DataError(f"{path}: no training rows left after tokenizing (truncated/dropped/skipped: "
                            f"{train_stats.as_dict()}); raise --cutoff_len or check the prompt_type")
        t = stats["train"]
        skipped = sum(stats["rows_skipped"].values()) + t["skipped_no_answer_in_cutoff"] + t["skipped_render"]
        summary = (f"data: {path}: {read_stats.rows} rows read, {len(examples)} train / {len(valid)} valid "
                   f"examples; truncated {t['truncated']}, dropped {t['dropped_truncations']}, skipped {skipped}"
                   + (f"; mixed in {stats['mix_in']['rows_added']} rows of {config.data_mix_in_path}"
                      if "mix_in" in stats else ""))
        summary += f"\n{read_stats.prompt_type_summary()}"
        if read_stats.summary():
            summary += f"\ndata: {path}: {read_stats.summary()}"
        return Data(examples, valid, stats, summary)

    def trained_prompt_type(self) -> str:
        """--prompt_type, else the one most training rows were written in (their prompt_type column)."""
        counts = self.data_prompt_types
        return self.config.prompt_type or (max(counts, key=counts.get) if counts else super().trained_prompt_type())

    def collate(self, micro_batch, pad_token_id):
        return collate(micro_batch, pad_token_id, block_mask=self.block_mask, mask_dtype=self.mask_dtype)

    def units(self, batch):
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss(self, model, batch, device):
        return self.lm_loss.loss_sum(model, batch, device), {}

    def extra_eval(self, model, tokenizer, valid, world, synced):
        if not self.config.val_metrics or not valid:
            return {}
        predictions, references = generate_answers(model, tokenizer, valid, self.config, world, synced)
        out = {f"eval_{k}": v for k, v in compute_metrics(self.config.val_metrics, predictions, references).items()}
        out["eval_sample"] = {"prompt": valid[0].prompt[-300:], "prediction": predictions[0],
                              "reference": references[0]}
        return out


def generate_answers(model, tokenizer, examples, config, world, synced: bool) -> tuple[list[str], list[str]]:
    """Greedy answers to the validation prompts, through the generation engine (generate.py's own
    stops and batching), each rank answering its share; every rank gets them all."""
    chat = any(ex.prompt_type == "chat" for ex in examples)  # chat templates carry their own special tokens
    settings = GenerateConfig(prompt_type="chat" if chat else examples[0].prompt_type,
                              max_new_tokens=config.val_max_new_tokens, do_sample=False, repetition_penalty=1.0)
    stops = tuple(sorted({stop for ex in examples for stop in stop_strings(ex.prompt_type, tokenizer)}))
    mine, _ = shard(list(enumerate(examples)), world)
    answers: list[str] = []
    for i in range(0, len(mine), config.micro_batch_size):  # the same number of calls on every rank (ZeRO-3)
        chunk = [Request(_last_tokens(tokenizer, ex.prompt, config.cutoff_len, settings.prompt_type), stop=stops)
                 for _, ex in mine[i:i + config.micro_batch_size]]
        answers += [a.text for a in engine_answers(Models.around(model, tokenizer), chunk, settings,
                                                   synced_gpus=synced)]
    gathered = distributed.all_gather_strings([f"{i}\t{a}" for (i, _), a in zip(mine, answers)])
    by_index = {}
    for part in gathered:
        for item in part:
            index, answer = item.split("\t", 1)
            by_index[int(index)] = answer
    return [by_index[i] for i in range(len(examples))], [ex.reference for ex in examples]


def _last_tokens(tokenizer, prompt: str, limit: int, prompt_type: str) -> str:
    """``prompt``, or its last ``limit`` tokens when longer (the end is what the answer follows)."""
    ids = encode(tokenizer, prompt, prompt_type)["input_ids"]
    return prompt if len(ids) <= limit else tokenizer.decode(ids[-limit:])
