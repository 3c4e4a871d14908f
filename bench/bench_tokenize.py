"""Benchmark of SFT tokenization: the batched tokenizer (sftkit.train.tokenize) against a per-row baseline.

    .venv/bin/python bench/bench_tokenize.py [--rows=20000] [--prompt_type=human_bot] [--repeats=3]

Rows are finalize-shaped (``{"input": "<human>: …\\n<bot>: …", "prompt_type": "human_bot"}``), cycled
from the bundled sample's OIG conversations, with the embedded model's tokenizer. The PER-ROW
BASELINE is how sftkit tokenized before: render each row, call the tokenizer on that one text, then
a Python loop over its tokens' offsets to place the labels. Both must give the same ids and labels
(checked); the table reports rows/s and the ratio, best of ``--repeats`` runs each, in the same run.
"""
from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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


def main(rows: int = 20_000, prompt_type: str = "human_bot", repeats: int = 3, cutoff_len: int = 512,
         base_model: str = "smollm2-135m-instruct") -> None:
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
    import fire

    fire.Fire(main)
