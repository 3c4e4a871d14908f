"""GPU checks, each in its own process: real model shapes beside TRL's SFTTrainer, and the embedded
model's checks (LoRA bf16 + sdpa + packing, 4-bit QLoRA, DeepSpeed ZeRO-2 on one GPU, full fine-tuning,
reward-model and DPO steps, generation, PPO and GRPO steps); tokens/s, peak memory and MFU.

``--suite=real`` (the default) trains models of Llama-3.2-1B's and Llama-3.1-8B's shapes built from
their configurations with random weights (no download), on the bundled sample tokenized by a small
local tokenizer, packed best-fit-decreasing into 4096-token rows: LoRA r16 bf16 (1B), QLoRA 4-bit (8B,
gradient checkpointing), full fine-tuning with ZeRO-2 (1B); each once through sftkit's loop and once
through TRL's ``SFTTrainer`` (the baseline, same rows pre-tokenized, same LoRA, packing, precision and
steps; installed from a wheel beside this script or already present), timed the same way (see
bench/bench_train.py: non-padding tokens over wall time, warm-up step excluded). ``--suite=small``
runs the embedded model's checks: offline, the embedded model (or, without its weights, a random
model of SmolLM2-135M's shape: same FLOPs per token, so the same speed; the losses mean nothing).
A check whose package is missing prints ``skipped: X not installed`` and the rest go on.

MFU counts the model FLOPs of parameter matmuls only (see ``flops_per_token``) over the GPU's peak
dense bf16 FLOP/s. ``--tiny`` runs every check for a few steps on tiny random shapes, on the CPU
when there is no GPU, to test this script.

    bash bench/gpu_check.sh [--tiny] [--suite=real|small|all] [--only=llama1b_lora_bf16,rm] [--steps=6]
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
# The published configurations' shapes (Llama-3.2-1B, Llama-3.1-8B); rope scaling left out (same FLOPs).
SHAPES = {
    "llama_1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=8192,
                     rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "llama_8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
                     rope_theta=500000.0, tie_word_embeddings=False, rms_norm_eps=1e-5),
}
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rope_theta=10000.0,
                  tie_word_embeddings=True, rms_norm_eps=1e-5)
ZERO2 = str(REPO / "configs" / "deepspeed" / "zero2.json")
REAL_CUTOFF = 4096
REAL_CHECKS = {
    # name: (shape, TrainConfig settings, packages it needs, needs CUDA)
    "llama1b_lora_bf16": ("llama_1b", dict(lora_r=16, lora_alpha=32, micro_batch_size=4), [], False),
    "llama8b_qlora_4bit": ("llama_8b", dict(lora_r=16, lora_alpha=32, train_4bit=True, micro_batch_size=2,
                                            gradient_checkpointing=True), ["bitsandbytes"], True),
    "llama1b_full_zero2": ("llama_1b", dict(lora_r=0, learning_rate=2e-5, micro_batch_size=4, deepspeed=ZERO2),
                           ["deepspeed"], False),
}
TRAINERS = ("sftkit", "trl")
CHECKS = {
    # name: (TrainConfig settings, packages it needs, needs CUDA)
    "lora_bf16_pack": (dict(stage="sft", pack=True), [], False),
    "qlora_4bit": (dict(stage="sft", pack=True, train_4bit=True), ["bitsandbytes"], True),
    "zero2": (dict(stage="sft", pack=True, deepspeed=ZERO2), ["deepspeed"], False),
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


def flops_per_token(matmul_params: int, adapter_params: int, full: bool) -> float:
    """Model FLOPs of one trained token, parameter matmuls only.

    Each weight of a matmul costs 2 FLOPs forward, 2 backward for the gradient of its input, and 2
    more for its own gradient only when it is trained. So full fine-tuning costs 6·N; LoRA costs
    4·N for the frozen base (no weight gradients: the input gradients still flow down to the lowest
    adapter) plus 6·N_lora for the adapters:

        FLOPs/token = 4·N + 2·N·[full] + 6·N_lora

    N counts every linear layer's weights and the LM head (the input embedding is a lookup, no
    matmul, unless it is tied to the head and so counted once as the head); N_lora is 0 for full
    fine-tuning. Attention scores (QKᵀ, AV) and recomputation by gradient checkpointing are not
    counted (PaLM's model-FLOPs convention leaves recomputation out), so MFU is a lower bound.
    A 4-bit base does the same matmuls after dequantizing, so it is counted the same.
    """
    return 4 * matmul_params + (2 * matmul_params if full else 0) + 6 * adapter_params


def matmul_params(config) -> int:
    """N of :func:`flops_per_token`: the weights of the model's linear layers (LM head included)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


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


def build_shape(shape: str, out: Path, tiny: bool) -> str:
    """A model directory of ``shape`` with random weights and the small local tokenizer (no download);
    bfloat16 and built on the GPU when there is one (an 8B model in seconds, 16 GB on disk)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_models import build_tokenizer

    target = out / (f"tiny_{shape}" if tiny else shape)
    if (target / "config.json").is_file():
        return str(target)
    tokenizer = build_tokenizer(target)
    dims = dict(TINY_SHAPE, vocab_size=len(tokenizer)) if tiny else SHAPES[shape]
    config = LlamaConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **dims)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(target, safe_serialization=True)
    return str(target)


def measured(marks: list) -> tuple[float, float]:
    """(non-padding tokens/s over the timed steps, peak GiB: GPU memory allocated, or the process's RSS)."""
    import resource

    import torch

    from bench.bench_train import step_rate

    tokens, seconds = step_rate(marks)
    if torch.cuda.is_available():
        return tokens / seconds, torch.cuda.max_memory_allocated() / 2**30
    return tokens / seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_real_check(name: str, trainer: str, model: str, out: Path, tiny: bool, steps: int) -> dict:
    """One real-shape check through sftkit's loop or TRL's SFTTrainer (bench/bench_train.py's runs)."""
    import torch
    from transformers import AutoConfig

    from bench.bench_train import sftkit_run, trl_run
    from sftkit.models import load_tokenizer
    from sftkit.train.config import TrainConfig
    from sftkit.train.recipes.registry import get_recipe

    _, settings, _, _ = REAL_CHECKS[name]
    settings = dict(settings, cutoff_len=REAL_CUTOFF)
    if tiny:
        settings.update(cutoff_len=64, micro_batch_size=2)
    config = TrainConfig(stage="sft", base_model=model, output_dir=str(out / f"{name}_{trainer}"), pack=True,
                         max_steps=steps + 1, val_set_size=0, save_steps=0, report_to="none", warmup_steps=0,
                         lr_scheduler="constant", lora_dropout=0.0, bf16=torch.cuda.is_available(),
                         local_files_only=True, batch_size=settings["micro_batch_size"], **settings)
    tokenizer = load_tokenizer(model)
    if trainer == "sftkit":
        result = sftkit_run(config, tokenizer)
    else:
        examples = get_recipe(config).read_data(tokenizer, progress=False).train
        result = trl_run(config, tokenizer, examples, str(out / f"{name}_trl"))
    tokens_per_s, peak = measured(result["marks"])
    adapters = 0 if config.full_finetune else result["trainable_params"]
    return {"tokens_per_s": tokens_per_s, "peak_memory_gib": peak,
            "flops_per_token": flops_per_token(matmul_params(AutoConfig.from_pretrained(model)), adapters,
                                               config.full_finetune),
            "loss": result["loss"],
            "note": f"packing {result['packing_efficiency']:.1%}, {result['trainable_params'] / 1e6:.2f}M trainable"}


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
    from transformers import AutoConfig

    run = metrics["run"]
    adapters = 0 if run["full_finetune"] else run["trainable_params"]
    return {"tokens_per_s": statistics.median(steady), "peak_memory_gib": metrics["peak_memory_gib"],
            "flops_per_token": flops_per_token(matmul_params(AutoConfig.from_pretrained(model)), adapters,
                                               run["full_finetune"]),
            "loss": metrics["train_loss"],
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
    return {"tokens_per_s": plain[16], "peak_memory_gib": peak,
            "flops_per_token": 2 * sum(p.numel() for p in lm.parameters()), "note": f"greedy, {new_tokens} new tokens; model.generate batch 1: {plain[1]:.0f}, "
                                     f"batch 16: {plain[16]:.0f} tokens/s; sftkit engine batch 1: {engine[1]:.0f}, "
                                     f"batch 16: {engine[16]:.0f} tokens/s; one raw decode step "
                                     f"{seconds / steps * 1000:.1f} ms"}


def child(args) -> None:
    """One check (or a model build) in this process; prints its result as JSON."""
    out = Path(args.out)
    if args.build:
        result = {"model": build_shape(args.build, out, args.tiny)}
    elif args.trainer:
        result = run_real_check(args.check, args.trainer, args.model, out, args.tiny, args.steps)
    elif CHECKS[args.check][0] is None:
        result = run_generate_check(args.model, args.tiny)
    elif args.check in RL_CHECKS:
        result = run_rl_check(args.check, args.model, out, args.tiny, args.steps)
    else:
        result = run_train_check(args.check, args.model, out, args.tiny, args.steps)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(args, timeout: int, **extra) -> tuple[str, dict | None]:
    """("ok", result) of one child process, or (why it failed, None)."""
    cmd = [sys.executable, __file__, f"--out={args.scratch}", f"--steps={args.steps}",
           *(f"--{k}={v}" for k, v in extra.items())] + (["--tiny"] if args.tiny else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"failed: over {timeout} s", None
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        lines = [ln for ln in done.stderr.replace("\r", "\n").splitlines()
                 if ln.strip() and "it/s]" not in ln and "s/it]" not in ln]
        return f"failed (exit {done.returncode}): {(lines or ['no output'])[-1][:300]}", None
    return "ok", json.loads(line[len("RESULT "):])


def real_rows(args, names: list[str], cuda: bool, log) -> list:
    """Each real-shape check through sftkit, then through TRL; models built once per shape."""
    rows, models = [], {}
    for name in names:
        shape, _, packages, needs_cuda = REAL_CHECKS[name]
        for trainer in TRAINERS:
            absent = missing(packages + (["trl"] if trainer == "trl" else []))
            if absent:
                status, result = f"skipped: {', '.join(absent)} not installed", None
            elif needs_cuda and not cuda and not args.tiny:
                status, result = "skipped: needs CUDA", None
            else:
                if shape not in models:
                    models[shape] = run_child(args, args.check_timeout, build=shape)
                    log(f"  built {shape}: {models[shape][0]}")
                built, model = models[shape]
                status, result = (built, None) if model is None else \
                    run_child(args, args.check_timeout, check=name, trainer=trainer, model=model["model"])
            rows.append((name, trainer, status, result))
            log(f"  {name} ({trainer}): " + (status if result is None else f"ok, {result['tokens_per_s']:.0f} tokens/s"))
    return rows


def small_rows(args, names: list[str], cuda: bool, log) -> list:
    model, what = prepare_model(Path(args.scratch), args.tiny)
    log(f"gpu_check small: model: {what}")
    rows = []
    for name in names:
        _, packages, needs_cuda = CHECKS[name]
        absent = missing(packages)
        if absent:
            status, result = f"skipped: {', '.join(absent)} not installed", None
        elif needs_cuda and not cuda and not args.tiny:
            status, result = "skipped: needs CUDA", None
        else:
            status, result = run_child(args, args.check_timeout, check=name, model=model)
        rows.append((name, "sftkit", status, result))
        log(f"  {name}: " + (status if result is None else f"ok, {result['tokens_per_s']:.0f} tokens/s"))
    return rows


def print_table(rows: list, flops: float | None, device_name: str) -> None:
    trl = {name: r for name, trainer, _, r in rows if trainer == "trl" and r is not None}
    print(f"\n{'check':<20}{'trainer':<9}{'tokens/s':>11}{'peak GiB':>10}{'MFU':>8}{'vs TRL':>8}  note")
    for name, trainer, status, r in rows:
        if r is None:
            print(f"{name:<20}{trainer:<9}{'-':>11}{'-':>10}{'-':>8}{'-':>8}  {status}")
            continue
        mfu = r["flops_per_token"] * r["tokens_per_s"] / flops if flops else None
        ratio = r["tokens_per_s"] / trl[name]["tokens_per_s"] if name in trl else None
        print(f"{name:<20}{trainer:<9}{r['tokens_per_s']:>11.0f}{r['peak_memory_gib']:>10.2f}"
              f"{(f'{mfu:.1%}' if mfu is not None else 'n/a'):>8}{(f'{ratio:.2f}x' if ratio else '-'):>8}  {r['note']}")
    print("\nMFU: model FLOPs per token (4·N + 2·N if every weight is trained + 6·N_lora; N: weights of the linear "
          "layers and LM head; attention scores not counted) x tokens/s / "
          + (f"{flops:.3g} FLOP/s peak dense bf16 of {device_name}" if flops else f"n/a (no peak known for "
                                                                                  f"{device_name})")
          + "; generation: 2 x params. vs TRL: tokens/s over TRL SFTTrainer's in this run (same shape, rows, "
            "LoRA, packing, steps).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few steps of tiny random models (tests this script)")
    parser.add_argument("--suite", default="real", choices=("real", "small", "all"),
                        help="real: Llama-1B/8B shapes beside TRL (default); small: the embedded model's checks")
    parser.add_argument("--only", default="", help="comma-separated checks (default: the suite's): "
                                                   + ", ".join([*REAL_CHECKS, *CHECKS]))
    parser.add_argument("--steps", type=int, default=0,
                        help="timed optimizer steps per check (default: real 5 after a warm-up step, small 20; 3 tiny)")
    parser.add_argument("--check_timeout", type=int, default=0, help="seconds each check may take (default: real "
                                                                    "200, small 100)")
    for hidden in ("check", "model", "out", "trainer", "build"):
        parser.add_argument(f"--{hidden}", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.tiny else 5 if args.suite == "real" else 20)
    args.check_timeout = args.check_timeout or (200 if args.suite != "small" else 100)
    if args.check or args.build:
        return child(args)
    import torch

    suites = {"real": list(REAL_CHECKS), "small": list(CHECKS), "all": [*REAL_CHECKS, *CHECKS]}[args.suite]
    names = [n.strip() for n in args.only.split(",") if n.strip()] or suites
    unknown = [n for n in names if n not in REAL_CHECKS and n not in CHECKS]
    if unknown:
        sys.exit(f"gpu_check: unknown checks {unknown}; choose from {', '.join([*REAL_CHECKS, *CHECKS])}")
    cuda = torch.cuda.is_available()
    flops, device_name = peak_flops()
    args.scratch = tempfile.mkdtemp(prefix="gpu_check_")
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"{message} ({time.monotonic() - started:.0f} s elapsed)", flush=True)

    print(f"gpu_check: {device_name}, torch {torch.__version__}", flush=True)
    if not cuda and not args.tiny:
        print("gpu_check: no CUDA device; run with --tiny to test the script on the CPU", flush=True)
    rows = real_rows(args, [n for n in names if n in REAL_CHECKS], cuda, log)
    if any(n in CHECKS for n in names):
        rows += small_rows(args, [n for n in names if n in CHECKS], cuda, log)
    print_table(rows, flops, device_name)
    print(f"gpu_check: {sum(s == 'ok' for *_, s, _ in rows)}/{len(rows)} checks ok in "
          f"{time.monotonic() - started:.0f} s")
    if any(s.startswith("failed") for *_, s, _ in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
