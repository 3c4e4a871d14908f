"""Benchmark of SFT tokenization: the batched tokenizer against a per-row baseline, and the run's
time to the first step and peak memory with the tokenized cache against HF ``datasets``.

    .venv/bin/python bench/bench_tokenize.py [--rows=20000] [--cache_rows=25000,100000] [--workers=0]

Rows are finalize-shaped (``{"input": "<human>: …\\n<bot>: …", "prompt_type": "human_bot"}``), cycled
from the bundled sample's OIG conversations, with the embedded model's tokenizer.

Table 1 (``--rows``): the PER-ROW BASELINE is how sftkit tokenized before: render each row, call the
tokenizer on that one text, then a Python loop over its tokens' offsets to place the labels. Both
must give the same ids and labels (checked); rows/s and the ratio, best of ``--repeats`` runs each.

Table 2 (each of ``--cache_rows``, written as a JSON-lines file): whole ``finetune.py`` processes
with ``--max_steps=1``: the first run (it builds the tokenized cache over ``--workers`` processes)
and a second run (it memory-maps the cache), the seconds from the process start to the training
plan (the step follows), and the peak RSS of the largest process. The DATASETS BASELINE, in the same
run, is a process doing what HF ``datasets`` users do before training: JSON → Arrow
(``load_dataset("json")``) and ``.map`` with the fast tokenizer, batched, over the same number of
processes (tokenizing the text alone, no label masks: less work than sftkit's). ``--cache_rows=100000,400000``
is the issue's measurement; the default is shorter. The START-UP FLOOR above the table is what any
trainer pays before its data: a process that imports torch, transformers and peft and loads the
model with LoRA, nothing else.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftkit import flags  # noqa: E402


def finalize_rows(count: int) -> list:
    from sftkit.data.inputs import formats
    from sftkit.rows import Conversation, text_turns

    texts = []
    for sample in sorted((ROOT / "data" / "sample").glob("unified_*.jsonl.gz")):
        for unit in formats.read_units(sample, sample.name, formats.FileFormat("oig"), formats.ReadOptions()):
            texts += unit.texts
    return [Conversation(text_turns(text), text=text, prompt_type="human_bot")
            for text in itertools.islice(itertools.cycle(texts), count)]


def per_row_baseline(conversations, tokenizer, prompt_type: str, cutoff_len: int):
    """PER-ROW BASELINE: one tokenizer call and one Python loop over the tokens per row."""
    from sftkit.prompts import encode, render_conversation
    from sftkit.train.tokenize import IGNORE

    out = []
    for conv in conversations:
        text, spans = render_conversation(conv.turns, prompt_type, tokenizer, text=conv.text)
        encoded = encode(tokenizer, text, prompt_type, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        labels = [t if (e > s and any(s < b and e > a for a, b in spans)) else IGNORE
                  for t, (s, e) in zip(ids, encoded["offset_mapping"])]
        ends_with_answer = spans[-1][1] >= len(text.rstrip())
        if not ids or ids[-1] != tokenizer.eos_token_id:
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id if ends_with_answer else IGNORE)
        labels[0] = IGNORE
        out.append((ids[:cutoff_len], labels[:cutoff_len]))
    return out


def best_of(repeats: int, run):
    best, result = None, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return best, result


DATASETS_BASELINE = """
import sys, time
import datasets
from transformers import AutoTokenizer
data, model, workers, cutoff, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
tokenizer = AutoTokenizer.from_pretrained(model)
started = time.perf_counter()
rows = datasets.load_dataset("json", data_files=data, split="train", cache_dir=cache)
tokenized = rows.map(lambda batch: tokenizer(batch["input"], truncation=True, max_length=cutoff), batched=True,
                     num_proc=workers if workers > 1 else None, remove_columns=rows.column_names)
print(f"tokenized {len(tokenized)} rows in {time.perf_counter() - started:.3f} s", flush=True)
"""

START_UP_FLOOR = """
import sys, time
import peft, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
print("ready", flush=True)
"""


def write_rows(path: Path, count: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for conversation in finalize_rows(count):
            fh.write(json.dumps({"input": conversation.text, "prompt_type": "human_bot"}) + "\n")


def high_water_gib(pid: int) -> float:
    """A running process's peak RSS so far (VmHWM)."""
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 2**20


def timed(cmd: list[str], marks: dict[str, str]) -> tuple[dict[str, tuple[float, float]], float, str]:
    """Run ``cmd``; ({mark: (seconds from its start to the first stdout line matching the pattern, its
    peak RSS GiB then)}, peak RSS GiB of its largest process, its output)."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    seen, lines = {}, []
    for line in proc.stdout:
        lines.append(line)
        for name, pattern in marks.items():
            if name not in seen and re.search(pattern, line):
                seen[name] = time.perf_counter() - started, high_water_gib(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = "".join(lines)
    if proc.returncode != 0 or len(seen) < len(marks):
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}):\n{output[-3000:]}")
    return seen, usage.ru_maxrss / 2**20, output


def cache_table(counts: list[int], base_model: str, workers: int, cutoff_len: int) -> None:
    from sftkit.models import resolve_base_model

    model_dir = resolve_base_model(base_model)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    print(f"\nFinalize-shaped rows, cutoff {cutoff_len}, {base_model}, {workers} tokenizing processes. sftkit: whole "
          f"finetune.py --max_steps=1 processes; 'data' is from the model being ready to the training plan (the "
          f"first step follows), 'start' from the process start; GiB: the process's peak RSS when the plan is "
          f"printed (before the step, whose own peak depends on the rows it draws). DATASETS BASELINE: "
          f"load_dataset('json') + .map(batched, num_proc={workers}) seconds, imports and tokenizer load excluded; "
          f"GiB: peak RSS of its largest process.\n")
    floor, _, _ = timed([sys.executable, "-c", START_UP_FLOOR, model_dir], {"ready": r"^ready"})
    print(f"START-UP FLOOR: {floor['ready'][0]:.1f} s from a process start to the model loaded with LoRA "
          f"(import torch, transformers and peft, load the tokenizer and the model, nothing else), in this run.\n")
    print("| rows | DATASETS BASELINE s | GiB | first run (builds): data s | start s | GiB | rerun (reuses): data s "
          "| start s | GiB | first run data / baseline | rerun data / baseline |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    measured = {}
    with tempfile.TemporaryDirectory(prefix="bench_tokenize_") as tmp:
        tmp = Path(tmp)
        for count in counts:
            data = tmp / f"rows_{count}.jsonl"
            write_rows(data, count)
            _, base_gib, output = timed([sys.executable, "-c", DATASETS_BASELINE, str(data), model_dir, str(workers),
                                         str(cutoff_len), str(tmp / f"hf_{count}")], {"done": r"^tokenized \d+ rows"})
            base_s = float(re.search(r"in ([\d.]+) s", output).group(1))
            runs = []
            for name in ("first", "rerun"):
                cmd = [sys.executable, str(ROOT / "finetune.py"), f"--base_model={base_model}", f"--data_path={data}",
                       f"--output_dir={tmp / f'out_{count}_{name}'}", f"--tokenized_cache_dir={tmp / 'cache'}",
                       f"--tokenize_workers={workers}", f"--cutoff_len={cutoff_len}", "--max_steps=1",
                       "--val_set_size=0", "--save_steps=0", "--report_to=none", "--batch_size=1",
                       "--micro_batch_size=1", "--warmup_steps=0"]
                seen, _, output = timed(cmd, {"model": r"M trainable, ", "plan": r"\bplan: "})
                expected = "tokenized cache built" if name == "first" else "tokenized cache reused"
                assert expected in output, output[-2000:]
                (model_s, _), (plan_s, plan_gib) = seen["model"], seen["plan"]
                runs.append((plan_s - model_s, plan_s, plan_gib))
            (first_s, first_start, first_gib), (rerun_s, rerun_start, rerun_gib) = runs
            measured[count] = (first_gib, rerun_gib)
            print(f"| {count:,} | {base_s:.1f} | {base_gib:.2f} | {first_s:.1f} | {first_start:.1f} | {first_gib:.2f} | "
                  f"{rerun_s:.1f} | {rerun_start:.1f} | {rerun_gib:.2f} | {first_s / base_s:.2f}x | "
                  f"{rerun_s / base_s:.2f}x |", flush=True)
    if len(counts) > 1:
        small, large = min(counts), max(counts)
        print(f"\npeak RSS growth for {large / small:.0f}x the rows: first run "
              f"{measured[large][0] / measured[small][0]:.2f}x, rerun {measured[large][1] / measured[small][1]:.2f}x")


@dataclass
class BenchConfig:
    suite: str = flags.flag("all", "batched (table 1), cache (table 2) or all.")
    rows: int = flags.flag(20_000, "Rows of table 1.")
    prompt_type: str = flags.flag("human_bot", "Prompt type of table 1.")
    repeats: int = flags.flag(3, "Table 1 keeps the best of this many runs of each tokenizer.")
    cutoff_len: int = flags.flag(512, "Token cutoff of both tables.")
    base_model: str = flags.flag("smollm2-135m-instruct", "Model whose tokenizer both tables use.")
    cache_rows: str = flags.flag("25000,100000", "Row counts of table 2, comma-separated (the issue's: "
                                                 "100000,400000).")
    workers: int = flags.flag(0, "Tokenizing processes of table 2, for sftkit and the baseline (0: up to 4, "
                                 "one per core).")


def main(cfg: BenchConfig) -> None:
    if cfg.suite in ("all", "cache"):
        counts = [int(n) for n in cfg.cache_rows.split(",") if n.strip()]
        cache_table(counts, cfg.base_model, cfg.workers, cfg.cutoff_len)
    if cfg.suite in ("all", "batched"):
        batched_table(cfg.rows, cfg.prompt_type, cfg.repeats, cfg.cutoff_len, cfg.base_model)


def batched_table(rows: int, prompt_type: str, repeats: int, cutoff_len: int, base_model: str) -> None:
    from sftkit.models import load_tokenizer
    from sftkit.train.tokenize import tokenize_all

    tokenizer = load_tokenizer(base_model)
    conversations = finalize_rows(rows)
    baseline_s, expected = best_of(repeats, lambda: per_row_baseline(conversations, tokenizer, prompt_type,
                                                                     cutoff_len))
    batched_s, got = best_of(repeats, lambda: tokenize_all(conversations, tokenizer, prompt_type, cutoff_len,
                                                           progress=False))
    assert [(e.input_ids, e.labels) for e in got.examples] == expected, "the two tokenizers disagree"
    tokens = got.stats.tokens
    print(f"\nSFT tokenization, {rows:,} finalize-shaped rows ({tokens:,} tokens), {prompt_type}, {base_model}, "
          f"best of {repeats}\n")
    print("| tokenizer | seconds | rows/s | tokens/s | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| PER-ROW BASELINE (one call and one Python token loop per row) | {baseline_s:.2f} | "
          f"{rows / baseline_s:,.0f} | {tokens / baseline_s:,.0f} | 1.00x |")
    print(f"| batched (sftkit.train.tokenize) | {batched_s:.2f} | {rows / batched_s:,.0f} | {tokens / batched_s:,.0f} "
          f"| {baseline_s / batched_s:.2f}x |")


if __name__ == "__main__":
    flags.main(BenchConfig, main, prog="bench_tokenize.py",
               summary="SFT tokenization, batched against per-row; the tokenized cache against HF datasets.")
