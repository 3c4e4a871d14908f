"""Advantages of sampled answers, and the KL coefficient that ties the policy to its reference.

* PPO (InstructGPT, DeepSpeed-Chat, TRL's PPO): per-token rewards (−kl_coef · (log π − log π_ref) at
  every token, the answer's score added at its last token), GAE over the critic's values, then the
  advantages whitened over the whole rollout batch.
* GRPO (Shao et al. 2024; TRL's GRPOTrainer): each answer's score less its group's mean (the other
  answers to the same prompt), divided by the group's standard deviation; one value for every token.

Every function takes one answer's tokens as a 1-D tensor (or the batch as a list of them) and works
in float64, so the advantages are the same whichever process computes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP_STD_EPS = 1e-4  # TRL's: an all-equal group gets advantages of zero, not a division by zero
WHITEN_EPS = 1e-8


def token_rewards(score: float, logps: torch.Tensor, ref_logps: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """PPO's reward of each token: the KL penalty everywhere, plus the answer's score at its end."""
    rewards = -kl_coef * (logps - ref_logps)
    rewards[-1] += score
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over one answer: (advantages, returns).

    The value after the last token is 0 (the answer is over).
    """
    advantages = torch.zeros_like(rewards)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        after = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * after - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages, advantages + values


def whiten(per_answer: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every token's value less the mean over all tokens of all answers, over their standard deviation."""
    flat = torch.cat(per_answer)
    mean, std = flat.mean(), flat.std() if len(flat) > 1 else torch.tensor(0.0, dtype=flat.dtype)
    return [(a - mean) / (std + WHITEN_EPS) for a in per_answer]


def group_advantages(scores: list[float], group_size: int) -> list[float]:
    """GRPO: each score less its group's mean, over the group's (unbiased) standard deviation.

    Groups are ``group_size`` consecutive scores (the answers to one prompt).
    """
    grouped = torch.tensor(scores, dtype=torch.float64).view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / (grouped.std(dim=1, keepdim=True) + GROUP_STD_EPS)).flatten().tolist()


@dataclass
class KLController:
    """The KL coefficient: fixed, or adapted towards ``target`` KL per answer (Ziegler et al. 2019).

    After each rollout batch of ``n`` answers with mean KL ``kl``:
    ``value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon``.
    """

    value: float
    target: float = 0.0
    horizon: int = 10000

    def update(self, kl: float, n: int) -> None:
        if self.target > 0:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * n / self.horizon
