"""Training throughput: batching modes, float32 vs bf16 autocast on the CPU, SFT / RM / DPO step rates, and sftkit vs TRL.

Same model (the embedded SmolLM2-135M-Instruct by default), same rows, same LoRA init and
optimizer in every mode; each mode runs in its own process so peak memory is its own.

* batching: naive padding to cutoff_len vs padding per batch vs group_by_length vs pack; non-padding
  tokens/s, peak memory and mean loss, ratios against the naive baseline (every row padded to
  cutoff_len, as fixed-length collators do);
* objectives: one LoRA step after another through the training loop's own ``train_step`` for each
  stage (sft on packed rows, rm and dpo on the bundled preference pairs), in float32 and under
  bfloat16 autocast; steps/s and tokens/s, ratios against the float32 run of the same stage;
* trl: sftkit's SFT steps against TRL's ``SFTTrainer`` (the baseline, TRL_VERSION, pip-installed into
  this environment by the bench if missing; never a dependency of sftkit) on the same model, the same
  tokenized rows (ids and labels from sftkit's tokenizer, given to TRL pre-tokenized), the same LoRA
  (rank, alpha, no dropout, the same target layers), best-fit-decreasing packing into cutoff_len rows,
  micro_batch_size rows a step, float32, no gradient checkpointing (TRL's defaults, bf16 and
  checkpointing, are switched off to match). Both count non-padding tokens over the wall time from
  the end of the warm-up step to the end of the last one, data loading and collation included.

    .venv/bin/python bench/bench_train.py [--suite=all|batching|objectives|trl] [--rows=48] [--cutoff_len=256]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sftkit import flags  # noqa: E402
from sftkit.models import DEFAULT_BASE_MODEL  # noqa: E402

MODES = ("naive_pad_to_cutoff", "pad_to_longest", "group_by_length", "pack")
TRAINERS = ("sftkit_sft", "trl_sft")
TRL_VERSION = "1.16.0"  # the newest release; it asks for transformers >= 4.56.2 and runs on 5.23
SUITES = ("all", "batching", "objectives", "trl")
OBJECTIVES = tuple(f"{stage}_{precision}" for stage in ("sft", "rm", "dpo") for precision in ("float32", "bf16"))


@dataclass
class BenchConfig:
    base_model: str = flags.flag(DEFAULT_BASE_MODEL, "Model to train.")
    data_path: str = flags.flag("", "Rows to train on (empty: the bundled sample after create_data.py's five stages, "
                                    "i.e. the length distribution of finalized OIG-style data).")
    rows: int = flags.flag(48, "How many rows every mode trains on.")
    cutoff_len: int = flags.flag(256, "Sequence length (naive pads every row to it; pack fills rows to it).")
    micro_batch_size: int = flags.flag(4, "Rows per forward pass.")
    threads: int = flags.flag(2, "torch CPU threads per mode.")
    suite: str = flags.flag("all", "batching, objectives, trl or all.")
    steps: int = flags.flag(4, "Objectives and trl suites: optimizer steps timed per run (after one warm-up step).")
    mode: str = flags.flag("", "Internal: run one mode and print its result as JSON.")


def run_mode(cfg: BenchConfig) -> dict:
    import resource

    import torch

    from sftkit.models import load_tokenizer
    from sftkit.train.batching import collate, epoch_plan
    from sftkit.train.config import TrainConfig
    from sftkit.train.data import load_conversations
    from sftkit.train.loss import CausalLMLoss
    from sftkit.train.modeling import build_causal_lm as build_model
    from sftkit.train.recipes.sft import packing_needs_block_mask
    from sftkit.train.tokenize import IGNORE, tokenize_all

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(cfg.base_model)
    convs, _ = load_conversations(cfg.data_path)
    examples = tokenize_all(convs[:cfg.rows], tokenizer, "human_bot", cfg.cutoff_len, progress=False).examples
    model = build_model(TrainConfig(base_model=cfg.base_model, lora_dropout=0.0), "cpu", torch.float32)
    plan = epoch_plan([len(e.input_ids) for e in examples], cfg.micro_batch_size, seed=0, epoch=0,
                      pack=cfg.mode == "pack", group_by_length=cfg.mode == "group_by_length", cutoff_len=cfg.cutoff_len)
    pad_to = cfg.cutoff_len if cfg.mode == "naive_pad_to_cutoff" else None
    block_mask = packing_needs_block_mask(model)
    lm_loss = CausalLMLoss.for_model(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    tokens = padded = learned = 0
    loss_sum = 0.0
    started = time.perf_counter()
    for index in range(len(plan)):
        batch = [[examples[i] for i in row] for row in plan.batch(index)]
        b = collate(batch, tokenizer.pad_token_id, pad_to=pad_to, block_mask=block_mask)
        losses = lm_loss.token_losses(model, b, "cpu")
        n = int((b["labels"][:, 1:] != IGNORE).sum())
        (losses.sum() / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += b["num_tokens"]
        padded += b["input_ids"].numel()
        learned += n
        loss_sum += float(losses.detach().sum())
    seconds = time.perf_counter() - started
    return {"mode": cfg.mode, "examples": len(examples), "micro_batches": len(plan), "tokens": tokens,
            "padding_share": 1 - tokens / padded, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "loss": loss_sum / learned}


def run_objective(cfg: BenchConfig) -> dict:
    """Steps of one stage through the loop's own train_step (LoRA, one process)."""
    import resource

    import torch

    from sftkit.models import load_tokenizer
    from sftkit.train.config import BUNDLED_PREFERENCES, TrainConfig
    from sftkit.train.distributed import World
    from sftkit.train.loop import Plan, Precision, make_trainer, train_step
    from sftkit.train.recipes.registry import get_recipe

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    stage, precision_name = cfg.mode.split("_")
    world = World(0, 0, 1, "cpu")
    settings = dict(stage=stage, base_model=cfg.base_model, bf16=precision_name == "bf16", lora_dropout=0.0,
                    batch_size=cfg.micro_batch_size, micro_batch_size=cfg.micro_batch_size, val_set_size=0,
                    cutoff_len=cfg.cutoff_len, max_steps=cfg.steps + 1, warmup_steps=0, report_to="none",
                    data_path=cfg.data_path if stage == "sft" else str(BUNDLED_PREFERENCES))
    if stage == "sft":
        settings["pack"] = True
    config = TrainConfig(**settings)
    recipe = get_recipe(config)
    tokenizer = load_tokenizer(cfg.base_model)
    precision = Precision.pick(config, "cpu")
    model = recipe.build_model("cpu", precision.weights, tokenizer)
    recipe.pad_token_id = tokenizer.pad_token_id
    data = recipe.read_data(tokenizer, progress=False)
    data.train = data.train[:cfg.rows]
    started = time.perf_counter()
    recipe.prepare(model, data, world, precision.autocast)
    prepare_seconds = time.perf_counter() - started
    plan = Plan(data.train, config, world, grad_accum=1)
    trainer = make_trainer(model, config, world, 1, precision.weights, plan.total_steps)
    model.train()
    kw = dict(pad_token_id=tokenizer.pad_token_id, world=world, precision=precision, max_grad_norm=1.0)
    train_step(trainer, recipe, plan.micro_batches(0), **kw)  # warm-up: allocator, autocast caches
    tokens = seconds = loss = 0.0
    for step in range(1, cfg.steps + 1):
        sums = train_step(trainer, recipe, plan.micro_batches(step % plan.steps_per_epoch), **kw)
        tokens, seconds, loss = tokens + sums.tokens, seconds + sums.seconds, loss + sums.loss / max(sums.units, 1)
    return {"mode": cfg.mode, "steps": cfg.steps, "tokens": tokens, "seconds": seconds,
            "steps_per_s": cfg.steps / seconds, "tokens_per_s": tokens / seconds, "loss": loss / cfg.steps,
            "prepare_seconds": prepare_seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def mark(marks: list, tokens: float, device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    marks.append((time.perf_counter(), tokens))


def step_rate(marks: list[tuple[float, float]]) -> tuple[float, float]:
    """(tokens, seconds) from the end of the warm-up step (the first mark) to the last step's end."""
    return marks[-1][1] - marks[0][1], marks[-1][0] - marks[0][0]


def sftkit_run(config, tokenizer, rows: int = 0) -> dict:
    """``config.max_steps`` steps of sftkit's own loop (recipe, plan, ``train_step``) on the recipe's
    tokenized rows, with a wall-clock mark at the end of every step."""
    from sftkit.train import distributed
    from sftkit.train.loop import Plan, Precision, make_trainer, train_step
    from sftkit.train.recipes.registry import get_recipe

    world = distributed.setup(use_deepspeed=bool(config.deepspeed))
    recipe = get_recipe(config)
    precision = Precision.pick(config, world.device)
    model = recipe.build_model(world.device, precision.weights, tokenizer)
    recipe.pad_token_id = tokenizer.pad_token_id
    examples = recipe.read_data(tokenizer, progress=False).train
    plan = Plan(examples[:rows] if rows else examples, config, world, grad_accum=1)
    trainer = make_trainer(model, config, world, 1, precision.weights, plan.total_steps)
    trainer.wrapped.train()
    marks, tokens = [], 0.0
    for step in range(config.max_steps):
        sums = train_step(trainer, recipe, plan.micro_batches(step),
                          pad_token_id=tokenizer.pad_token_id, world=world, precision=precision,
                          max_grad_norm=config.max_grad_norm)
        tokens += sums.tokens
        mark(marks, tokens, world.device)
    targets = sorted(model.peft_config["default"].target_modules) if hasattr(model, "peft_config") else []
    return {"marks": marks, "loss": sums.loss / max(sums.units, 1), "lora_targets": targets,
            "packing_efficiency": plan.efficiency, "trainable_params": sum(p.numel() for p in trainer.params)}


def trl_run(config, tokenizer, examples: list, output_dir: str) -> dict:
    """The same steps through TRL's SFTTrainer: the model loaded as sftkit loads it (dtype, 8/4-bit
    settings), sftkit's LoRA settings and target layers, the rows given pre-tokenized (ids and labels),
    BFD packing into ``config.cutoff_len`` rows; a wall-clock mark at the end of every step."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from sftkit import models

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda and config.bf16 else torch.float32
    marks: list = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            mark(marks, float(state.num_input_tokens_seen), device)

    if config.deepspeed:  # one process: the distributed environment a launcher would have set
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                           ("MASTER_PORT", "29500")):
            os.environ.setdefault(key, value)
    kwargs = {"dtype": dtype}
    quant = models.quantization_config(config.train_8bit, config.train_4bit, dtype)
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": 0 if cuda else "cpu"})
    model = AutoModelForCausalLM.from_pretrained(models.resolve_base_model(config.base_model), **kwargs)
    targets = config.lora_target_modules or models.lora_target_modules(model)
    lora = None if config.full_finetune else LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                        lora_dropout=config.lora_dropout, target_modules=targets,
                                                        bias="none", task_type="CAUSAL_LM")
    rows = Dataset.from_dict({"input_ids": [list(map(int, e.input_ids)) for e in examples],
                              "labels": [list(map(int, e.labels)) for e in examples]})
    args = SFTConfig(output_dir=output_dir, max_steps=config.max_steps, per_device_train_batch_size=config.micro_batch_size,
                     gradient_accumulation_steps=1, learning_rate=config.learning_rate, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, packing=True,
                     packing_strategy="bfd", max_length=config.cutoff_len, bf16=dtype == torch.bfloat16, fp16=False,
                     gradient_checkpointing=config.gradient_checkpointing, use_cpu=not cuda, report_to="none",
                     save_strategy="no", logging_steps=1, seed=config.seed, dataloader_num_workers=0,
                     include_num_input_tokens_seen="all", disable_tqdm=True, deepspeed=config.deepspeed or None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, peft_config=lora,
                         callbacks=[StepEnds()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    packed = trainer.train_dataset["input_ids"]
    return {"marks": marks, "loss": losses[-1] if losses else float("nan"), "lora_targets": sorted(targets),
            "packing_efficiency": sum(len(ids) for ids in packed) / (config.cutoff_len * len(packed)),
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


def run_trainer(cfg: BenchConfig) -> dict:
    """Packed LoRA SFT steps through sftkit's loop, or through TRL's SFTTrainer, on the same rows."""
    import resource

    import torch

    from sftkit.models import load_tokenizer
    from sftkit.train.config import TrainConfig
    from sftkit.train.recipes.registry import get_recipe

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(cfg.base_model)
    config = TrainConfig(stage="sft", base_model=cfg.base_model, data_path=cfg.data_path, lora_dropout=0.0,
                         batch_size=cfg.micro_batch_size, micro_batch_size=cfg.micro_batch_size, val_set_size=0,
                         cutoff_len=cfg.cutoff_len, max_steps=cfg.steps + 1, warmup_steps=0, report_to="none",
                         lr_scheduler="constant", pack=True)
    if cfg.mode == "sftkit_sft":
        result = sftkit_run(config, tokenizer, rows=cfg.rows)
    else:
        examples = get_recipe(config).read_data(tokenizer, progress=False).train
        result = trl_run(config, tokenizer, examples[:cfg.rows] if cfg.rows else examples,
                         tempfile.mkdtemp(prefix="bench_trl_"))
    tokens, seconds = step_rate(result.pop("marks"))
    return {"mode": cfg.mode, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, **result,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def ensure_trl() -> None:
    """Install TRL into this environment for the baseline, only if it is missing."""
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        print(f"bench_train: installing trl=={TRL_VERSION} for the baseline", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"trl=={TRL_VERSION}"], check=True)


def print_trainers(cfg: BenchConfig, runs: list[dict]) -> None:
    """One row per trainer: its runs (alternating with the other's, so a changing machine load weighs on
    both alike) pooled as total tokens over total seconds."""
    import trl

    results = []
    for mode in TRAINERS:
        mine = [r for r in runs if r["mode"] == mode]
        tokens, seconds = sum(r["tokens"] for r in mine), sum(r["seconds"] for r in mine)
        results.append({**mine[-1], "tokens_per_s": tokens / seconds, "runs": len(mine)})
    base = next(r for r in results if r["mode"] == "trl_sft")["tokens_per_s"]
    print(f"\nbench_train sftkit vs TRL {trl.__version__} SFTTrainer: {cfg.base_model}, LoRA r8 on "
          f"{', '.join(results[0]['lora_targets'])}, packed (best fit decreasing) into {cfg.cutoff_len}-token rows, "
          f"micro_batch_size {cfg.micro_batch_size}, {cfg.steps} timed steps a run, {results[0]['runs']} runs each "
          f"(alternating), float32, {cfg.threads} CPU threads\n")
    print(f"{'trainer':<22}{'tokens/s':>10}{'vs TRL':>8}{'packing':>9}{'peak GiB':>10}{'last loss':>11}")
    for r in results:
        name = "sftkit" if r["mode"] == "sftkit_sft" else "TRL SFTTrainer"
        print(f"{name:<22}{r['tokens_per_s']:>10.0f}{r['tokens_per_s'] / base:>7.2f}x{r['packing_efficiency']:>9.1%}"
              f"{r['peak_rss_gib']:>10.2f}{r['loss']:>11.3f}")
    print("\nvs TRL: non-padding tokens/s over TRL's, measured in this run the same way (tokens of the timed steps "
          "over their wall time); packing: non-padding tokens / cutoff_len x packed rows")


def run_modes(cfg: BenchConfig, modes) -> list[dict]:
    results = []
    for mode in modes:
        args = [f"--{k}={v}" for k, v in asdict(cfg).items() if k != "mode"] + [f"--mode={mode}"]
        done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                              env={"OMP_NUM_THREADS": str(cfg.threads), "PATH": "/usr/bin:/bin",
                                   "HOME": str(Path.home()), "TOKENIZERS_PARALLELISM": "false",
                                   "HF_HUB_OFFLINE": "1"})
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"bench_train: mode {mode} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
        print(f"bench_train: {mode} done, {results[-1]['tokens_per_s']:.0f} tokens/s", file=sys.stderr, flush=True)
    return results


def print_objectives(cfg: BenchConfig, results: list[dict]) -> None:
    print(f"\nbench_train objectives: {cfg.base_model}, LoRA, micro_batch_size {cfg.micro_batch_size} (rows or "
          f"pairs), cutoff_len {cfg.cutoff_len}, {cfg.steps} timed steps each, {cfg.threads} CPU threads\n")
    print(f"{'stage':<8}{'precision':<22}{'steps/s':>9}{'tokens/s':>10}{'vs fp32':>9}{'peak GiB':>10}{'loss':>8}"
          f"{'prepare s':>11}")
    by_mode = {r["mode"]: r for r in results}
    for r in results:
        stage, precision = r["mode"].split("_")
        base = by_mode.get(f"{stage}_float32", r)["tokens_per_s"]
        label = "float32" if precision == "float32" else "bf16 autocast (fp32 w)"
        print(f"{stage:<8}{label:<22}{r['steps_per_s']:>9.3f}{r['tokens_per_s']:>10.0f}"
              f"{r['tokens_per_s'] / base:>8.2f}x{r['peak_rss_gib']:>10.2f}{r['loss']:>8.3f}{r['prepare_seconds']:>11.1f}")
    print("\nvs fp32: tokens/s over the float32 run of the same stage in this run; sft steps are packed rows, rm and "
          "dpo steps are pairs (two rows each); prepare s: DPO's one-off reference log-probs")


def main(cfg: BenchConfig) -> None:
    if cfg.mode:
        run = run_objective if cfg.mode in OBJECTIVES else run_trainer if cfg.mode in TRAINERS else run_mode
        print("RESULT " + json.dumps(run(cfg)))
        return
    if cfg.suite not in SUITES:
        sys.exit(f"bench_train: --suite must be one of {', '.join(SUITES)}")
    scratch = tempfile.TemporaryDirectory(prefix="bench_train_")
    if not cfg.data_path:
        subprocess.run([sys.executable, str(REPO / "create_data.py"), "all", f"--source={REPO / 'data' / 'sample'}",
                        f"--work_dir={scratch.name}"], check=True, capture_output=True)
        cfg.data_path = str(Path(scratch.name) / "oig_instruct_cleaned.json")
    if cfg.suite in ("all", "trl"):
        ensure_trl()
        print_trainers(cfg, run_modes(cfg, TRAINERS + TRAINERS[::-1]))
    if cfg.suite in ("all", "objectives"):
        print_objectives(cfg, run_modes(cfg, OBJECTIVES))
    if cfg.suite in ("objectives", "trl"):
        return
    results = run_modes(cfg, MODES)
    base = results[0]["tokens_per_s"]
    print(f"\nbench_train: {cfg.base_model}, {results[0]['examples']} rows of {cfg.data_path}, "
          f"cutoff_len {cfg.cutoff_len}, micro_batch_size {cfg.micro_batch_size}, {cfg.threads} CPU threads\n")
    print(f"{'mode':<22}{'batches':>8}{'padding':>9}{'tokens/s':>10}{'vs naive':>10}{'peak GiB':>10}{'loss':>8}")
    for r in results:
        print(f"{r['mode']:<22}{r['micro_batches']:>8}{r['padding_share']:>9.0%}{r['tokens_per_s']:>10.0f}"
              f"{r['tokens_per_s'] / base:>9.2f}x{r['peak_rss_gib']:>10.2f}{r['loss']:>8.3f}")
    print("\nvs naive: non-padding tokens/s over the naive baseline (naive_pad_to_cutoff: every row padded "
          "to cutoff_len), measured in this run")


if __name__ == "__main__":
    flags.main(BenchConfig, main, prog="bench_train.py", summary=__doc__.strip().splitlines()[0])
