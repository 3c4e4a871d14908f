"""Online RLHF over the one step loop: the policy answers prompts, the answers are scored, the policy
learns from them. What PPO and GRPO share lives here; ppo.py and grpo.py hold their advantages and losses.

**Steps.** One loop step is one optimizer update over ``batch_size`` answers, exactly like an SFT step
over ``batch_size`` rows, so accumulation, DDP/ZeRO, clipping, the schedule, checkpoints and logging
are the loop's own. A *rollout batch* holds ``batch_size x num_mini_batches`` answers,
``rollouts_per_prompt`` to each prompt. It is used for ``ppo_epochs`` passes, each shuffled and cut
into ``num_mini_batches`` mini-batches, one step each: new rollouts come every
``ppo_epochs x num_mini_batches`` steps (:class:`RolloutPlan`). Counting steps as updates keeps the
learning-rate schedule, ``--max_steps`` and ``--save_steps`` meaning what they mean for SFT.

**A rollout** (:meth:`OnlineRecipe.collect`, no gradients, eval mode): each process samples its
share of the prompts through the generation engine (sftkit/train/rollouts.py) on the weights being
trained, scores the answers (sftkit/train/rewards.py), and takes their log-probs under the policy and
under the reference (the adapter switched off, or the frozen --lora_weights adapter, as DPO does); PPO
adds its critic's values. Every process then gathers the whole batch and computes the advantages
(sftkit/train/advantages.py), so the micro-batches of each step are cut from the same batch on every
process, as the loop's plan cuts rows.

**Exact resume.** The rollout batch, with its scores, log-probs, values and advantages, is saved in
every checkpoint (``rollouts.safetensors``), with the KL coefficient; each generate call is seeded by
(seed, rollout, chunk), so rollouts after a resume, and in one process or several, are the same.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sftkit import atomic
from sftkit.errors import DataError, FlagError
from sftkit.train import distributed
from sftkit.train.advantages import KLController
from sftkit.train.config import TrainConfig
from sftkit.train.modeling import build_causal_lm, gathered_parameters, reference_model
from sftkit.train.recipes import Data, Recipe
from sftkit.train.recipes.sft import shard
from sftkit.train.rewards import Rewards
from sftkit.train.rollouts import RolloutPrompt, read_prompts, sample

ROLLOUTS_FILE = "rollouts.safetensors"
TOKEN_FIELDS = ("old_logps", "ref_logps", "values", "advantages", "returns")


@dataclass
class Rollout:
    """One sampled answer and everything its updates need (per-token lists align with ``ids``)."""

    group: int  # the prompt's place in its rollout batch (GRPO's group)
    sample: int  # which of the prompt's answers
    prompt_ids: list[int]
    ids: list[int]  # the answer as generated, its stop string or EOS included
    stopped: bool
    score: float  # the total reward
    parts: dict[str, float] = field(default_factory=dict)  # each reward source's value
    old_logps: list[float] = field(default_factory=list)  # the policy's at rollout time
    ref_logps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # PPO's critic at rollout time
    advantages: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)  # PPO's value targets

    @property
    def kl(self) -> float:
        """log π − log π_ref summed over the answer: the estimate of KL(π ‖ π_ref) this sample gives."""
        return sum(o - r for o, r in zip(self.old_logps, self.ref_logps))


@dataclass
class Experience:
    """One rollout batch: every process's answers, in (prompt, sample) order, with their statistics."""

    phase: int
    rollouts: list[Rollout]
    stats: dict
    kl_coef: float  # the coefficient these rollouts were scored and are trained with


# ---------------------------------------------------------------- batches and forwards
def collate_rollouts(rollouts: list[Rollout], pad_token_id: int) -> dict:
    """Prompts left-padded and answers right-padded, so every answer starts in the same column.

    Position ids count real tokens only, as ``generate`` counted them for the left-padded prompts.
    """
    width_p = max(len(r.prompt_ids) for r in rollouts)
    width_a = max(len(r.ids) for r in rollouts)
    input_ids = torch.full((len(rollouts), width_p + width_a), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, r in enumerate(rollouts):
        p, a = len(r.prompt_ids), len(r.ids)
        input_ids[row, width_p - p:width_p] = torch.tensor(r.prompt_ids)
        input_ids[row, width_p:width_p + a] = torch.tensor(r.ids)
        mask[row, width_p - p:width_p + a] = 1
    out = {"input_ids": input_ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0),
           "answer_ids": input_ids[:, width_p:], "answer_mask": mask[:, width_p:].float(),
           "num_tokens": int(mask.sum()), "num_answer_tokens": int(mask[:, width_p:].sum())}
    for name in TOKEN_FIELDS:
        if all(getattr(r, name) for r in rollouts):
            values = torch.zeros(len(rollouts), width_a)
            for row, r in enumerate(rollouts):
                values[row, :len(r.ids)] = torch.tensor(getattr(r, name))
            out[name] = values
    return out


def forward_answers(model, batch: dict, device: str, temperature: float, *, hidden: bool = False):
    """One forward: each answer token's log-prob at ``temperature`` (as it was sampled), the policy's
    entropy there (no gradient), and, with ``hidden``, the last hidden states that predict them."""
    width = batch["answer_ids"].shape[1]
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                position_ids=batch["position_ids"].to(device), use_cache=False, logits_to_keep=width + 1,
                output_hidden_states=hidden)
    logprobs = torch.log_softmax(out.logits[:, :-1].float() / temperature, dim=-1)
    logps = logprobs.gather(-1, batch["answer_ids"].to(device).unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logprobs.exp() * logprobs).sum(-1)
    states = out.hidden_states[-1][:, -(width + 1):-1] if hidden else None
    return logps, entropy, states


def clipped_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, cliprange: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token (to minimise), and where the clipped term was the one taken."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def zero3(config: TrainConfig) -> bool:
    """Whether --deepspeed partitions the weights (ZeRO-3): generation must then keep ranks in step."""
    if not config.deepspeed:
        return False
    return json.loads(Path(config.deepspeed).read_text()).get("zero_optimization", {}).get("stage", 0) == 3


def chunk_seed(seed: int, phase: int, chunk: int) -> int:
    """The sampling seed of one generate call: the same whichever process makes it."""
    return (seed * 1_000_003 + phase * 10_007 + chunk) % (2**31 - 1) + 1


# ---------------------------------------------------------------- the plan of steps
class RolloutPlan:
    """Which answers every step trains on; the loop's Plan, for recipes that make their own rows.

    Prompts are shuffled per epoch (seed, epoch); rollout batch ``phase`` answers the next
    ``prompts_per_rollout`` of them, and its steps cut it as the module docstring says.
    """

    def __init__(self, recipe: OnlineRecipe, prompts: list[RolloutPrompt], config: TrainConfig, world,
                 grad_accum: int):
        self.recipe, self.prompts, self.config, self.world = recipe, prompts, config, world
        self.per_step = grad_accum * world.size * config.micro_batch_size  # answers per optimizer step
        answers = self.per_step * config.num_mini_batches
        if answers % config.rollouts_per_prompt:
            raise FlagError(f"a rollout batch of {answers} answers (batch {self.per_step} x --num_mini_batches="
                            f"{config.num_mini_batches}) is not a whole number of groups of --rollouts_per_prompt="
                            f"{config.rollouts_per_prompt}; make batch_size x num_mini_batches a multiple of it")
        self.prompts_per_rollout = answers // config.rollouts_per_prompt
        self.rollouts_per_epoch = len(prompts) // self.prompts_per_rollout
        if self.rollouts_per_epoch == 0:
            raise DataError(f"{len(prompts)} prompts are fewer than one rollout batch answers "
                            f"({self.prompts_per_rollout} prompts x {config.rollouts_per_prompt} answers); "
                            f"lower --batch_size or add prompts")
        self.steps_per_rollout = config.ppo_epochs * config.num_mini_batches
        self.steps_per_epoch = self.rollouts_per_epoch * self.steps_per_rollout
        self.total_steps = config.max_steps if config.max_steps > 0 else math.ceil(
            config.num_epochs * self.steps_per_epoch)
        self.eval_every = self.total_steps  # nothing is held out: the rollouts are the evaluation
        self.experience: Experience | None = None

    def phase_prompts(self, phase: int) -> list[RolloutPrompt]:
        epoch, at = divmod(phase, self.rollouts_per_epoch)
        order = list(range(len(self.prompts)))
        random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        size = self.prompts_per_rollout
        return [self.prompts[i] for i in order[at * size:(at + 1) * size]]

    def micro_batches(self, step: int) -> list[list[Rollout]]:
        """This rank's micro-batches of ``step`` (0-based), making the rollout batch first if it is new."""
        phase, at = divmod(step, self.steps_per_rollout)
        made = None
        if self.experience is None or self.experience.phase != phase:
            started = time.perf_counter()
            self.experience = self.recipe.collect(phase, self.phase_prompts(phase))
            made = time.perf_counter() - started
        self.recipe.note_step(self.experience, made)
        epoch, mini = divmod(at, self.config.num_mini_batches)
        order = list(range(len(self.experience.rollouts)))
        random.Random((self.config.seed * 1_000_003 + phase) * 1_009 + epoch).shuffle(order)
        chosen = order[mini * self.per_step:(mini + 1) * self.per_step]
        size = self.config.micro_batch_size
        batches = [[self.experience.rollouts[i] for i in chosen[k:k + size]] for k in range(0, len(chosen), size)]
        return batches[self.world.rank::self.world.size]

    def epoch_of(self, step: int) -> float:
        return round(step / self.steps_per_epoch, 4)


# ---------------------------------------------------------------- saving the rollout batch
def save_experience(path: Path, experience: Experience, kl_now: float) -> None:
    """The rollout batch as flat tensors (float64: every value comes back exactly) in one safetensors file."""
    rollouts = experience.rollouts
    tensors = {"group": torch.tensor([r.group for r in rollouts]), "sample": torch.tensor([r.sample for r in rollouts]),
               "stopped": torch.tensor([int(r.stopped) for r in rollouts]),
               "score": torch.tensor([r.score for r in rollouts], dtype=torch.float64),
               "prompt_len": torch.tensor([len(r.prompt_ids) for r in rollouts]),
               "prompt_ids": torch.tensor([t for r in rollouts for t in r.prompt_ids]),
               "answer_len": torch.tensor([len(r.ids) for r in rollouts]),
               "ids": torch.tensor([t for r in rollouts for t in r.ids])}
    for name in TOKEN_FIELDS:
        if all(getattr(r, name) for r in rollouts):
            tensors[name] = torch.tensor([v for r in rollouts for v in getattr(r, name)], dtype=torch.float64)
    for name in rollouts[0].parts:
        tensors[f"part.{name}"] = torch.tensor([r.parts[name] for r in rollouts], dtype=torch.float64)
    save_file(tensors, str(path), metadata={"phase": str(experience.phase), "kl_coef": repr(experience.kl_coef),
                                            "kl_now": repr(kl_now), "stats": json.dumps(experience.stats)})


def load_experience(path: Path) -> tuple[Experience, float]:
    """(the rollout batch, the KL coefficient after it) as :func:`save_experience` wrote them."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        t = {name: f.get_tensor(name).tolist() for name in f.keys()}

    def split(flat: list, lengths: list[int]) -> list[list]:
        out, at = [], 0
        for n in lengths:
            out.append(flat[at:at + n])
            at += n
        return out

    prompts, answers = split(t["prompt_ids"], t["prompt_len"]), split(t["ids"], t["answer_len"])
    per_token = {name: split(t[name], t["answer_len"]) for name in TOKEN_FIELDS if name in t}
    parts = {name[5:]: t[name] for name in t if name.startswith("part.")}
    rollouts = [Rollout(t["group"][i], t["sample"][i], prompts[i], answers[i], bool(t["stopped"][i]), t["score"][i],
                        {name: values[i] for name, values in parts.items()},
                        **{name: values[i] for name, values in per_token.items()})
                for i in range(len(answers))]
    experience = Experience(int(meta["phase"]), rollouts, json.loads(meta["stats"]), float(meta["kl_coef"]))
    return experience, float(meta["kl_now"])


# ---------------------------------------------------------------- the recipe
class OnlineRecipe(Recipe):
    """PPO and GRPO: the model answers, the answers are scored, the model is updated on them."""

    online = True
    unit = "token"  # a mean over the answer tokens of the whole step (TRL GRPO's default "dapo" normalisation)
    value_head: torch.nn.Module | None = None  # PPO's critic

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.kl = KLController(config.kl_coef, config.target_kl, config.kl_horizon)
        self.plan: RolloutPlan | None = None
        self.steps: list[dict] = []  # rollout statistics of each step since the last log line

    # -------------------------------------------------- model and prompts
    def build_model(self, device, dtype, tokenizer):
        model = build_causal_lm(self.config, device, dtype, reference_adapter=bool(self.config.lora_weights))
        self.model, self.tokenizer = model, tokenizer
        return model

    def read_data(self, tokenizer, progress: bool) -> Data:
        config = self.config
        path = config.resolved_data_path()
        prompts, stats = read_prompts(path, config.data_col_dict, config.fixed_prompt_type, tokenizer,
                                      config.cutoff_len - config.max_new_tokens)
        summary = (f"data: {path}: {stats.rows} rows read, {len(prompts)} distinct prompts "
                   f"(prompt_type {config.fixed_prompt_type})" + (f"; {stats.summary()}" if stats.summary() else ""))
        return Data(prompts, [], {"data_path": path, "rows_read": stats.rows, "rows_skipped": stats.skipped,
                                  "prompts": len(prompts)}, summary)

    def prepare(self, model, data: Data, world, autocast) -> None:
        self.world, self.autocast = world, autocast
        self.synced = zero3(self.config)
        self.rewards = Rewards(self.config, world.device)  # loads the reward model once, before any step

    def rollout_plan(self, data: Data, world, grad_accum: int) -> RolloutPlan:
        self.plan = RolloutPlan(self, data.train, self.config, world, grad_accum)
        return self.plan

    # -------------------------------------------------- the rollout phase
    @torch.no_grad()
    def collect(self, phase: int, prompts: list[RolloutPrompt]) -> Experience:
        """Sample, score and take log-probs (and values) of a rollout batch; every process gets all of it."""
        config, world = self.config, self.world
        started = time.perf_counter()
        per_call = max(1, config.micro_batch_size // config.rollouts_per_prompt)
        chunks = [list(range(i, min(i + per_call, len(prompts)))) for i in range(0, len(prompts), per_call)]
        mine, real = shard(list(enumerate(chunks)), world)  # the same number of calls on every rank (ZeRO-3)
        was_training = self.model.training
        self.model.eval()
        made: list[Rollout] = []
        with self.autocast():
            for n, (chunk, indices) in enumerate(mine):
                rollouts = self._rollout_chunk([prompts[i] for i in indices], indices, chunk_seed(config.seed, phase,
                                                                                                  chunk))
                made += rollouts if n < real else []
        self.model.train(was_training)
        gathered = distributed.all_gather_strings([json.dumps(asdict(r)) for r in made])
        rollouts = sorted((Rollout(**json.loads(item)) for part in gathered for item in part),
                          key=lambda r: (r.group, r.sample))
        self.fill_advantages(rollouts, self.kl.value)
        seconds = time.perf_counter() - started
        stats = self._stats(rollouts, seconds)
        experience = Experience(phase, rollouts, stats, self.kl.value)
        self.kl.update(stats["kl"], len(rollouts))
        return experience

    def _rollout_chunk(self, prompts: list[RolloutPrompt], groups: list[int], seed: int) -> list[Rollout]:
        config, per = self.config, self.config.rollouts_per_prompt
        completions = sample(self.model, self.tokenizer, prompts, per_prompt=per, prompt_type=config.fixed_prompt_type,
                             max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                             top_p=config.top_p, seed=seed, synced=self.synced)
        questions = [p.question for p in prompts for _ in range(per)]
        scores, parts = self.rewards.score(questions, [c.text for c in completions], [c.stopped for c in completions])
        rollouts = [Rollout(groups[i // per], i % per, list(prompts[i // per].ids), list(c.ids), c.stopped, scores[i],
                            {name: values[i] for name, values in parts.items()})
                    for i, c in enumerate(completions)]
        batch = collate_rollouts(rollouts, self.pad_token_id)
        device = self.world.device
        logps, _, states = forward_answers(self.model, batch, device, config.temperature,
                                           hidden=self.value_head is not None)
        values = self.value_head(states.float()).squeeze(-1) if self.value_head is not None else None
        with reference_model(self.model):
            ref_logps, _, _ = forward_answers(self.model, batch, device, config.temperature)
        for row, r in enumerate(rollouts):
            n = len(r.ids)
            r.old_logps, r.ref_logps = logps[row, :n].tolist(), ref_logps[row, :n].tolist()
            if values is not None:
                r.values = values[row, :n].float().tolist()
        return rollouts

    def fill_advantages(self, rollouts: list[Rollout], kl_coef: float) -> None:
        """Set every rollout's advantages (and PPO's returns)."""
        raise NotImplementedError

    def _stats(self, rollouts: list[Rollout], seconds: float) -> dict:
        scores = [r.score for r in rollouts]
        tokens = sum(len(r.ids) for r in rollouts)
        stats = {"reward": statistics.fmean(scores), "reward_std": statistics.pstdev(scores),
                 "kl": statistics.fmean(r.kl for r in rollouts), "kl_coef": self.kl.value,
                 "answer_tokens": tokens / len(rollouts), "stopped": statistics.fmean(r.stopped for r in rollouts),
                 "rollout_tokens_per_s": tokens / max(seconds, 1e-9)}
        if len(rollouts[0].parts) > 1:
            stats.update({f"reward_{name}": statistics.fmean(r.parts[name] for r in rollouts)
                          for name in rollouts[0].parts})
        return stats

    # -------------------------------------------------- the update phase
    def collate(self, micro_batch, pad_token_id):
        return collate_rollouts(micro_batch, pad_token_id)

    def old_logps(self, logps: torch.Tensor, batch: dict, device: str) -> torch.Tensor:
        """The log-probs the policy ratio divides by. Used once, a rollout is trained on by the weights that
        made it: the update's own log-probs, detached (ratio exactly 1, as TRL does), not the rollout
        forward's, which bf16 or another padding would make differ by rounding."""
        if self.config.ppo_epochs == 1 and self.config.num_mini_batches == 1:
            return logps.detach()
        return batch["old_logps"].to(device)

    def units(self, batch):
        return batch["num_answer_tokens"]

    # -------------------------------------------------- logging, checkpoints, final output
    def note_step(self, experience: Experience, rollout_seconds: float | None) -> None:
        """Called by the plan as each step starts: the statistics of the rollouts it trains on."""
        self.steps.append({**experience.stats, "rollout_s": rollout_seconds or 0.0})

    def window_metrics(self, window) -> dict:
        """Rollout statistics averaged over the steps since the last log line; the time split of those steps."""
        steps, self.steps = self.steps, []
        if not steps:
            return {}
        out = {key: statistics.fmean(s[key] for s in steps) for key in steps[0] if key != "rollout_s"}
        out.update(rollout_s=sum(s["rollout_s"] for s in steps), update_s=window.seconds)
        return out

    def save_state(self, folder: Path, world, zero3: bool) -> None:
        """The rollout batch and KL coefficient (and PPO's critic), so a resume continues exactly."""
        self._save_critic(folder / "value_head.safetensors", world, zero3)
        if world.is_main and self.plan is not None and self.plan.experience is not None:
            save_experience(folder / ROLLOUTS_FILE, self.plan.experience, self.kl.value)

    def load_state(self, folder: Path, world) -> None:
        if (folder / ROLLOUTS_FILE).is_file():
            self.plan.experience, self.kl.value = load_experience(folder / ROLLOUTS_FILE)
        if self.value_head is not None and not self.config.deepspeed:  # DeepSpeed restores it with the module
            self.value_head.load_state_dict(load_file(str(folder / "value_head.safetensors"), device=world.device))

    def save_final(self, model, tokenizer, output_dir: Path, save_weights, world, zero3: bool) -> None:
        """The trained adapter and tokenizer at the top of output_dir (usable as --lora_weights), PPO's critic
        in ``critic/``."""
        super().save_final(model, tokenizer, output_dir, save_weights, world, zero3)
        if self.value_head is None:
            return
        with atomic.replacing(output_dir / "critic") if world.is_main else contextlib.nullcontext() as staging:
            if world.is_main:
                staging.mkdir()
                atomic.write_json(staging / "critic.json", {
                    "kind": "value head: one linear layer on the actor's last hidden state (with the actor's adapter)",
                    "hidden_size": self.value_head.in_features, "base_model": self.config.base_model})
            self._save_critic(staging / "value_head.safetensors" if world.is_main else None, world, zero3)

    def _save_critic(self, path: Path | None, world, zero3: bool) -> None:
        if self.value_head is None:
            return
        with gathered_parameters(self.value_head, zero3, trainable_only=False):
            state = {k: v.detach().float().cpu().clone() for k, v in self.value_head.state_dict().items()}
        if world.is_main:
            save_file(state, str(path))
