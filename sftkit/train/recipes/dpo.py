"""Direct preference optimisation (Rafailov et al. 2023) on preference pairs.

The policy is the model with its trainable LoRA adapter (a new one, or --lora_weights continued). The
reference is the same weights with the adapter switched off, or, when training continues an SFT
adapter, with a frozen copy of that adapter: never a second model in memory. Reference log-probs are
computed once before training (eval mode, deterministic) and stored beside the tokenized cache,
keyed by the pairs, the reference weights' content, the precision and the batches they were computed
in, so a rerun or a resume reads the very same values back instead of another pass over the data.

With h = (log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected)):
``sigmoid`` loss is −log σ(β·h); ``ipo`` (Azar et al. 2023) is (h − 1/(2β))².
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sftkit.errors import FlagError
from sftkit.models import resolve_base_model
from sftkit.train import distributed, token_cache
from sftkit.train.loss import CausalLMLoss
from sftkit.train.modeling import build_causal_lm, reference_model
from sftkit.train.recipes import Data, PairRecipe, read_pair_data
from sftkit.train.run_record import model_fingerprint


def pair_logps(lm_loss: CausalLMLoss, model, batch: dict, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    logps = lm_loss.answer_logps(model, batch, device)
    n = batch["num_pairs"]
    return logps[:n], logps[n:]


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards β·(log π − log π_ref) of both answers."""
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    losses = -F.logsigmoid(beta * h) if kind == "sigmoid" else (h - 1 / (2 * beta)) ** 2
    return losses, beta * (chosen - ref_chosen).detach(), beta * (rejected - ref_rejected).detach()


class DPORecipe(PairRecipe):
    name = "dpo"
    metrics = ("rewards_chosen", "rewards_rejected", "margin", "accuracy", "logps_chosen", "logps_rejected")
    lm_loss = CausalLMLoss(chunked=False)  # set for the model by build_model

    def build_model(self, device, dtype, tokenizer):
        if self.config.full_finetune:
            raise FlagError("--stage=dpo trains a LoRA adapter (its reference is the model with the adapter "
                            "switched off); set --lora_r above 0 and --finetune_method=lora")
        model = build_causal_lm(self.config, device, dtype, reference_adapter=bool(self.config.lora_weights))
        self.lm_loss = CausalLMLoss.for_model(model)
        return model

    def read_data(self, tokenizer, progress: bool) -> Data:
        return read_pair_data(self.config, tokenizer, progress, add_eos_token=self.config.add_eos_token)

    def reference_path(self, data: Data, world) -> Path:
        """Where the reference log-probs of these pairs are kept, named by everything that changes them:
        the pairs (their caches and the rows selected), the reference weights' content (base model
        and the continued adapter), the precision, and the batches they are computed in."""
        c = self.config
        described = {
            "pairs": [[str(s.cache.path) if s.cache else "", hashlib.sha256(s.first.tobytes()).hexdigest()]
                      for s in (data.train, data.valid)],
            "base_model": model_fingerprint(resolve_base_model(c.base_model)),
            "adapter": model_fingerprint(c.lora_weights) if c.lora_weights else "",
            "precision": [c.bf16, c.fp16, c.train_8bit, c.train_4bit], "micro_batch_size": c.micro_batch_size,
            "processes": world.size, "device": world.device.split(":")[0]}
        key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]
        return Path(c.tokenized_cache_dir or token_cache.default_root()) / f"reference_logps-{key}.arrow"

    @torch.no_grad()
    def prepare(self, model, data: Data, world, autocast) -> None:
        """Fill in every pair's reference log-probs (train, then validation): read back when a run with
        the same pairs and reference computed them, else each rank computes a share and the main
        process stores them beside the tokenized cache."""
        sets = (data.train, data.valid)
        total = sum(len(s) for s in sets)
        stored = self.reference_path(data, world)
        if stored.is_file():
            columns = token_cache.read_columns(stored)
            for owner, part in zip(sets, np.split(np.arange(total), [len(sets[0])])):
                owner.ref_chosen[:], owner.ref_rejected[:] = columns["chosen"][part], columns["rejected"][part]
            if world.is_main:
                print(f"reference log-probs reused: {stored}", flush=True)
            return

        def pair(index: int):
            return (sets[0], index) if index < len(sets[0]) else (sets[1], index - len(sets[0]))

        mine = range(world.rank, total, world.size)
        size = self.config.micro_batch_size
        was_training = model.training
        model.eval()
        found = []
        with reference_model(model):
            for start in range(0, len(mine), size):
                chunk = mine[start:start + size]
                batch = self.collate([[owner[i]] for owner, i in map(pair, chunk)], self.pad_token_id)
                with autocast():
                    chosen, rejected = pair_logps(self.lm_loss, model, batch, world.device)
                found += [f"{i}\t{c!r}\t{r!r}" for i, c, r in zip(chunk, chosen.tolist(), rejected.tolist())]
        model.train(was_training)
        for part in distributed.all_gather_strings(found):
            for item in part:
                index, chosen, rejected = item.split("\t")
                owner, i = pair(int(index))
                owner.ref_chosen[i], owner.ref_rejected[i] = float(chosen), float(rejected)
        if world.is_main:
            token_cache.write_columns(stored, {"chosen": np.concatenate([s.ref_chosen for s in sets]),
                                               "rejected": np.concatenate([s.ref_rejected for s in sets])})

    def loss(self, model, batch, device):
        chosen, rejected = pair_logps(self.lm_loss, model, batch, device)
        losses, reward_chosen, reward_rejected = dpo_loss(
            chosen, rejected, batch["ref_chosen"].to(device), batch["ref_rejected"].to(device),
            self.config.beta, self.config.dpo_loss)
        margin = reward_chosen - reward_rejected
        return losses.sum(), {"rewards_chosen": float(reward_chosen.sum()),
                              "rewards_rejected": float(reward_rejected.sum()),
                              "margin": float(margin.sum()), "accuracy": float((margin > 0).sum()),
                              "logps_chosen": float(chosen.detach().sum()),
                              "logps_rejected": float(rejected.detach().sum())}


