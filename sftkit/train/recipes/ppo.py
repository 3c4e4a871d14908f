"""PPO (Schulman et al. 2017) as InstructGPT and DeepSpeed-Chat apply it to language models.

Per token: the reward is the KL penalty −kl_coef · (log π − log π_ref), plus the answer's score at its
last token; GAE over the critic's values gives advantages (whitened over the rollout batch) and
returns. The loss is the clipped surrogate plus vf_coef times the clipped value loss.

**The critic** is a value head (one linear layer) on the actor's last hidden state, trained with the
actor's adapter, not a second model (DeepSpeed-Chat's critic is a copy of the reward model). On the
CPU and on one GPU that saves a whole model's weights, activations and forward/backward per step; the
price is a shared body, which vf_coef keeps from pulling the policy far (TRL's value-head PPO made the
same choice). Being a submodule of the trained model, the head is wrapped by DDP/DeepSpeed, clipped,
stepped and checkpointed with the adapter; the final one is saved in ``critic/``.
"""
from __future__ import annotations

import torch

from sftkit.train.advantages import gae, token_rewards, whiten
from sftkit.train.recipes.online import OnlineRecipe, Rollout, clipped_policy_loss, forward_answers


class PPORecipe(OnlineRecipe):
    name = "ppo"
    metrics = ("pg_loss", "vf_loss", "clipfrac", "vf_clipfrac", "entropy", "approx_kl")

    def build_model(self, device, dtype, tokenizer):
        model = super().build_model(device, dtype, tokenizer)
        width = model.get_input_embeddings().embedding_dim
        self.value_head = torch.nn.Linear(width, 1, device=device, dtype=torch.float32)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        model.value_head = self.value_head  # a submodule: trained, wrapped and checksummed with the adapter
        return model

    def fill_advantages(self, rollouts: list[Rollout], kl_coef: float) -> None:
        c = self.config
        found = []
        for r in rollouts:
            old, ref, values = (torch.tensor(x, dtype=torch.float64) for x in (r.old_logps, r.ref_logps, r.values))
            found.append(gae(token_rewards(r.score, old, ref, kl_coef), values, c.gamma, c.lam))
        for r, advantages, (_, returns) in zip(rollouts, whiten([a for a, _ in found]), found):
            r.advantages, r.returns = advantages.tolist(), returns.tolist()

    def loss(self, model, batch, device):
        c = self.config
        logps, entropy, states = forward_answers(model, batch, device, c.temperature, hidden=True)
        values = self.value_head(states.float()).squeeze(-1)
        mask = batch["answer_mask"].to(device)
        old_logps, advantages = self.old_logps(logps, batch, device), batch["advantages"].to(device)
        old_values, returns = batch["values"].to(device), batch["returns"].to(device)
        policy, clipped = clipped_policy_loss(logps, old_logps, advantages, c.cliprange)
        values_clipped = old_values + (values - old_values).clamp(-c.cliprange_value, c.cliprange_value)
        value_losses = torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2)
        value = 0.5 * value_losses
        total = ((policy + c.vf_coef * value) * mask).sum()
        with torch.no_grad():
            metrics = {"pg_loss": policy * mask, "vf_loss": value * mask, "clipfrac": clipped * mask,
                       "vf_clipfrac": ((values_clipped - returns) ** 2 > (values - returns) ** 2).float() * mask,
                       "entropy": entropy * mask, "approx_kl": 0.5 * (logps - old_logps) ** 2 * mask}
        return total, {k: float(v.sum()) for k, v in metrics.items()}
