"""Training throughput: batching modes, float32 vs bf16 autocast on the CPU, and SFT / RM / DPO step rates.

Same model (the embedded SmolLM2-135M-Instruct by default), same rows, same LoRA init and
optimizer in every mode; each mode runs in its own process so peak memory is its own.

* batching: naive padding to cutoff_len vs padding per batch vs group_by_length vs pack; non-padding
  tokens/s, peak memory and mean loss, ratios against the naive baseline (every row padded to
  cutoff_len, as fixed-length collators do);
* objectives: one LoRA step after another through the training loop's own ``train_step`` for each
  stage (sft on packed rows, rm and dpo on the bundled preference pairs), in float32 and under
  bfloat16 autocast; steps/s and tokens/s, ratios against the float32 run of the same stage.

    .venv/bin/python bench/bench_train.py [--suite=all|batching|objectives] [--rows=48] [--cutoff_len=256]
"""
from __future__ import annotations

import json
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
    suite: str = flags.flag("all", "batching, objectives or all.")
    steps: int = flags.flag(4, "Objectives suite: optimizer steps timed per stage and precision (after one "
                               "warm-up step).")
    mode: str = flags.flag("", "Internal: run one mode and print its result as JSON.")


def run_mode(cfg: BenchConfig) -> dict:
    import resource

    import torch

    from sftkit.models import load_tokenizer
    from sftkit.train.batching import collate, epoch_plan, token_losses
    from sftkit.train.config import TrainConfig
    from sftkit.train.data import load_conversations
    from sftkit.train.modeling import build_causal_lm as build_model
    from sftkit.train.recipes.sft import packing_needs_block_mask
    from sftkit.train.tokenize import IGNORE, tokenize_all

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(cfg.base_model)
    convs, _ = load_conversations(cfg.data_path)
    examples = tokenize_all(convs[:cfg.rows], tokenizer, "human_bot", cfg.cutoff_len, progress=False).examples
    model = build_model(TrainConfig(base_model=cfg.base_model, lora_dropout=0.0), "cpu", torch.float32)
    plan = epoch_plan(examples, cfg.micro_batch_size, seed=0, epoch=0, pack=cfg.mode == "pack",
                      group_by_length=cfg.mode == "group_by_length", cutoff_len=cfg.cutoff_len)
    pad_to = cfg.cutoff_len if cfg.mode == "naive_pad_to_cutoff" else None
    block_mask = packing_needs_block_mask(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    tokens = padded = learned = 0
    loss_sum = 0.0
    started = time.perf_counter()
    for batch in plan:
        b = collate(batch, tokenizer.pad_token_id, pad_to=pad_to, block_mask=block_mask)
        inputs = {k: b[k] for k in ("input_ids", "attention_mask", "position_ids") if k in b}
        losses = token_losses(model(**inputs, use_cache=False).logits, b["labels"])
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
        print("RESULT " + json.dumps(run_objective(cfg) if cfg.mode in OBJECTIVES else run_mode(cfg)))
        return
    if cfg.suite not in ("all", "batching", "objectives"):
        sys.exit("bench_train: --suite must be all, batching or objectives")
    scratch = tempfile.TemporaryDirectory(prefix="bench_train_")
    if not cfg.data_path:
        subprocess.run([sys.executable, str(REPO / "create_data.py"), "all", f"--source={REPO / 'data' / 'sample'}",
                        f"--work_dir={scratch.name}"], check=True, capture_output=True)
        cfg.data_path = str(Path(scratch.name) / "oig_instruct_cleaned.json")
    if cfg.suite in ("all", "objectives"):
        print_objectives(cfg, run_modes(cfg, OBJECTIVES))
    if cfg.suite == "objectives":
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
