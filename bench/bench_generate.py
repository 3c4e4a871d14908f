"""Generation speed of the embedded model on this machine: streaming vs non-streaming vs plain generate.

    .venv/bin/python bench/bench_generate.py [--max_new_tokens=128 --repeats=5 ...]

Ways to answer the same prompt with the same greedy settings:
  plain model.generate           the naive baseline: no streamer, no stop-string checks, caller's thread;
  plain, in a worker thread      the same, run in a fresh thread as streaming does (thread placement
                                 alone changes speed on a CPU shared with other processes);
  non-streaming                  sftkit.generation.generate_answers (stop strings checked every token);
  streaming                      sftkit.generation.AnswerStream (a generation thread feeding text to the caller).
Runs are interleaved and the median is reported, so load from other processes hits all alike.
Time to first text is when the caller first gets text: the whole answer's time without streaming.
Exits with status 1 when streaming costs more than --max_overhead per token against the faster plain baseline.
"""
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sftkit import flags  # noqa: E402
from sftkit.generation import (AnswerStream, GenerateConfig, build_prompt, context_length,  # noqa: E402
                               generate_answers, generation_kwargs, load_models)
from sftkit.models import DEFAULT_BASE_MODEL  # noqa: E402
from sftkit.prompts import encode  # noqa: E402


@dataclass
class BenchConfig:
    base_model: str = flags.flag(DEFAULT_BASE_MODEL, "Model to time (default: the embedded model).")
    prompt_type: str = flags.flag("chat", "Prompt format (the embedded instruct model was trained on 'chat').")
    prompt: str = flags.flag("Write a detailed essay about the history of Paris, from Roman times to today.",
                             "The question every method answers.")
    max_new_tokens: int = flags.flag(128, "Tokens per answer.")
    repeats: int = flags.flag(5, "Timed runs per method (after one warm-up run each).")
    threads: int = flags.flag(0, "torch CPU threads (0: torch's default).")
    max_overhead: float = flags.flag(0.05, "Largest allowed per-token overhead of streaming vs plain generate.")


def run(bench: BenchConfig):
    import torch

    if bench.threads:
        torch.set_num_threads(bench.threads)
    config = GenerateConfig(base_model=bench.base_model, prompt_type=bench.prompt_type,
                            max_new_tokens=bench.max_new_tokens, do_sample=False)
    models = load_models(config)
    model, tokenizer = models.model, models.tokenizer
    prompt = build_prompt(tokenizer, [], bench.prompt, config, context_length(model, config))
    inputs = encode(tokenizer, [prompt.text], config.prompt_type, return_tensors="pt")
    kwargs = generation_kwargs(config, model, tokenizer)

    def plain():
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, **kwargs)
        seconds = time.perf_counter() - start
        return out.shape[1] - inputs["input_ids"].shape[1], seconds, seconds

    def plain_in_thread():
        result = {}
        worker = threading.Thread(target=lambda: result.update(run=plain()))
        worker.start()
        worker.join()
        return result["run"]

    def non_streaming():
        (answer,) = generate_answers(models, [prompt.text], config)
        return answer.new_tokens, answer.seconds, answer.seconds

    def streaming():
        stream = AnswerStream(models, prompt.text, config)
        start = time.perf_counter()
        first = None
        for _ in stream:
            first = first or time.perf_counter() - start
        return stream.answer.new_tokens, time.perf_counter() - start, first

    methods = {"plain model.generate (baseline)": plain, "plain, in a worker thread": plain_in_thread,
               "non-streaming": non_streaming, "streaming": streaming}
    results = {name: [] for name in methods}
    for name, method in methods.items():
        method()  # warm-up
    for _ in range(bench.repeats):
        for name, method in methods.items():
            results[name].append(method())

    print(f"\n{bench.base_model}, prompt type {bench.prompt_type}, prompt {prompt.tokens} tokens, greedy, "
          f"{torch.get_num_threads()} CPU threads, median of {bench.repeats} interleaved runs\n")
    header = f"{'method':34} {'new tokens':>10} {'first text (s)':>15} {'total (s)':>10} {'tokens/s':>9} {'s/token vs baseline':>20}"
    print(header)
    print("-" * len(header))
    base_per_token = None
    per_token = {}
    for name, runs in results.items():
        tokens = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        first = statistics.median(r[2] for r in runs)
        per_token[name] = statistics.median(r[1] / r[0] for r in runs)
        base_per_token = base_per_token or per_token[name]
        print(f"{name:34} {tokens:>10.0f} {first:>15.2f} {total:>10.2f} {1 / per_token[name]:>9.1f} "
              f"{per_token[name] / base_per_token:>19.3f}x")
    token_counts = {r[0] for runs in results.values() for r in runs}
    if len(token_counts) > 1:
        print(f"\nnote: answers differ in length ({sorted(token_counts)} tokens); per-token times are compared")
    fastest_plain = min(per_token["plain model.generate (baseline)"], per_token["plain, in a worker thread"])
    overhead = per_token["streaming"] / fastest_plain - 1
    verdict = "OK" if overhead <= bench.max_overhead else "ABOVE LIMIT"
    print(f"\nstreaming overhead per token vs the faster plain model.generate: {overhead:+.1%} "
          f"(limit {bench.max_overhead:.0%}): {verdict}")
    if overhead > bench.max_overhead:
        raise SystemExit(1)


if __name__ == "__main__":
    flags.main(BenchConfig, run, prog="bench_generate.py", summary=__doc__.split("\n\n")[0])
