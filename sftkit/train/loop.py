"""The training run, top to bottom, for every objective: recipe → model → data → optimizer and
wrapping → resume → steps (accumulate, clip, step, log, evaluate, save) → final outputs.

What differs between SFT, reward-model, DPO, PPO and GRPO training lives in a recipe (sftkit/train/recipes/;
the online ones make their rows by rollouts as steps come, through their own plan);
one process, torchrun DDP (gloo on the CPU, nccl on GPUs) or DeepSpeed ZeRO share this code and
differ only in how the model is wrapped and how a step is taken.
"""
from __future__ import annotations

import contextlib
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from sftkit import atomic, models
from sftkit.errors import TrainError
from sftkit.flags import FlagError
from sftkit.lock import LOCK_NAME
from sftkit.train import checkpoint, distributed, model_card, run_record, tracking
from sftkit.train.batching import EpochPlan, as_tokenized_set, epoch_plan
from sftkit.train.config import TrainConfig
from sftkit.train.data import DataError
from sftkit.train.modeling import trainable_parameters, weights_saver
from sftkit.train.recipes import Data, Recipe
from sftkit.train.recipes.registry import get_recipe
from sftkit.train.recipes.sft import shard


# ---------------------------------------------------------------- precision, schedule, memory, logging
@dataclass(frozen=True)
class Precision:
    """The weights' dtype, and whether the CPU computes in bfloat16 under autocast (float32 master weights)."""

    weights: torch.dtype
    cpu_autocast: bool

    @classmethod
    def pick(cls, config: TrainConfig, device: str) -> Precision:
        if device == "cpu" and config.bf16:
            return cls(torch.float32, True)
        return cls(models.pick_dtype(device, config.fp16, config.bf16), False)

    def autocast(self):
        if self.cpu_autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __str__(self) -> str:
        return "float32 weights, bfloat16 autocast" if self.cpu_autocast else str(self.weights)


def lr_lambda(kind: str, warmup: int, total: int):
    def scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if kind == "linear":
            return 1 - progress
        return 1.0
    return scale


def peak_memory_gib(device: str) -> float:
    """Peak GPU memory allocated, or this process's peak resident memory on the CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Log:
    """Lines and progress bars from the main process only (prefixed with the run's --run_id, if any)."""

    def __init__(self, enabled: bool, run_id: str = ""):
        self.enabled = enabled
        self.prefix = f"[{run_id}] " if run_id else ""

    def __call__(self, message: str) -> None:
        if self.enabled:
            tqdm.write(self.prefix + message)


def check_output_dir(config: TrainConfig) -> None:
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise TrainError(f"--output_dir={out} is a file; choose a directory")
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) and not config.resume_from_checkpoint:
        raise TrainError(f"--output_dir={out} already exists and is not empty; choose a new directory, or "
                         f"continue it with --resume_from_checkpoint=latest")


# ---------------------------------------------------------------- the plan of steps
@dataclass
class Plan:
    """Which micro-batches every step takes, rebuilt from (lengths, seed, epoch) so resume sees the same.

    ``items`` is a tokenized set (see sftkit/train/batching.py; a list is wrapped as one); the plan
    holds index arrays only, and each rank fetches the rows of its own micro-batches.
    """

    items: object
    config: TrainConfig
    world: distributed.World
    grad_accum: int
    steps_per_epoch: int = 0
    total_steps: int = 0
    eval_every: int = 0
    _epoch: int = -1
    _plan: EpochPlan | None = None

    def __post_init__(self):
        c = self.config
        self.items = as_tokenized_set(self.items)
        self.per_step = self.grad_accum * self.world.size
        self.steps_per_epoch = len(self._epoch_plan(0)) // self.per_step
        if self.steps_per_epoch == 0:
            raise DataError(f"{len(self.items)} training rows make fewer micro-batches than one step needs "
                            f"({self.per_step} x {c.micro_batch_size}); lower --batch_size or add data")
        self.total_steps = c.max_steps if c.max_steps > 0 else math.ceil(c.num_epochs * self.steps_per_epoch)
        self.eval_every = c.eval_steps or max(1, round(c.eval_epochs * self.steps_per_epoch))
        self.efficiency = self._plan.efficiency  # epoch 0's non-padding tokens over the batches' slots

    def _epoch_plan(self, epoch: int) -> EpochPlan:
        if epoch != self._epoch:
            c = self.config
            self._epoch, self._plan = epoch, epoch_plan(
                self.items.lengths, c.micro_batch_size, seed=c.seed, epoch=epoch, pack=c.pack,
                group_by_length=c.group_by_length, cutoff_len=c.cutoff_len, world_size=self.world.size)
        return self._plan

    def micro_batches(self, step: int) -> list:
        """This rank's micro-batches of ``step`` (0-based): rows of items, fetched from the set."""
        plan = self._epoch_plan(step // self.steps_per_epoch)
        first = step % self.steps_per_epoch * self.per_step
        # An epoch that packs into fewer rows than epoch 0 wraps around, so every rank steps alike.
        return [[[self.items[i] for i in row] for row in plan.batch(b % len(plan))]
                for b in range(first + self.world.rank, first + self.per_step, self.world.size)]

    def epoch_of(self, step: int) -> float:
        return round(step / self.steps_per_epoch, 4)


# ---------------------------------------------------------------- optimizer and wrapping
@dataclass
class Trainer:
    """The model as trained: the optimizer and schedule, and the DDP or DeepSpeed wrapper (if any)."""

    model: torch.nn.Module  # unwrapped: saving, generation, recipes' own passes
    wrapped: torch.nn.Module  # what the forward/backward of a step go through
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    engine: object = None  # the DeepSpeed engine, when --deepspeed
    zero3: bool = False

    def no_sync(self, last: bool):
        """Skip DDP's gradient all-reduce on every micro-batch of a step but the last."""
        if last or self.engine is not None or not hasattr(self.wrapped, "no_sync"):
            return contextlib.nullcontext()
        return self.wrapped.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        if self.engine is not None:
            self.engine.backward(loss, scale_wrt_gas=False)
            self.engine.step()  # DeepSpeed counts micro-batches and steps at the boundary
        else:
            loss.backward()

    def step(self, max_grad_norm: float) -> None:
        if self.engine is not None:
            return
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def make_trainer(model, config: TrainConfig, world, grad_accum: int, dtype, total_steps: int) -> Trainer:
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.lr_scheduler, config.warmup_steps,
                                                                       total_steps))
    if config.deepspeed:
        import deepspeed

        ds_config = distributed.deepspeed_config(config.deepspeed, batch_size=config.effective_batch_size(world.size),
                                                 micro_batch_size=config.micro_batch_size,
                                                 gradient_accumulation=grad_accum,
                                                 max_grad_norm=config.max_grad_norm, dtype=dtype)
        zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
        engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                               lr_scheduler=scheduler, config=ds_config)
        return Trainer(model, engine, params, optimizer, scheduler, engine, zero3)
    if world.size > 1:
        device_ids = [world.local_rank] if world.device.startswith("cuda") else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return Trainer(model, wrapped, params, optimizer, scheduler)
    return Trainer(model, model, params, optimizer, scheduler)


# ---------------------------------------------------------------- one step, evaluation
@dataclass
class Sums:
    """Running sums of a window of steps (or an evaluation): loss and metrics over units, tokens, time."""

    loss: float = 0.0
    units: float = 0.0
    tokens: float = 0.0
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)

    def add(self, other: Sums) -> None:
        self.loss += other.loss
        self.units += other.units
        self.tokens += other.tokens
        self.seconds += other.seconds
        for key, value in other.metrics.items():
            self.metrics[key] = self.metrics.get(key, 0.0) + value

    def means(self, prefix: str = "") -> dict:
        out = {f"{prefix}loss": self.loss / max(self.units, 1)}
        out.update({f"{prefix}{k}": v / max(self.units, 1) for k, v in self.metrics.items()})
        return out


def all_sum_sums(local: Sums, device: str) -> Sums:
    keys = sorted(local.metrics)
    total = distributed.all_sum([local.loss, local.units, local.tokens, *(local.metrics[k] for k in keys)], device)
    return Sums(total[0], total[1], total[2], local.seconds, dict(zip(keys, total[3:])))


def train_step(trainer: Trainer, recipe: Recipe, micro_batches: list, *, pad_token_id: int, world,
               precision: Precision, max_grad_norm: float) -> Sums:
    """Accumulate this rank's micro-batches and take one optimizer step; the step's global sums.

    Each micro-batch's loss is its sum over units scaled by world size / global units, so the
    gradient is the mean over every unit of the global batch, however rows split over ranks.
    """
    started = time.perf_counter()
    batches = [recipe.collate(b, pad_token_id) for b in micro_batches]
    (global_units,) = distributed.all_sum([sum(recipe.units(b) for b in batches)], world.device)
    local = Sums()
    for k, batch in enumerate(batches):
        with trainer.no_sync(last=k == len(batches) - 1):
            with precision.autocast():
                loss_sum, metrics = recipe.loss(trainer.wrapped, batch, world.device)
            trainer.backward(loss_sum * world.size / max(global_units, 1))
        local.add(Sums(float(loss_sum.detach()), recipe.units(batch), batch["num_tokens"], 0.0, metrics))
    trainer.step(max_grad_norm)
    total = all_sum_sums(local, world.device)
    total.seconds = time.perf_counter() - started
    return total


@torch.no_grad()
def evaluate(trainer: Trainer, recipe: Recipe, tokenizer, valid: list, config: TrainConfig, world,
             precision: Precision) -> dict:
    """The recipe's loss and metrics over the validation set (sharded over ranks), plus its extras."""
    if not valid:
        return {}
    trainer.wrapped.eval()
    size = config.micro_batch_size
    mine, real = shard([range(i, min(i + size, len(valid))) for i in range(0, len(valid), size)], world)
    local = Sums()
    for index, chunk in enumerate(mine):
        batch = recipe.collate([[valid[i]] for i in chunk], tokenizer.pad_token_id)
        with precision.autocast():
            loss_sum, metrics = recipe.loss(trainer.wrapped, batch, world.device)
        if index < real:  # the others are repeats that only keep ranks in step
            local.add(Sums(float(loss_sum), recipe.units(batch), 0, 0, metrics))
    result = all_sum_sums(local, world.device).means("eval_")
    with precision.autocast():
        result.update(recipe.extra_eval(trainer.model, tokenizer, valid, world, synced=trainer.zero3))
    trainer.wrapped.train()
    return result


# ---------------------------------------------------------------- the run
def train(config: TrainConfig) -> dict:
    """Train as configured; return the final metrics (also written to output_dir/metrics.json)."""
    world = distributed.setup(use_deepspeed=bool(config.deepspeed))
    try:
        with run_record.one_writer(config.output_dir, world.is_main):  # one run per output_dir
            return run(config, world)
    finally:
        distributed.teardown()


def run(config: TrainConfig, world) -> dict:
    log = Log(world.is_main, config.run_id)
    recipe = get_recipe(config)
    if world.size > 1 and not config.ddp and not config.deepspeed:
        raise FlagError(f"--ddp=False but {world.size} processes were launched; run one process, or keep --ddp")
    grad_accum = config.gradient_accumulation(world.size)
    distributed.barrier()  # every rank looks at output_dir after the main one tidied it (run_record.one_writer)
    check_output_dir(config)
    resume_from = checkpoint.resolve_resume(config.resume_from_checkpoint, config.output_dir) \
        if config.resume_from_checkpoint else None
    distributed.barrier()
    settings = run_record.begin(config, world, resume_from, log)  # resume check, effective batch, --save_code
    output_dir = Path(config.output_dir)
    if world.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    # 1. tokenizer and model
    tokenizer = models.load_tokenizer(config.tokenizer_base_model or config.base_model,
                                      local_files_only=config.local_files_only,
                                      trust_remote_code=config.trust_remote_code,
                                      token=config.hub_options().get("token"))
    precision = Precision.pick(config, world.device)
    model = recipe.build_model(world.device, precision.weights, tokenizer)
    recipe.pad_token_id = tokenizer.pad_token_id
    trainable = sum(p.numel() for p in trainable_parameters(model))
    total_params = sum(p.numel() for p in model.parameters())
    method = "full fine-tuning" if config.full_finetune else "LoRA"
    log(f"{config.stage}: {config.base_model} ({total_params / 1e6:.1f}M params, {trainable / 1e6:.2f}M trainable, "
        f"{method}, {precision}, {'8-bit' if config.train_8bit else '4-bit' if config.train_4bit else 'unquantized'})"
        f" on {world.size} x {world.device}"
        + (", packing with block-diagonal masks" if getattr(recipe, "block_mask", False) else ""))

    # 2. data, and the plan of steps
    data: Data = recipe.read_data(tokenizer, progress=log.enabled)
    recipe.prepare(model, data, world, precision.autocast)
    # Online recipes (ppo, grpo) make their rows as they go: their plan runs the rollouts.
    plan = recipe.rollout_plan(data, world, grad_accum) if recipe.online else Plan(data.train, config, world,
                                                                                   grad_accum)
    log(data.summary)
    log(f"plan: {plan.total_steps} steps ({plan.steps_per_epoch}/epoch), batch {settings['effective_batch_size']} = micro "
        f"{config.micro_batch_size} x {world.size} processes x {grad_accum} accumulation")

    # 3. optimizer, schedule, wrapping; 4. resume
    trainer = make_trainer(model, config, world, grad_accum, precision.weights, plan.total_steps)
    save_weights = weights_saver(model, world, trainer.zero3)
    step, history = 0, []
    if resume_from is not None:
        state = checkpoint.load_checkpoint(resume_from, world=world, model=model, optimizer=trainer.optimizer,
                                           scheduler=trainer.scheduler, engine=trainer.engine)
        step, history = state["step"], state["history"]
        recipe.load_state(resume_from, world)
        log(f"resumed from {resume_from} at step {step}")
    trackers = tracking.Trackers(tracking.parse_report_to(config.report_to) if world.is_main else [], output_dir,
                                 config.run_id, settings)
    if world.is_main:  # appends a resume, never rewrites what trained the adapter
        run_record.record_start(output_dir, settings, resume_from, step)
    run_info = {"stage": config.stage, "world_size": world.size, "gradient_accumulation": grad_accum,
                "dtype": str(precision), "trainable_params": trainable, "total_params": total_params,
                "full_finetune": config.full_finetune, "loss_unit": recipe.unit,
                "packing_block_mask": getattr(recipe, "block_mask", False), "deepspeed": config.deepspeed or None,
                # non-padding tokens / slots of epoch 0's micro-batches (rows x longest row); per row for SFT only
                "packing_efficiency": round(plan.efficiency, 4) if recipe.unit == "token" and not recipe.online else None}

    def summary() -> dict:
        return {"step": step, "total_steps": plan.total_steps, "history": history, "data": data.stats,
                "run": run_info}

    # 5. the steps
    trainer.wrapped.train()
    bar = tqdm(total=plan.total_steps, initial=step, desc=config.stage, disable=not world.is_main,
               dynamic_ncols=True)
    window, whole_run = Sums(), Sums()
    while step < plan.total_steps:
        sums = train_step(trainer, recipe, plan.micro_batches(step), pad_token_id=tokenizer.pad_token_id,
                          world=world, precision=precision, max_grad_norm=config.max_grad_norm)
        step += 1
        window.add(sums)
        whole_run.add(sums)
        bar.update(1)
        evaluating = step % plan.eval_every == 0 or step == plan.total_steps
        if step % config.logging_steps == 0 or step == plan.total_steps:
            record = {"step": step, "epoch": plan.epoch_of(step), **window.means(), **recipe.window_metrics(window),
                      "lr": trainer.scheduler.get_last_lr()[0],
                      "tokens_per_s": window.tokens / max(window.seconds, 1e-9),
                      "peak_memory_gib": peak_memory_gib(world.device)}
            window = Sums()
            if evaluating:
                record.update(evaluate(trainer, recipe, tokenizer, data.valid, config, world, precision))
            history.append(record)
            log(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in record.items() if k != "eval_sample"))
            trackers.log(record, step)
        elif step % plan.eval_every == 0:
            history.append({"step": step, **evaluate(trainer, recipe, tokenizer, data.valid, config, world,
                                                     precision)})
        if (config.save_steps and step % config.save_steps == 0) or step == plan.total_steps:
            checkpoint.save_checkpoint(config.output_dir, step, world=world, save_adapter=save_weights,
                                       optimizer=trainer.optimizer, scheduler=trainer.scheduler,
                                       engine=trainer.engine, save_total_limit=config.save_total_limit,
                                       trainer_state={"step": step, "epoch": step / plan.steps_per_epoch,
                                                      "history": history, "max_steps": plan.total_steps,
                                                      "logging_steps": config.logging_steps,
                                                      "eval_steps": plan.eval_every, "save_steps": config.save_steps,
                                                      "num_train_epochs": math.ceil(plan.total_steps
                                                                                    / plan.steps_per_epoch),
                                                      "train_batch_size": config.micro_batch_size},
                                       settings=settings,
                                       save_state=lambda folder: recipe.save_state(folder, world, trainer.zero3))
            if world.is_main:
                atomic.write_json(output_dir / "metrics.json", summary())
    bar.close()

    # 6. final outputs
    final = summary()
    if trainer.engine is None:  # replicas must hold identical weights; ZeRO shards them instead
        checksum = f"{sum(float(p.detach().double().sum()) for p in trainer.params):.10e}"
        final["run"]["rank_adapter_checksums"] = [c for part in distributed.all_gather_strings([checksum])
                                                  for c in part]
    recipe.save_final(model, tokenizer, output_dir, save_weights, world, trainer.zero3)
    last_train = next((h for h in reversed(history) if "loss" in h), {})
    last_eval = next((h for h in reversed(history) if "eval_loss" in h), {})
    final.update({"train_loss": last_train.get("loss"), "tokens_per_s": whole_run.tokens / max(whole_run.seconds, 1e-9),
                  "train_tokens": whole_run.tokens, "train_seconds": whole_run.seconds,
                  "peak_memory_gib": peak_memory_gib(world.device),
                  **{k: v for k, v in last_eval.items() if k.startswith("eval_")}})
    if world.is_main:
        atomic.write_json(output_dir / "metrics.json", final)
        trackers.finish([output_dir / "metrics.json", output_dir / run_record.RUN_CONFIG,
                         *model_card.data_card_files(settings.get("data_path", ""))])
        extra = "".join(f", eval {k[5:]} {final[k]:.4f}" for k in ("eval_loss", "eval_accuracy", "eval_margin")
                        if isinstance(final.get(k), float))
        packing = run_info["packing_efficiency"]
        extra += f", packing efficiency {packing:.1%}" if packing is not None else ""
        log(f"done: {config.stage}, {step} steps, train loss {final['train_loss']:.4f}{extra}, "
            f"{final['tokens_per_s']:.0f} tokens/s, peak {final['peak_memory_gib']:.2f} GiB -> {output_dir}")
    return final
