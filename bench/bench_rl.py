"""Online RLHF speed: sftkit's PPO and GRPO (finetune.py --stage=ppo/grpo) against TRL's GRPOTrainer, the
baseline, on the same model, prompts, reward model, group size and LoRA, in the same run.

Per optimizer step (median of the steps after the first, which pays for warm-up): rollout seconds
(sampling, scoring, log-probs), update seconds (forward, backward, optimizer), rollout tokens/s
(answer tokens sampled per rollout second), update tokens/s (prompt + answer tokens per update
second), and each run's peak memory (resident set of its own process: policy, reference, reward
model). Every run is its own process. Both sides: a new LoRA adapter (the same rank, alpha and target
modules) on the base model, KL coefficient 0.05 (TRL's ``beta``), one update per rollout batch of
``batch`` answers (``group`` per prompt) in micro-batches of ``micro``, no dropout, the reward model
scored by sftkit's scorer (for TRL, a reward function calling it). TRL stops answers at EOS only;
sftkit also at the prompt type's stop strings, so answer lengths differ: compare tokens/s.

TRL (TRL_VERSION) is the baseline only: installed into this virtualenv when missing, never a
dependency of sftkit.

    .venv/bin/python bench/bench_rl.py [--base_model=smollm2-135m-instruct] [--steps=4] [--reward_model=DIR]
"""
from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
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

TRL_VERSION = "1.16.0"  # the newest release; it asks for transformers >= 4.56.2 and runs on 5.23
PREFERENCES = REPO / "data" / "preference_sample.json"


@dataclass
class BenchRLConfig:
    base_model: str = flags.flag(DEFAULT_BASE_MODEL, "Policy model (alias, hub id or directory).")
    reward_model: str = flags.flag("", "Reward model directory (empty: train one, 4 steps of --stage=rm on the "
                                       "bundled pairs, before timing).")
    steps: int = flags.flag(4, "Optimizer steps per run (the first is not counted).")
    batch: int = flags.flag(16, "Answers per optimizer step.")
    micro: int = flags.flag(8, "Answers per forward pass.")
    group: int = flags.flag(4, "Answers per prompt (GRPO's group size).")
    max_new_tokens: int = flags.flag(48, "Longest answer.")
    cutoff_len: int = flags.flag(256, "Longest prompt + answer.")
    learning_rate: float = flags.flag(5e-4, "Learning rate of every run.")
    bf16: bool = flags.flag(False, "Train in bfloat16 (on a CPU: autocast) on both sides.")
    only: str = flags.flag("ppo,grpo,trl", "Runs to make (comma-separated): ppo, grpo, trl.")
    child: str = flags.flag("", "Internal: run TRL's trainer in this process and print its measurements.")
    out: str = flags.flag("", "Internal: the scratch folder of a child run.")


def common_flags(cfg: BenchRLConfig) -> dict:
    return dict(base_model=cfg.base_model, data_path=str(PREFERENCES), reward_model=cfg.reward_model,
                max_steps=cfg.steps, batch_size=cfg.batch, micro_batch_size=cfg.micro, rollouts_per_prompt=cfg.group,
                max_new_tokens=cfg.max_new_tokens, cutoff_len=cfg.cutoff_len, learning_rate=cfg.learning_rate,
                lr_scheduler="constant", warmup_steps=0, lora_dropout=0.0, kl_coef=0.05, temperature=1.0,
                bf16=cfg.bf16, val_set_size=0, save_steps=0, report_to="none", seed=0)


def steady(values: list[float]) -> float:
    return statistics.median(values[1:] or values)


def run_sftkit(stage: str, cfg: BenchRLConfig, scratch: Path) -> dict:
    out = scratch / stage
    flags_ = {**common_flags(cfg), "stage": stage, "output_dir": str(out)}
    cmd = [sys.executable, str(REPO / "finetune.py"), *(f"--{k}={v}" for k, v in flags_.items())]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"bench_rl: {stage} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    history = [h for h in metrics["history"] if "reward" in h]
    rollout = [h["rollout_s"] for h in history]
    update = [h["update_s"] for h in history]
    answer_tokens = [h["answer_tokens"] * cfg.batch for h in history]
    return {"rollout_s": steady(rollout), "update_s": steady(update),
            "rollout_tokens_per_s": steady([t / r for t, r in zip(answer_tokens, rollout)]),
            "update_tokens_per_s": steady([h["tokens_per_s"] for h in history]),
            "answer_tokens": steady([h["answer_tokens"] for h in history]), "peak_gib": metrics["peak_memory_gib"],
            "reward": [round(h["reward"], 3) for h in history]}


def ensure_trl() -> None:
    if importlib.util.find_spec("trl") is None:
        print(f"bench_rl: installing trl=={TRL_VERSION} for the baseline", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"trl=={TRL_VERSION}"], check=True)


def run_trl(cfg: BenchRLConfig, scratch: Path) -> dict:
    ensure_trl()
    args = [f"--{k}={v}" for k, v in asdict(cfg).items() if k not in ("child", "out")]
    done = subprocess.run([sys.executable, __file__, *args, "--child=trl", f"--out={scratch / 'trl'}"],
                          capture_output=True, text=True, cwd=REPO)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"bench_rl: TRL failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def trl_child(cfg: BenchRLConfig) -> None:
    """TRL's GRPOTrainer with the settings sftkit's GRPO run uses; prints the same measurements."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sftkit import models
    from sftkit.reward import RewardModelScorer
    from sftkit.train.rollouts import read_prompts

    torch.manual_seed(0)
    path = models.resolve_base_model(cfg.base_model)
    tokenizer = models.load_tokenizer(path, padding_side="left")
    prompts, _ = read_prompts(str(PREFERENCES), {}, "human_bot", tokenizer, cfg.cutoff_len - cfg.max_new_tokens)
    question = {p.text: p.question for p in prompts}
    scorer = RewardModelScorer(cfg.reward_model, device="cpu" if not torch.cuda.is_available() else None,
                               batch_size=cfg.micro, max_length=cfg.cutoff_len)

    def reward_model(prompts, completions, **kwargs):  # the same scorer sftkit's runs use
        return scorer.score([question[p] for p in prompts], [c.strip() for c in completions])

    targets = models.lora_target_modules(models.load_model(path, device="cpu"))
    args = GRPOConfig(output_dir=cfg.out, max_steps=cfg.steps, per_device_train_batch_size=cfg.micro,
                      gradient_accumulation_steps=cfg.batch // cfg.micro, num_generations=cfg.group,
                      max_completion_length=cfg.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                      learning_rate=cfg.learning_rate, lr_scheduler_type="constant", warmup_steps=0, beta=0.05,
                      logging_steps=1, save_strategy="no", report_to="none", seed=0, bf16=cfg.bf16,
                      use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    trainer = GRPOTrainer(model=path, reward_funcs=reward_model, args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_list([{"prompt": p.text} for p in prompts]),
                          peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                                                 task_type="CAUSAL_LM"))
    steps: list[dict] = []
    generate = trainer._generate_and_score_completions

    def timed_generate(inputs):
        started = time.perf_counter()
        output = generate(inputs)
        steps[-1]["rollout_s"] += time.perf_counter() - started
        steps[-1]["answer_tokens"] += int(output["completion_mask"].sum())
        steps[-1]["tokens"] += int(output["prompt_mask"].sum() + output["completion_mask"].sum())
        return output

    trainer._generate_and_score_completions = timed_generate

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            steps.append({"started": time.perf_counter(), "rollout_s": 0.0, "answer_tokens": 0, "tokens": 0})

        def on_step_end(self, *args, **kwargs):
            steps[-1]["step_s"] = time.perf_counter() - steps[-1].pop("started")

    trainer.add_callback(StepTimer())
    trainer.train()
    rewards = [round(h["reward"], 3) for h in trainer.state.log_history if "reward" in h]
    update = [s["step_s"] - s["rollout_s"] for s in steps]
    print("RESULT " + json.dumps({
        "rollout_s": steady([s["rollout_s"] for s in steps]), "update_s": steady(update),
        "rollout_tokens_per_s": steady([s["answer_tokens"] / s["rollout_s"] for s in steps]),
        "update_tokens_per_s": steady([s["tokens"] / u for s, u in zip(steps, update)]),
        "answer_tokens": steady([s["answer_tokens"] / cfg.batch for s in steps]),
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "reward": rewards}), flush=True)


def train_reward_model(cfg: BenchRLConfig, scratch: Path) -> str:
    out = scratch / "rm"
    cmd = [sys.executable, str(REPO / "finetune.py"), "--stage=rm", f"--base_model={cfg.base_model}",
           f"--data_path={PREFERENCES}", f"--output_dir={out}", "--max_steps=4", "--val_set_size=0", "--save_steps=0",
           "--report_to=none", f"--cutoff_len={cfg.cutoff_len}", "--learning_rate=1e-3"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"bench_rl: training the reward model failed:\n{done.stderr[-3000:]}")
    return str(out)


def main(cfg: BenchRLConfig) -> None:
    if cfg.child == "trl":
        return trl_child(cfg)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    scratch = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    if not cfg.reward_model:
        cfg.reward_model = train_reward_model(cfg, scratch)
    runs = [name.strip() for name in cfg.only.split(",") if name.strip()]
    results = {}
    for name in runs:
        print(f"bench_rl: {name} ...", file=sys.stderr, flush=True)
        results[name] = run_trl(cfg, scratch) if name == "trl" else run_sftkit(name, cfg, scratch)
    print(f"\nonline RLHF on {cfg.base_model}: {cfg.batch} answers/step ({cfg.batch // cfg.group} prompts x "
          f"{cfg.group}), micro-batch {cfg.micro}, up to {cfg.max_new_tokens} new tokens, LoRA r=8, "
          f"{'bf16' if cfg.bf16 else 'float32'}, median of steps 2-{cfg.steps}")
    print(f"{'run':<20}{'rollout s':>10}{'update s':>10}{'rollout tok/s':>15}{'update tok/s':>14}"
          f"{'answer tok':>12}{'peak GiB':>10}{'step vs TRL':>13}")
    baseline = results.get("trl")
    for name, r in results.items():
        label = {"trl": "TRL GRPO (baseline)", "grpo": "sftkit GRPO", "ppo": "sftkit PPO"}[name]
        step = r["rollout_s"] + r["update_s"]
        ratio = f"{(baseline['rollout_s'] + baseline['update_s']) / step:.2f}x" if baseline else "-"
        print(f"{label:<20}{r['rollout_s']:>10.2f}{r['update_s']:>10.2f}{r['rollout_tokens_per_s']:>15.1f}"
              f"{r['update_tokens_per_s']:>14.1f}{r['answer_tokens']:>12.1f}{r['peak_gib']:>10.2f}{ratio:>13}")
    if "ppo" in results and "grpo" in results:
        print(f"\nmemory: PPO peak {results['ppo']['peak_gib']:.2f} GiB vs GRPO {results['grpo']['peak_gib']:.2f} GiB "
              f"(the critic is a value head on the actor: {results['ppo']['peak_gib'] / results['grpo']['peak_gib']:.2f}x)")
    print("step vs TRL: the baseline's step time over this run's (above 1: faster than the baseline)")
    print("rewards per step: " + "; ".join(f"{name} {r['reward']}" for name, r in results.items()))


if __name__ == "__main__":
    flags.main(BenchRLConfig, main, prog="bench/bench_rl.py", summary=__doc__.splitlines()[0])
