"""Direct preference optimisation (Rafailov et al. 2023) on preference pairs.

The policy is the model with its trainable LoRA adapter (a new one, or --lora_weights continued). The
reference is the same weights with the adapter switched off, or, when training continues an SFT
adapter, with a frozen copy of that adapter: never a second model in memory. Reference log-probs are
computed once before training (eval mode, deterministic, so a resumed run recomputes the same ones).

With h = (log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected)):
``sigmoid`` loss is −log σ(β·h); ``ipo`` (Azar et al. 2023) is (h − 1/(2β))².
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from sftkit.errors import FlagError
from sftkit.train import distributed
from sftkit.train.loss import CausalLMLoss
from sftkit.train.modeling import build_causal_lm, reference_model
from sftkit.train.recipes import Data, PairRecipe, read_pair_data
from sftkit.train.recipes.sft import shard


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

    @torch.no_grad()
    def prepare(self, model, data: Data, world, autocast) -> None:
        """Fill in every pair's reference log-probs, each rank computing a share."""
        examples = data.train + data.valid
        mine, real = shard(list(enumerate(examples)), world)
        mine = mine[:real]
        size = self.config.micro_batch_size
        was_training = model.training
        model.eval()
        found = []
        with reference_model(model):
            for start in range(0, len(mine), size):
                chunk = mine[start:start + size]
                batch = self.collate([[ex] for _, ex in chunk], self.pad_token_id)
                with autocast():
                    chosen, rejected = pair_logps(self.lm_loss, model, batch, world.device)
                found += [f"{i}\t{c!r}\t{r!r}" for (i, _), c, r in zip(chunk, chosen.tolist(), rejected.tolist())]
        model.train(was_training)
        for part in distributed.all_gather_strings(found):
            for item in part:
                index, chosen, rejected = item.split("\t")
                examples[int(index)].ref_chosen, examples[int(index)].ref_rejected = float(chosen), float(rejected)

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


