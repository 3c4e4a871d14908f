"""Reward model: a one-logit head on the base model, trained so the chosen answer scores above the
rejected one (pairwise loss −log σ(r_chosen − r_rejected), as in InstructGPT / DeepSpeed-Chat step 2).

The result is saved as a plain Hugging Face sequence-classification model (LoRA merged in), with the
prompt type recorded in its config, so :class:`sftkit.reward.RewardModelScorer` (``create_data.py grade
--reward_model``, ``generate.py --score_model``) renders and scores answers exactly as it was trained.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from sftkit import atomic
from sftkit.prompt_format import write_prompt_format
from sftkit.reward import PROMPT_TYPE_KEY
from sftkit.train.modeling import build_reward_model, gathered_parameters, is_peft
from sftkit.train.recipes import Data, PairRecipe, read_pair_data


def pair_rewards(model, batch: dict, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and the rejected answers (float32)."""
    rewards = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    use_cache=False).logits[:, 0].float()
    n = batch["num_pairs"]
    return rewards[:n], rewards[n:]


class RewardModelRecipe(PairRecipe):
    name = "rm"
    metrics = ("accuracy", "margin", "reward_chosen", "reward_rejected")

    def build_model(self, device, dtype, tokenizer):
        return build_reward_model(self.config, device, dtype, tokenizer.pad_token_id)

    def read_data(self, tokenizer, progress: bool) -> Data:
        # No EOS after the answer: the reward is read at the answer's last token, as the scorer reads it.
        return read_pair_data(self.config, tokenizer, progress, add_eos_token=False)

    def loss(self, model, batch, device):
        chosen, rejected = pair_rewards(model, batch, device)
        margin = chosen - rejected
        d = margin.detach()
        return -F.logsigmoid(margin).sum(), {"accuracy": float((d > 0).sum()), "margin": float(d.sum()),
                                             "reward_chosen": float(chosen.detach().sum()),
                                             "reward_rejected": float(rejected.detach().sum())}

    def save_final(self, model, tokenizer, output_dir: Path, save_weights, world, zero3: bool) -> None:
        """The reward model with LoRA merged in, as one loadable directory (the adapter stays in checkpoints)."""
        with gathered_parameters(model, zero3, trainable_only=False):
            if not world.is_main:
                return
            plain = model.merge_and_unload() if is_peft(model) else model
            setattr(plain.config, PROMPT_TYPE_KEY, self.config.fixed_prompt_type)
            plain.config.use_cache = True
            with atomic.replacing_entries(output_dir) as staging:
                plain.save_pretrained(staging, safe_serialization=True)
                write_prompt_format(staging, tokenizer, self.config.fixed_prompt_type)
