"""Peak memory of one training micro-batch: the plain loss (whole float32 logits) vs the chunked loss.

Same model (the embedded SmolLM2-135M-Instruct, 49k vocabulary), same packed rows of the bundled
sample (micro_batch_size rows of cutoff_len tokens), same LoRA init; each loss runs in its own
process so its peak resident memory is its own. The baseline is the plain computation in the same
run: ``model(...).logits`` then cross entropy over them in float32 (the loss of earlier releases).
Prints peak RSS, seconds per forward+backward, the loss and the largest gradient difference.

    .venv/bin/python bench/bench_loss_memory.py [--micro_batch_size=8] [--cutoff_len=512] [--method=lora|full|both]
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

LOSSES = ("plain", "chunked")


@dataclass
class BenchConfig:
    base_model: str = flags.flag(DEFAULT_BASE_MODEL, "Model to train.")
    data_path: str = flags.flag("", "Rows to pack (empty: the bundled sample after create_data.py's five stages).")
    micro_batch_size: int = flags.flag(8, "Packed rows per forward pass.")
    cutoff_len: int = flags.flag(512, "Tokens per packed row.")
    method: str = flags.flag("both", "lora, full (every weight trained; SmolLM2's head is tied to the embeddings) "
                                     "or both.")
    gradient_checkpointing: bool = flags.flag(False, "Recompute the layers' activations in the backward (the "
                                                     "logits then weigh more in the peak).")
    repeats: int = flags.flag(1, "Forward+backward passes timed per loss after the first (0: time the first).")
    threads: int = flags.flag(2, "torch CPU threads.")
    loss: str = flags.flag("", "Internal: run one loss and print its result as JSON.")
    grads_out: str = flags.flag("", "Internal: where the child writes its gradients.")


def run_loss(cfg: BenchConfig) -> dict:
    import resource

    import torch
    from safetensors.torch import save_file

    from sftkit.models import load_tokenizer
    from sftkit.train.batching import collate, epoch_plan
    from sftkit.train.config import TrainConfig
    from sftkit.train.data import load_conversations
    from sftkit.train.loss import CausalLMLoss
    from sftkit.train.modeling import build_causal_lm
    from sftkit.train.recipes.sft import packing_needs_block_mask
    from sftkit.train.tokenize import tokenize_all

    torch.set_num_threads(cfg.threads)
    tokenizer = load_tokenizer(cfg.base_model)
    convs, _ = load_conversations(cfg.data_path)
    examples = tokenize_all(convs, tokenizer, "human_bot", cfg.cutoff_len, progress=False).examples
    lengths = [len(e.input_ids) for e in examples]
    plan = epoch_plan(lengths, cfg.micro_batch_size, seed=0, epoch=0, pack=True, cutoff_len=cfg.cutoff_len)
    torch.manual_seed(0)
    model = build_causal_lm(TrainConfig(base_model=cfg.base_model, lora_dropout=0.0,
                                        lora_r=0 if cfg.method == "full" else 8,
                                        gradient_checkpointing=cfg.gradient_checkpointing), "cpu", torch.float32)
    model.train()
    batch = collate([[examples[i] for i in row] for row in plan.batch(0)], tokenizer.pad_token_id,
                    pad_to=cfg.cutoff_len, block_mask=packing_needs_block_mask(model))
    lm_loss = CausalLMLoss(chunked=False) if cfg.loss == "plain" else CausalLMLoss.for_model(model)
    assert cfg.loss == "plain" or lm_loss.chunked
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    seconds = []
    for _ in range(cfg.repeats + 1):
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        loss = lm_loss.loss_sum(model, batch, "cpu")
        loss.backward()
        seconds.append(time.perf_counter() - started)
    grads = {n: p.grad.contiguous() for n, p in model.named_parameters() if p.grad is not None}
    save_file(grads, cfg.grads_out)
    learned = int((batch["labels"][:, 1:] != -100).sum())
    return {"loss": cfg.loss, "method": cfg.method, "mean_loss": float(loss) / learned,
            "tokens": batch["num_tokens"], "shape": list(batch["input_ids"].shape),
            "seconds": min(seconds[1:] or seconds), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "rss_before_gib": before}


def main(cfg: BenchConfig) -> None:
    if cfg.loss:
        print("RESULT " + json.dumps(run_loss(cfg)))
        return
    from safetensors.torch import load_file

    scratch = tempfile.TemporaryDirectory(prefix="bench_loss_")
    if not cfg.data_path:
        subprocess.run([sys.executable, str(REPO / "create_data.py"), "all", f"--source={REPO / 'data' / 'sample'}",
                        f"--work_dir={scratch.name}"], check=True, capture_output=True)
        cfg.data_path = str(Path(scratch.name) / "oig_instruct_cleaned.json")
    methods = ("lora", "full") if cfg.method == "both" else (cfg.method,)
    rows = []
    for method in methods:
        results = {}
        for loss in LOSSES:
            grads = str(Path(scratch.name) / f"{method}_{loss}.safetensors")
            args = [f"--{k}={v}" for k, v in asdict(cfg).items() if k not in ("loss", "grads_out", "method")]
            done = subprocess.run([sys.executable, __file__, *args, f"--method={method}", f"--loss={loss}",
                                   f"--grads_out={grads}"], capture_output=True, text=True,
                                  env={"OMP_NUM_THREADS": str(cfg.threads), "PATH": "/usr/bin:/bin",
                                       "HOME": str(Path.home()), "TOKENIZERS_PARALLELISM": "false",
                                       "HF_HUB_OFFLINE": "1"})
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"bench_loss_memory: {method} {loss} failed:\n{done.stderr[-3000:]}")
            results[loss] = json.loads(line[len("RESULT "):]) | {"grads": load_file(grads)}
            print(f"bench_loss_memory: {method} {loss}: peak {results[loss]['peak_rss_gib']:.2f} GiB",
                  file=sys.stderr, flush=True)
        plain, chunked = results["plain"], results["chunked"]
        grad_diff = max(float((chunked["grads"][k] - plain["grads"][k]).abs().max()) for k in plain["grads"])
        grad_scale = max(float(g.abs().max()) for g in plain["grads"].values())
        assert plain["grads"].keys() == chunked["grads"].keys()
        rows.append((method, plain, chunked, grad_diff, grad_scale))
        del results
    first = rows[0][1]
    print(f"\nbench_loss_memory: {cfg.base_model}, one micro-batch of {first['shape'][0]} packed rows x "
          f"{first['shape'][1]} tokens ({first['tokens']} non-padding), float32, gradient checkpointing "
          f"{'on' if cfg.gradient_checkpointing else 'off'}, {cfg.threads} CPU threads\n")
    print(f"{'method':<8}{'loss':<10}{'peak RSS GiB':>13}{'vs plain':>10}{'s/fwd+bwd':>11}{'mean loss':>12}"
          f"{'|loss diff|':>13}{'max |grad diff|':>17}")
    for method, plain, chunked, grad_diff, grad_scale in rows:
        for r in (plain, chunked):
            diff = abs(r["mean_loss"] - plain["mean_loss"])
            print(f"{method:<8}{r['loss']:<10}{r['peak_rss_gib']:>13.2f}{r['peak_rss_gib'] / plain['peak_rss_gib']:>9.2f}x"
                  f"{r['seconds']:>11.2f}{r['mean_loss']:>12.6f}{diff:>13.2e}"
                  f"{(grad_diff if r is chunked else 0.0):>17.2e}")
        print(f"{'':<8}(largest gradient entry {grad_scale:.2e})")
    print("\nplain: whole float32 logits, the loss of earlier releases (baseline, same run); chunked: "
          "sftkit/train/loss.py. Peak RSS of each process, model and gradients included.")


if __name__ == "__main__":
    flags.main(BenchConfig, main, prog="bench_loss_memory.py", summary=__doc__.strip().splitlines()[0])
