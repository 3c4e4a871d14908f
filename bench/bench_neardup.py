"""Benchmark of near-duplicate removal: rows/s and peak memory as the input grows x4, against a baseline.

    .venv/bin/python bench/bench_neardup.py [--rows=200000] [--baseline_rows=50000]

Rows are synthetic chat answers of 60 to 120 words over a 20,000-word vocabulary; every tenth row
is an earlier row with two words changed (a planted near duplicate). Each measurement runs in a
fresh process that generates its rows lazily, so its peak RSS is the method's own memory.

OURS: sftkit.data.algorithms.neardup.near_duplicate_ids as finalize calls it (datasketch MinHash, LSH band keys
grouped by two external sorts on disk, clusters in row-id order), on ``rows/4`` and ``rows``.
BASELINE (labelled): datasketch's own MinHashLSH index, the textbook use (query each row, insert it
when nothing matches: it keeps every kept row's band hashes as Python bytes objects in dicts), on
``baseline_rows/4`` and ``baseline_rows``.
Both compute the same datasketch MinHash (128 permutations, 5-word shingles, threshold 0.8).
"""
from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THRESHOLD, NUM_PERM, SHINGLE_WORDS = 0.8, 128, 5


def rows(n: int, seed: int = 0):
    """(row id, text) pairs, generated lazily; every tenth is a near duplicate of a recent row."""
    rng = random.Random(seed)
    vocabulary = [f"word{i}" for i in range(20_000)]
    recent: list[str] = []
    for i in range(n):
        if i % 10 == 9 and recent:
            words = rng.choice(recent).split()
            for j in rng.sample(range(len(words)), 2):
                words[j] = rng.choice(vocabulary)
            text = " ".join(words)
        else:
            text = " ".join(rng.choices(vocabulary, k=rng.randint(60, 120)))
            recent = (recent + [text])[-1000:]
        yield rng.getrandbits(64), text


def ours(n: int) -> int:
    from sftkit.data.algorithms.neardup import near_duplicate_ids

    return len(near_duplicate_ids(rows(n), THRESHOLD, SHINGLE_WORDS, NUM_PERM, 2048))


def baseline(n: int) -> int:
    from datasketch import MinHash, MinHashLSH

    from sftkit.data.algorithms.neardup import shingles

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    dropped = 0
    items = rows(n)
    while batch := [item for _, item in zip(range(2048), items)]:
        for (row_id, _), minhash in zip(batch, MinHash.generator((shingles(t, SHINGLE_WORDS) for _, t in batch),
                                                                 num_perm=NUM_PERM)):
            if lsh.query(minhash):
                dropped += 1
            else:
                lsh.insert(row_id, minhash)
    return dropped


def child(method: str, n: int) -> None:
    start = time.perf_counter()
    dropped = {"ours": ours, "baseline": baseline}[method](n)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "rows": n, "seconds": seconds, "dropped": dropped, "peak_mb": peak_mb}))


def measure(method: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, str(n)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    args = dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
    n, n_base = int(args.get("rows", 200_000)), int(args.get("baseline_rows", 50_000))
    results = [measure("ours", n // 4), measure("ours", n), measure("baseline", n_base // 4),
               measure("baseline", n_base)]
    print(f"near-duplicate removal, threshold {THRESHOLD}, {NUM_PERM} permutations, {SHINGLE_WORDS}-word shingles; "
          "about 10% planted near duplicates")
    print("| method | rows | rows/s | dropped | peak RSS MB | RSS ratio for x4 rows |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for i, r in enumerate(results):
        ratio = f"x{r['peak_mb'] / results[i - 1]['peak_mb']:.2f}" if i % 2 else "-"
        label = "ours (sftkit neardup)" if r["method"] == "ours" else "BASELINE datasketch MinHashLSH"
        print(f"| {label} | {r['rows']:,} | {r['rows'] / r['seconds']:,.0f} | {r['dropped']:,} | "
              f"{r['peak_mb']:,.0f} | {ratio} |")
    ours_large, base_large = results[1], results[3]
    per_row_ours = (results[1]["peak_mb"] - results[0]["peak_mb"]) * 2**20 / (results[1]["rows"] - results[0]["rows"])
    per_row_base = (results[3]["peak_mb"] - results[2]["peak_mb"]) * 2**20 / (results[3]["rows"] - results[2]["rows"])
    ours_growth = (f"{per_row_ours:,.0f} bytes (baseline x{per_row_base / per_row_ours:.1f})" if per_row_ours >= 1
                   else "none measurable (under 1 byte)")
    print(f"memory per extra row: ours {ours_growth}, baseline {per_row_base:,.0f} bytes; speed: ours "
          f"{(ours_large['rows'] / ours_large['seconds']) / (base_large['rows'] / base_large['seconds']):.2f}x "
          "the baseline's rows/s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1:])
