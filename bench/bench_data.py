"""Benchmark of the data pipeline: rows/s per stage, peak memory as the input grows x4, and a naive baseline.

    .venv/bin/python bench/bench_data.py [--rows=200000] [--baseline_rows=1000] [--workers=0]

Builds an OIG-format input of ``--rows`` conversations from the bundled sample (each made unique),
runs download → detox → chop → grade (no reward model, no detoxify) on ``rows/4`` and on ``rows``
in fresh processes, and reports rows/s and peak RSS (the main process and, separately, its
worker processes). The NAIVE BASELINE is the straightforward approach: pandas reads the whole
file, then a Python loop per row calls the same splitter, alt-profanity-check, textstat and
better_profanity (unpatched) one row at a time. Its rows/s are measured on the first
``--baseline_rows`` conversations of the same input (it is too slow for all of them).
Also times the sentence splitter (pysbd) against a naive regex split.
"""
from __future__ import annotations

import gzip
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftkit import flags  # noqa: E402


def sample_conversations() -> list[tuple[str, str | None]]:
    """(markup text, source) of every OIG-format conversation in the bundled sample."""
    from sftkit.data.inputs import formats

    found = []
    for sample in sorted((ROOT / "data" / "sample").glob("*.jsonl.gz")):
        for unit in formats.read_units(sample, sample.name, formats.FileFormat("oig"), formats.ReadOptions()):
            found += [(text, unit.source) for text in unit.texts]
    return found


def build_input(path: Path, rows: int) -> None:
    """``rows`` conversations cycled from the sample, each question made unique."""
    base = sample_conversations()
    with gzip.open(path, "wt", compresslevel=1) as fh:
        for i in range(rows):
            text, source = base[i % len(base)]
            text = text.replace("<human>: ", f"<human>: (case {i}) ", 1)
            fh.write(json.dumps({"text": text, "metadata": {"source": source}}) + "\n")


def run_stages(work_dir: str, source: str, workers: int) -> dict:
    """In a fresh process: each stage's seconds, and peak RSS of this process and of its workers."""
    import threading

    import psutil

    from sftkit.data.config import DataConfig
    from sftkit.data.pipeline import run_stage

    done, worker_peak = threading.Event(), [0]

    def sample_workers() -> None:  # pool workers descend from the forkserver, not from this process
        me = psutil.Process()
        while not done.wait(0.1):
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            worker_peak[0] = max(worker_peak[0], total)

    sampler = threading.Thread(target=sample_workers, daemon=True)
    sampler.start()
    cfg = DataConfig(work_dir=work_dir, source=source, workers=workers)
    seconds = {}
    for stage in ("download", "detox", "chop", "grade"):
        start = time.perf_counter()
        stats = run_stage(stage, cfg)
        seconds[stage] = (time.perf_counter() - start, stats.rows_in)
    done.set()
    sampler.join()
    return {"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_rss_mb": worker_peak[0] / 2**20}


def naive_baseline(path: Path, rows: int) -> dict:
    """NAIVE BASELINE: pandas holds everything; one Python call per row for every scorer."""
    import pandas as pd
    import textstat
    from better_profanity import profanity
    from profanity_check import predict_prob

    from sftkit.data.algorithms.readability import ensure_cmudict
    from sftkit.data.algorithms.splitting import split_conversation
    from sftkit.prompts import split_turns

    ensure_cmudict()
    textstat.flesch_kincaid_grade("Warm up the dictionary.")
    profanity.contains_profanity("warm up")
    seconds = {}
    start = time.perf_counter()
    df = pd.read_json(path, lines=True, nrows=rows)
    df["text"] = df["text"].astype(str)
    seconds["download"] = time.perf_counter() - start

    start = time.perf_counter()
    df["pieces"] = df["text"].apply(lambda t: split_conversation(t, 1024, 2048)[0])
    df = df.explode("pieces").dropna(subset=["pieces"]).drop_duplicates("pieces")
    df["profanity_prob"] = df["pieces"].apply(lambda t: predict_prob([t])[0])
    df = df[df["profanity_prob"] < 0.25]
    seconds["detox"] = time.perf_counter() - start

    start = time.perf_counter()

    def lengths(text):
        turns = split_turns(text)
        human = [len(t) for r, t in turns if r == "human"] or [0]
        bot = [len(t) for r, t in turns if r == "bot"] or [0]
        return sum(human) / len(human), sum(bot) / len(bot)

    df[["human_mean", "bot_mean"]] = df["pieces"].apply(lambda t: pd.Series(lengths(t)))
    df = df[(df["human_mean"] >= 20) & (df["bot_mean"] >= 20)]
    seconds["chop"] = time.perf_counter() - start

    start = time.perf_counter()
    df["grade"] = df["pieces"].apply(
        lambda t: textstat.flesch_kincaid_grade("\n".join(x for r, x in split_turns(t) if r == "bot")))
    df["profane"] = df["pieces"].apply(profanity.contains_profanity)
    seconds["grade"] = time.perf_counter() - start
    return {"seconds": seconds, "rows": rows}


def sentence_splitting() -> list[tuple[str, float]]:
    """Characters per second of pysbd against a naive regex split, on the sample's answers."""
    from sftkit.data.algorithms.splitting import split_sentences

    answers = [text.split("<bot>:")[-1].strip() for text, _ in sample_conversations()]
    text = " ".join(answers)[:200_000]
    results = []
    for name, split in (("pysbd (used)", split_sentences),
                        ("naive regex [.!?] split", lambda t: re.split(r"(?<=[.!?])\s+", t))):
        start = time.perf_counter()
        for i in range(0, len(text), 2000):
            split(text[i:i + 2000])
        results.append((name, len(text) / (time.perf_counter() - start)))
    return results


@dataclass
class BenchConfig:
    rows: int = flags.flag(200_000, "Conversations of the larger run (the smaller one is a quarter).")
    baseline_rows: int = flags.flag(1000, "Conversations the naive per-row baseline processes.")
    workers: int = flags.flag(0, "Worker processes of the stages (0: one per core).")


def main(cfg: BenchConfig) -> None:
    rows, baseline_rows, workers = cfg.rows, cfg.baseline_rows, cfg.workers
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = {}
        for n in (rows // 4, rows):
            source = tmp / f"src-{n}"
            source.mkdir()
            build_input(source / "unified_bench.jsonl.gz", n)
            code = ("import json, sys; sys.path.insert(0, %r); from bench.bench_data import run_stages; "
                    "print(json.dumps(run_stages(%r, %r, %d)))" % (str(ROOT), str(tmp / f"work-{n}"), str(source), workers))
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
            results[n] = json.loads(out.stdout.strip().splitlines()[-1])
        naive = naive_baseline(source / "unified_bench.jsonl.gz", baseline_rows)

    print(f"\nData pipeline benchmark (reward model and detoxify off; workers={workers or 'all cores'})\n")
    print(f"| stage | rows in ({rows // 4:,}) | rows/s | rows in ({rows:,}) | rows/s | NAIVE BASELINE rows/s "
          f"({baseline_rows:,} conv) | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for stage in ("download", "detox", "chop", "grade"):
        small_s, small_in = results[rows // 4]["seconds"][stage]
        big_s, big_in = results[rows]["seconds"][stage]
        naive_rate = baseline_rows / naive["seconds"][stage]
        print(f"| {stage} | {small_in:,} | {small_in / small_s:,.0f} | {big_in:,} | {big_in / big_s:,.0f} | "
              f"{naive_rate:,.0f} | {big_in / big_s / naive_rate:.1f}x |")
    total_big = sum(s for s, _ in results[rows]["seconds"].values())
    total_naive = sum(naive["seconds"].values())
    print(f"| all four (conversations/s) | | {rows // 4 / sum(s for s, _ in results[rows // 4]['seconds'].values()):,.0f} "
          f"| | {rows / total_big:,.0f} | {baseline_rows / total_naive:,.0f} | "
          f"{rows / total_big / (baseline_rows / total_naive):.1f}x |")
    print("\n(naive baseline rows/s are conversations per second of its per-stage time, so the ratio compares "
          "time per input conversation)\n")
    print("| peak RSS | main process MB | worker processes MB (sum, sampled every 0.1 s) |")
    print("| --- | ---: | ---: |")
    for n in (rows // 4, rows):
        print(f"| {n:,} conversations | {results[n]['rss_mb']:,.0f} | {results[n]['worker_rss_mb']:,.0f} |")
    ratio = results[rows]["rss_mb"] / results[rows // 4]["rss_mb"]
    worker_ratio = results[rows]["worker_rss_mb"] / max(results[rows // 4]["worker_rss_mb"], 1)
    print(f"\npeak RSS ratio at x4 input: main {ratio:.2f}, workers {worker_ratio:.2f}\n")
    print("| sentence splitter | characters/s |")
    print("| --- | ---: |")
    for name, rate in sentence_splitting():
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    flags.main(BenchConfig, main, prog="bench_data.py",
               summary="The data stages' rows/s and peak memory against a naive per-row baseline.")
