"""GRPO (Shao et al. 2024, DeepSeekMath), with the defaults of TRL's GRPOTrainer where they apply.

Each prompt is answered ``rollouts_per_prompt`` times; an answer's advantage is its score less its
group's mean, over the group's standard deviation (TRL's ``scale_rewards="group"``), the same for
every token; no critic. Per token the loss is the clipped surrogate plus kl_coef times the k3
estimator of KL(π ‖ π_ref), exp(r) − r − 1 with r = log π_ref − log π (Schulman's, as the GRPO paper
and TRL use), summed over the step's answer tokens and divided by their number (TRL's default
``loss_type="dapo"``: no bias towards short or long answers). Unlike TRL, whose default ``beta`` is 0,
the KL term is on by default (--kl_coef=0.05; the GRPO paper used 0.04).
"""
from __future__ import annotations

import torch

from sftkit.train.advantages import group_advantages
from sftkit.train.recipes.online import OnlineRecipe, Rollout, clipped_policy_loss, forward_answers


def k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token estimator of KL(π ‖ π_ref) that is never negative: exp(r) − r − 1, r = log π_ref − log π."""
    r = ref_logps - logps
    return torch.exp(r) - r - 1


class GRPORecipe(OnlineRecipe):
    name = "grpo"
    metrics = ("pg_loss", "kl_k3", "clipfrac", "entropy", "approx_kl")

    def fill_advantages(self, rollouts: list[Rollout], kl_coef: float) -> None:
        advantages = group_advantages([r.score for r in rollouts], self.config.rollouts_per_prompt)
        for r, advantage in zip(rollouts, advantages):
            r.advantages = [advantage] * len(r.ids)

    def loss(self, model, batch, device):
        c = self.config
        logps, entropy, _ = forward_answers(model, batch, device, c.temperature)
        mask = batch["answer_mask"].to(device)
        old_logps = self.old_logps(logps, batch, device)
        policy, clipped = clipped_policy_loss(logps, old_logps, batch["advantages"].to(device), c.cliprange)
        kl = k3(logps, batch["ref_logps"].to(device))
        total = ((policy + self.plan.experience.kl_coef * kl) * mask).sum()
        with torch.no_grad():
            metrics = {"pg_loss": policy * mask, "kl_k3": kl * mask, "clipfrac": clipped * mask,
                       "entropy": entropy * mask, "approx_kl": 0.5 * (logps - old_logps) ** 2 * mask}
        return total, {k: float(v.sum()) for k, v in metrics.items()}
