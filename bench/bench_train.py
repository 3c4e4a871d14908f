"""Training throughput: naive padding to cutoff_len vs padding per batch vs group_by_length vs pack.

Same model (the embedded SmolLM2-135M-Instruct by default), same rows, same LoRA init and
optimizer in every mode; each mode runs in its own process so peak memory is its own.
Reports non-padding tokens/s, peak memory and the mean training loss; ratios are against the
naive baseline (every row padded to cutoff_len, as fixed-length collators do).

    .venv/bin/python bench/bench_train.py [--rows=96] [--cutoff_len=256] [--base_model=...]
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


@dataclass
class BenchConfig:
    base_model: str = flags.flag(DEFAULT_BASE_MODEL, "Model to train.")
    data_path: str = flags.flag("", "Rows to train on (empty: the bundled sample after create_data.py's five stages, "
                                    "i.e. the length distribution of finalized OIG-style data).")
    rows: int = flags.flag(48, "How many rows every mode trains on.")
    cutoff_len: int = flags.flag(256, "Sequence length (naive pads every row to it; pack fills rows to it).")
    micro_batch_size: int = flags.flag(4, "Rows per forward pass.")
    threads: int = flags.flag(2, "torch CPU threads per mode.")
    mode: str = flags.flag("", "Internal: run one mode and print its result as JSON.")


def run_mode(cfg: BenchConfig) -> dict:
    import resource

    import torch

    from sftkit.models import load_tokenizer
    from sftkit.train.batching import collate, epoch_plan, token_losses
    from sftkit.train.config import TrainConfig
    from sftkit.train.data import load_conversations
    from sftkit.train.loop import build_model, packing_needs_block_mask
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


def main(cfg: BenchConfig) -> None:
    if cfg.mode:
        print("RESULT " + json.dumps(run_mode(cfg)))
        return
    scratch = tempfile.TemporaryDirectory(prefix="bench_train_")
    if not cfg.data_path:
        subprocess.run([sys.executable, str(REPO / "create_data.py"), "all", f"--source={REPO / 'data' / 'sample'}",
                        f"--work_dir={scratch.name}"], check=True, capture_output=True)
        cfg.data_path = str(Path(scratch.name) / "oig_instruct_cleaned.json")
    results = []
    for mode in MODES:
        args = [f"--{k}={v}" for k, v in asdict(cfg).items() if k != "mode"] + [f"--mode={mode}"]
        done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                              env={"OMP_NUM_THREADS": str(cfg.threads), "PATH": "/usr/bin:/bin",
                                   "HOME": str(Path.home()), "TOKENIZERS_PARALLELISM": "false"})
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"bench_train: mode {mode} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
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
