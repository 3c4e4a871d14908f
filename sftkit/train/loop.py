"""The fine-tuning run, top to bottom: model and LoRA → data → loop (accumulate, step, log, eval, save).

One process, torchrun DDP (gloo on the CPU, nccl on GPUs) or DeepSpeed ZeRO share this code; they
differ only in how the model is wrapped and how a step is taken.
"""
from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sftkit import atomic, models
from sftkit.errors import TrainError
from sftkit.flags import FlagError
from sftkit.lock import LOCK_NAME
from sftkit.prompts import stop_strings
from sftkit.train import checkpoint, distributed, run_record
from sftkit.train.batching import collate, epoch_plan, token_losses
from sftkit.train.config import TrainConfig
from sftkit.train.data import DataError, load_conversations, mix_in, split_validation
from sftkit.train.metrics import compute_metrics
from sftkit.train.tokenize import IGNORE, Example, check_prompt_types, tokenize_all




# ---------------------------------------------------------------- model
def build_model(config: TrainConfig, device: str, dtype: torch.dtype):
    """Base model (optionally 8/4-bit) with a trainable LoRA adapter (new, or continued from lora_weights)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = models.load_model(config.base_model, device=device, dtype=dtype, load_8bit=config.train_8bit,
                              load_4bit=config.train_4bit, local_files_only=config.local_files_only,
                              trust_remote_code=config.trust_remote_code, **config.hub_options())
    model.config.use_cache = False
    checkpointing = {"use_reentrant": False}
    if config.train_8bit or config.train_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    if config.lora_weights:
        return models.apply_adapter(model, config.lora_weights, base_model=config.base_model, is_trainable=True)
    targets = config.lora_target_modules or models.lora_target_modules(model)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise TrainError(f"--lora_target_modules={targets}: {str(exc).splitlines()[0][:200]}") from None


def packing_needs_block_mask(model) -> bool:
    """Whether packed rows need an explicit block-diagonal mask to keep examples apart.

    Flash-attention kernels read example boundaries from restarting position_ids (padding-free,
    varlen). transformers 5.23's sdpa and eager paths try to derive a mask from them too, but on
    the CPU packed examples after the first still attend to earlier ones (tests/train/test_batching.py
    shows it), so every other attention implementation gets the explicit mask.
    """
    return not str(getattr(model.config, "_attn_implementation", "")).startswith("flash_attention")


# ---------------------------------------------------------------- data
def build_data(config: TrainConfig, tokenizer, log) -> tuple[list[Example], list[Example], dict]:
    """Read, mix, split and tokenize; return train and validation examples with every count."""
    path = config.resolved_data_path()
    # Each row keeps its own prompt_type column unless --prompt_type is given; the summary says which won.
    train_convs, read_stats = load_conversations(path, config.data_col_dict, config.prompt_type)
    check_prompt_types(read_stats.prompt_types, tokenizer)
    log(read_stats.prompt_type_summary())
    stats: dict = {"data_path": path, "rows_read": read_stats.rows, "rows_skipped": read_stats.skipped,
                   "rows_repaired_utf8": read_stats.repaired_utf8, "prompt_type": read_stats.prompt_type_summary()}
    if read_stats.summary():
        log(f"data: {path}: {read_stats.summary()}")
    if config.valid_path:
        val_convs, val_read = load_conversations(config.valid_path, config.data_col_dict, config.prompt_type)
        stats["valid_rows_skipped"] = val_read.skipped
    elif config.val_set_size > 0:
        train_convs, val_convs = split_validation(train_convs, config.val_set_size, config.seed)
    else:
        val_convs = []
    kw = dict(cutoff_len=config.cutoff_len, train_on_inputs=config.train_on_inputs,
              add_eos_token=config.add_eos_token, drop_truncations=config.drop_truncations,
              progress=log.enabled)
    train = tokenize_all(train_convs, tokenizer, config.prompt_type, desc="tokenize train", **kw)
    stats["train"] = train.stats.as_dict()
    examples = train.examples
    if config.data_mix_in_path and config.data_mix_in_factor > 0:
        mix_convs, mix_read = load_conversations(config.data_mix_in_path, config.data_mix_in_col_dict,
                                                 config.data_mix_in_prompt_type or config.prompt_type)
        check_prompt_types(mix_read.prompt_types, tokenizer)
        mixed = tokenize_all(mix_convs, tokenizer, config.data_mix_in_prompt_type or config.prompt_type,
                             desc="tokenize mix-in", **kw)
        examples = mix_in(examples, mixed.examples, config.data_mix_in_factor, config.seed)
        stats["mix_in"] = {"path": config.data_mix_in_path, "rows_skipped": mix_read.skipped,
                           **mixed.stats.as_dict(), "rows_added": len(examples) - len(train.examples)}
    val = tokenize_all(val_convs, tokenizer, config.prompt_type, desc="tokenize valid",
                       **{**kw, "drop_truncations": False})
    stats["valid"] = val.stats.as_dict()
    if not examples:
        raise DataError(f"{path}: no training rows left after tokenizing (truncated/dropped/skipped: "
                        f"{train.stats.as_dict()}); raise --cutoff_len or check the prompt_type")
    return examples, val.examples, stats


# ---------------------------------------------------------------- schedule and memory
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


# ---------------------------------------------------------------- evaluation
def _shard(items: list, world) -> tuple[list, int]:
    """This rank's share and how many of it are real: padded by repetition so every rank runs the
    same number of forwards (ZeRO-3 gathers weights collectively in each one)."""
    per_rank = math.ceil(len(items) / world.size)
    mine = items[world.rank::world.size]
    return mine + items[: per_rank - len(mine)], len(mine)


@torch.no_grad()
def evaluate_loss(model, examples: list[Example], config: TrainConfig, world, pad_id: int) -> float:
    batches = [examples[i:i + config.micro_batch_size] for i in range(0, len(examples), config.micro_batch_size)]
    mine, real = _shard(batches, world)
    total, count = 0.0, 0
    for index, batch in enumerate(mine):
        tensors = collate([[e] for e in batch], pad_id)
        losses = token_losses(_forward(model, tensors, world.device), tensors["labels"].to(world.device))
        if index >= real:
            continue  # a repeat that only keeps ranks in step
        total += float(losses.sum())
        count += int((tensors["labels"][:, 1:] != IGNORE).sum())
    total, count = distributed.all_sum([total, count], world.device)
    return total / max(count, 1)


@torch.no_grad()
def generate_answers(model, tokenizer, examples: list[Example], config: TrainConfig, world,
                     synced: bool) -> tuple[list[str], list[str]]:
    """Greedy answers to each validation prompt, cut at the prompt type's stop strings."""
    add_special = all(ex.prompt_type != "chat" for ex in examples)
    stops = sorted({stop for ex in examples for stop in stop_strings(ex.prompt_type, tokenizer)})
    indexed = list(enumerate(examples))
    mine, _ = _shard(indexed, world)
    answers: list[str] = []
    for i in range(0, len(mine), config.micro_batch_size):
        chunk = mine[i:i + config.micro_batch_size]
        encoded = [tokenizer(ex.prompt, add_special_tokens=add_special)["input_ids"][-config.cutoff_len:]
                   for _, ex in chunk]
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded], device=world.device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=world.device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=config.val_max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, synced_gpus=synced)
        for row in out[:, width:]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            for stop in stops:
                text = text.split(stop)[0]
            answers.append(text.strip())
    gathered = distributed.all_gather_strings([f"{i}\t{a}" for (i, _), a in zip(mine, answers)])
    by_index = {}
    for part in gathered:
        for item in part:
            index, answer = item.split("\t", 1)
            by_index[int(index)] = answer
    predictions = [by_index[i] for i in range(len(examples))]
    return predictions, [ex.reference for ex in examples]


def _forward(model, tensors: dict, device: str):
    inputs = {k: tensors[k].to(device) for k in ("input_ids", "attention_mask", "position_ids") if k in tensors}
    return model(**inputs, use_cache=False).logits


# ---------------------------------------------------------------- outputs
def check_output_dir(config: TrainConfig) -> None:
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise TrainError(f"--output_dir={out} is a file; choose a directory")
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) and not config.resume_from_checkpoint:
        raise TrainError(f"--output_dir={out} already exists and is not empty; choose a new directory, or "
                         f"continue it with --resume_from_checkpoint=latest")


def save_final(model, tokenizer, output_dir: Path, save_adapter, is_main: bool) -> None:
    """The adapter and tokenizer at the top of output_dir, each file swapped in atomically."""
    staging = Path(tempfile.mkdtemp(prefix=".final.", dir=output_dir)) if is_main else None
    save_adapter(staging)
    if is_main:
        tokenizer.save_pretrained(staging)
        for f in staging.iterdir():
            os.replace(f, output_dir / f.name)
        shutil.rmtree(staging, ignore_errors=True)


def adapter_saver(model, world, zero3: bool):
    """A function writing the LoRA adapter to a folder; gathers partitioned weights under ZeRO-3."""
    from peft import get_peft_model_state_dict

    def save(folder: Path | None) -> None:
        if zero3:
            import deepspeed

            params = [p for p in model.parameters() if p.requires_grad]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}
        else:
            state = None
        if world.is_main:
            model.save_pretrained(folder, state_dict=state, safe_serialization=True)
    return save


# ---------------------------------------------------------------- the run
def train(config: TrainConfig) -> dict:
    """Fine-tune as configured; return the final metrics (also written to output_dir/metrics.json)."""
    world = distributed.setup(use_deepspeed=bool(config.deepspeed))
    try:
        with run_record.one_writer(config.output_dir, world.is_main):  # one run per output_dir
            return _train(config, world)
    finally:
        distributed.teardown()


def _train(config: TrainConfig, world) -> dict:
    log = Log(world.is_main, config.run_id)
    if world.size > 1 and not config.ddp and not config.deepspeed:
        raise FlagError(f"--ddp=False but {world.size} processes were launched; run one process, or keep --ddp")
    grad_accum = config.gradient_accumulation(world.size)
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
    dtype = models.pick_dtype(world.device, config.fp16, config.bf16)
    model = build_model(config, world.device, dtype)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    block_mask = config.pack and packing_needs_block_mask(model)
    log(f"model: {config.base_model} ({total_params / 1e6:.1f}M params, {trainable / 1e6:.2f}M trainable LoRA, "
        f"{dtype}, {'8-bit' if config.train_8bit else '4-bit' if config.train_4bit else 'unquantized'}) on "
        f"{world.size} x {world.device}" + (", packing with block-diagonal masks" if block_mask else ""))

    # 2. data
    train_examples, val_examples, data_stats = build_data(config, tokenizer, log)
    per_step = grad_accum * world.size
    plan_kw = dict(seed=config.seed, pack=config.pack, group_by_length=config.group_by_length,
                   cutoff_len=config.cutoff_len, world_size=world.size)
    steps_per_epoch = len(epoch_plan(train_examples, config.micro_batch_size, epoch=0, **plan_kw)) // per_step
    if steps_per_epoch == 0:
        raise DataError(f"{len(train_examples)} training rows make fewer micro-batches than one step needs "
                        f"({per_step} x {config.micro_batch_size}); lower --batch_size or add data")
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_epochs * steps_per_epoch)
    eval_every = config.eval_steps or max(1, round(config.eval_epochs * steps_per_epoch))
    t = data_stats["train"]
    log(f"data: {data_stats['data_path']}: {data_stats['rows_read']} rows read, {len(train_examples)} train / "
        f"{len(val_examples)} valid examples; truncated {t['truncated']}, dropped {t['dropped_truncations']}, "
        f"skipped {sum(data_stats['rows_skipped'].values()) + t['skipped_no_answer_in_cutoff'] + t['skipped_render']}"
        + (f"; mixed in {data_stats['mix_in']['rows_added']} rows of {config.data_mix_in_path}"
           if "mix_in" in data_stats else ""))
    log(f"plan: {total_steps} steps ({steps_per_epoch}/epoch), batch {settings['effective_batch_size']} = micro "
        f"{config.micro_batch_size} x {world.size} processes x {grad_accum} accumulation")

    # 3. optimizer, schedule, wrapping
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.lr_scheduler, config.warmup_steps,
                                                                       total_steps))
    engine, zero3 = None, False
    if config.deepspeed:
        import deepspeed

        ds_config = distributed.deepspeed_config(config.deepspeed, batch_size=per_step * config.micro_batch_size,
                                                 micro_batch_size=config.micro_batch_size,
                                                 gradient_accumulation=grad_accum,
                                                 max_grad_norm=config.max_grad_norm, dtype=dtype)
        zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
        engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                               lr_scheduler=scheduler, config=ds_config)
        wrapped = engine
    elif world.size > 1:
        device_ids = [world.local_rank] if world.device.startswith("cuda") else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    else:
        wrapped = model
    save_adapter = adapter_saver(model, world, zero3)

    # 4. resume
    step, history = 0, []
    if resume_from is not None:
        state = checkpoint.load_checkpoint(resume_from, world=world, model=model, optimizer=optimizer,
                                           scheduler=scheduler, engine=engine)
        step, history = state["step"], state["history"]
        log(f"resumed from {resume_from} at step {step}")

    writer = None
    if world.is_main and config.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output_dir / "logs"))
    if world.is_main:  # appends a resume, never rewrites what trained the adapter
        run_record.record_start(output_dir, settings, resume_from, step)

    def metrics_summary() -> dict:
        return {"step": step, "total_steps": total_steps, "history": history, "data": data_stats,
                "run": {"world_size": world.size, "gradient_accumulation": grad_accum, "dtype": str(dtype),
                        "trainable_params": trainable, "total_params": total_params,
                        "packing_block_mask": block_mask, "deepspeed": config.deepspeed or None}}

    def run_eval() -> dict:
        result = {}
        if not val_examples:
            return result
        wrapped.eval()
        result["eval_loss"] = evaluate_loss(wrapped, val_examples, config, world, tokenizer.pad_token_id)
        if config.val_metrics:
            predictions, references = generate_answers(model, tokenizer, val_examples, config, world, synced=zero3)
            result.update({f"eval_{k}": v for k, v in compute_metrics(config.val_metrics, predictions,
                                                                      references).items()})
            result["eval_sample"] = {"prompt": val_examples[0].prompt[-300:], "prediction": predictions[0],
                                     "reference": references[0]}
        wrapped.train()
        return result

    def save(at_step: int) -> None:
        state = {"step": at_step, "epoch": at_step / steps_per_epoch, "history": history, "max_steps": total_steps,
                 "logging_steps": config.logging_steps, "eval_steps": eval_every, "save_steps": config.save_steps,
                 "num_train_epochs": math.ceil(total_steps / steps_per_epoch),
                 "train_batch_size": config.micro_batch_size}
        checkpoint.save_checkpoint(config.output_dir, at_step, world=world, save_adapter=save_adapter,
                                   optimizer=optimizer, scheduler=scheduler, engine=engine, trainer_state=state,
                                   save_total_limit=config.save_total_limit, settings=settings)

    # 5. the loop
    wrapped.train()
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not world.is_main, dynamic_ncols=True)
    run_tokens, run_seconds, window = 0.0, 0.0, {"loss": 0.0, "learned": 0.0, "tokens": 0.0, "seconds": 0.0}
    epoch, plan = -1, []
    while step < total_steps:
        if step // steps_per_epoch != epoch:
            epoch = step // steps_per_epoch
            plan = epoch_plan(train_examples, config.micro_batch_size, epoch=epoch, **plan_kw)
        in_epoch = step % steps_per_epoch
        mine = plan[in_epoch * per_step:(in_epoch + 1) * per_step][world.rank::world.size]
        started = time.perf_counter()
        batches = [collate(b, tokenizer.pad_token_id, block_mask=block_mask, mask_dtype=dtype) for b in mine]
        local_learned = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        (global_learned,) = distributed.all_sum([local_learned], world.device)
        loss_sum = 0.0
        for k, b in enumerate(batches):
            last = k == len(batches) - 1
            sync = contextlib.nullcontext() if last or engine is not None or world.size == 1 else wrapped.no_sync()
            with sync:
                losses = token_losses(_forward(wrapped, b, world.device), b["labels"].to(world.device))
                # Mean over every learned token of the global batch, whatever the row lengths.
                loss = losses.sum() * world.size / max(global_learned, 1)
                if engine is not None:
                    engine.backward(loss, scale_wrt_gas=False)
                    engine.step()
                else:
                    loss.backward()
            loss_sum += float(losses.detach().sum())
        if engine is None:
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        seconds = time.perf_counter() - started
        loss_total, tokens = distributed.all_sum([loss_sum, sum(b["num_tokens"] for b in batches)], world.device)
        for key, value in (("loss", loss_total), ("learned", global_learned), ("tokens", tokens),
                           ("seconds", seconds)):
            window[key] += value
        run_tokens += tokens
        run_seconds += seconds
        bar.update(1)
        if step % config.logging_steps == 0 or step == total_steps:
            record = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                      "loss": window["loss"] / max(window["learned"], 1),
                      "lr": scheduler.get_last_lr()[0], "tokens_per_s": window["tokens"] / max(window["seconds"], 1e-9),
                      "peak_memory_gib": peak_memory_gib(world.device)}
            window = dict.fromkeys(window, 0.0)
            if step % eval_every == 0 or step == total_steps:
                record.update(run_eval())
            history.append(record)
            log(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in record.items() if k != "eval_sample"))
            if writer:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key != "step":
                        writer.add_scalar(f"{'eval' if key.startswith('eval_') else 'train'}/{key}", value, step)
        elif step % eval_every == 0:
            history.append({"step": step, **run_eval()})
        if (config.save_steps and step % config.save_steps == 0) or step == total_steps:
            save(step)
            if world.is_main:
                atomic.write_json(output_dir / "metrics.json", metrics_summary())
    bar.close()

    # 6. final outputs
    save_final(model, tokenizer, output_dir, save_adapter, world.is_main)
    final = metrics_summary()
    if engine is None:  # replicas must hold identical adapters; ZeRO shards them instead
        checksum = f"{sum(float(p.detach().double().sum()) for p in params):.10e}"
        final["run"]["rank_adapter_checksums"] = [c for part in distributed.all_gather_strings([checksum])
                                                  for c in part]
    last_train = next((h for h in reversed(history) if "loss" in h), {})
    last_eval = next((h for h in reversed(history) if "eval_loss" in h), {})
    final.update({"train_loss": last_train.get("loss"), "tokens_per_s": run_tokens / max(run_seconds, 1e-9),
                  "train_tokens": run_tokens, "train_seconds": run_seconds,
                  "peak_memory_gib": peak_memory_gib(world.device),
                  **{k: v for k, v in last_eval.items() if k.startswith("eval_")}})
    if world.is_main:
        atomic.write_json(output_dir / "metrics.json", final)
        if writer:
            writer.close()
        t = data_stats["train"]
        log(f"done: {step} steps, train loss {final['train_loss']:.4f}"
            + (f", eval loss {final['eval_loss']:.4f}" if "eval_loss" in final else "")
            + f", {final['tokens_per_s']:.0f} tokens/s, peak {final['peak_memory_gib']:.2f} GiB, "
              f"truncated {t['truncated']} / dropped {t['dropped_truncations']} rows -> {output_dir}")
    return final
