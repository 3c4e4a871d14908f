"""Throughput of the OpenAI-compatible API under 1, 4 and 16 concurrent clients, batching on vs off.

    .venv/bin/python bench/bench_api.py [--clients=1,4,16 --requests_per_client=2 --max_tokens=32 ...]

A real uvicorn server (sftkit.generation.api) on 127.0.0.1 serves the embedded model; each client is
a thread with the official openai client sending its requests one after another (greedy, fixed
max_tokens, a different question each). For every client count the same requests run twice, in the
same process, against:
  batching off   --api_batch_size=1: the baseline, one request per generate call;
  batching on    --api_batch_size=<largest client count>: requests waiting together share one
                 left-padded generate call.
Reported: completion tokens/s over the wall time of the whole load, and p50/p95 request latency.
"""
import statistics
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sftkit import flags  # noqa: E402
from sftkit.generation import GenerateConfig, load_models  # noqa: E402
from sftkit.models import DEFAULT_BASE_MODEL  # noqa: E402


@dataclass
class BenchConfig:
    base_model: str = flags.flag(DEFAULT_BASE_MODEL, "Model to serve (default: the embedded model).")
    prompt_type: str = flags.flag("chat", "Prompt format (the embedded instruct model was trained on 'chat').")
    clients: list[int] = flags.flag([1, 4, 16], "Concurrent client counts to measure.")
    requests_per_client: int = flags.flag(2, "Requests each client sends, one after another.")
    max_tokens: int = flags.flag(32, "Tokens per answer (min_new_tokens too, so every answer is this long).")
    threads: int = flags.flag(0, "torch CPU threads (0: torch's default).")
    port: int = flags.flag(8765, "Port of the benchmark server on 127.0.0.1.")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(round(q * (len(ordered) - 1))), len(ordered) - 1)]


def load(server_url: str, clients: int, per_client: int, max_tokens: int) -> dict:
    """Run ``clients`` threads of ``per_client`` sequential chat requests; tokens/s and latencies."""
    import openai

    latencies: list[float] = []
    tokens = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(n: int):
        api = openai.OpenAI(base_url=server_url, api_key="bench", max_retries=0, timeout=600)
        barrier.wait()
        for r in range(per_client):
            question = f"Question {n}.{r}: describe city number {n * per_client + r} in a few sentences."
            start = time.perf_counter()
            try:
                reply = api.chat.completions.create(model="base", temperature=0, max_tokens=max_tokens,
                                                    messages=[{"role": "user", "content": question}])
            except BaseException as exc:  # reported after the run
                errors.append(exc)
                return
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens[0] += reply.usage.completion_tokens

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return dict(tokens=tokens[0], wall=wall, tokens_per_second=tokens[0] / wall,
                p50=statistics.median(latencies), p95=percentile(latencies, 0.95))


def run(bench: BenchConfig):
    import torch

    from sftkit.generation.api import Server

    if bench.threads:
        torch.set_num_threads(bench.threads)
    widest = max(bench.clients)
    config = GenerateConfig(base_model=bench.base_model, prompt_type=bench.prompt_type, api=True,
                            max_new_tokens=bench.max_tokens, min_new_tokens=bench.max_tokens, do_sample=False,
                            api_queue_size=widest * 2, server_port=bench.port)
    models = load_models(config)
    modes = {"off": replace(config, api_batch_size=1), "on": replace(config, api_batch_size=widest)}
    servers = {}
    results = {}
    try:
        for mode, settings in modes.items():
            servers[mode] = Server(models, replace(settings, server_port=bench.port + len(servers))).start()
            load(servers[mode].url, 1, 1, bench.max_tokens)  # warm-up
        for clients in bench.clients:  # both modes per client count, back to back: same machine load
            for mode in modes:
                results[clients, mode] = load(servers[mode].url, clients, bench.requests_per_client,
                                              bench.max_tokens)
                r = results[clients, mode]
                print(f"  {clients:>2} clients, batching {mode:<3}: {r['tokens_per_second']:7.1f} tokens/s, "
                      f"p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.close()
    print(f"\nAPI throughput, {bench.base_model}, {bench.max_tokens} tokens per answer, "
          f"{bench.requests_per_client} requests per client, greedy, torch threads {torch.get_num_threads()}\n")
    print("| clients | batching | tokens/s | p50 latency (s) | p95 latency (s) | tokens/s vs batching off |")
    print("|---|---|---|---|---|---|")
    for clients in bench.clients:
        base = results[clients, "off"]["tokens_per_second"]
        for mode in modes:
            r = results[clients, mode]
            label = "off (baseline)" if mode == "off" else f"on (up to {widest})"
            print(f"| {clients} | {label} | {r['tokens_per_second']:.1f} | {r['p50']:.2f} | {r['p95']:.2f} | "
                  f"x{r['tokens_per_second'] / base:.2f} |")


if __name__ == "__main__":
    flags.main(BenchConfig, run, prog="bench_api.py", summary=__doc__.split("\n\n")[0])
