"""Throughput of the OpenAI-compatible API under 1, 4 and 16 concurrent clients, batching on vs off;
latency under hostile traffic; how long a short request waits behind a long one.

    .venv/bin/python bench/bench_api.py [--clients=1,4,16 --requests_per_client=2 --max_tokens=32 ...]

A real uvicorn server (sftkit.generation.api) on 127.0.0.1 serves the embedded model; each client is
a thread with the official openai client sending its requests one after another (greedy, fixed
max_tokens, a different question each). For every client count the same requests run twice, in the
same process, against:
  batching off   --api_batch_size=1: the baseline, one request per generate call;
  batching on    --api_batch_size=<largest client count>: requests waiting together share one
                 left-padded generate call.
Reported: completion tokens/s over the wall time of the whole load, and p50/p95 request latency.

Hostile traffic (``--hostile_clients``, batching on): the p95 latency of the same well-formed load
alone (the baseline) and again while other clients (processes of their own, lowest CPU priority)
send hostile requests, paced (``--hostile_rate``) and as fast as the server answers: bodies that are
not UTF-8 or nest JSON 10,000 deep, out-of-range and unsupported fields, lone surrogates, too many
or too long stop strings, bodies declared past --api_max_body_mb, bodies just under it (refused as
longer than the context), and clients that start a long answer and disconnect. The limit is 1.5x.
A control run floods the server as fast with valid ``GET /v1/models`` requests: what any flood
costs, whatever the requests hold.

Waiting behind a long answer (static batching): the latency of a 3-token request alone (baseline),
and sent while a 500-token answer is being generated.
"""
import json
import multiprocessing
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sftkit import flags  # noqa: E402
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
    hostile_clients: int = flags.flag(4, "Clients sending hostile requests in the hostile-traffic run (0: skip it).")
    hostile_rate: float = flags.flag(10.0, "Requests per second of each hostile client in the paced run (0: skip "
                                           "the paced run).")
    wait_behind_tokens: int = flags.flag(500, "Tokens of the long answer a 3-token request waits behind (0: skip).")
    body_mb: float = flags.flag(1.0, "--api_max_body_mb of the server in the hostile-traffic run.")


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


def _hostile_bodies(limit_mb: float) -> list[tuple[str, bytes]]:
    """(path, raw body) of requests the server must refuse with a 4xx, cheaply."""
    good = {"model": "base", "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]}

    def chat(**fields):
        return "chat/completions", json.dumps({**good, **fields}).encode()

    near_limit = " ".join(f"w{n}" for n in range(int(limit_mb * 2 ** 20) // 7))[: int(limit_mb * 2 ** 20) - 300]
    return [("chat/completions", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'),
            ("chat/completions", b'{"messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
            ("chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
            chat(seed=10 ** 30), chat(stop=["a", "b", "c", "d", "e"]), chat(stop="x" * 5000), chat(logprobs=True),
            chat(tools=[{"type": "function"}]), chat(messages=[{"role": "user", "content": " "}]),
            chat(messages=[{"role": "user", "content": near_limit}])]


def _hostile_client(url: str, stop, limit_mb: float, results, rate: float, valid: bool):
    """Send hostile requests until ``stop``: refused bodies, over-limit bodies, and long answers dropped;
    ``rate`` per second (0: each as soon as the last is answered); ``valid``: the control, the same
    flood of ``GET /v1/models`` instead. Runs in a process of its own at the lowest CPU priority, so
    what is measured is the server's cost of answering, not this client's cost of asking on the
    same cores."""
    import os

    import httpx

    os.nice(19)
    counts: dict[str, int] = {}
    host, port = url.split("//")[1].split("/")[0].split(":")
    bodies = _hostile_bodies(limit_mb)
    long_answer = {"model": "base", "stream": True, "max_tokens": 400, "temperature": 0,
                   "messages": [{"role": "user", "content": "Count from one to one thousand."}]}
    n, started = 0, time.monotonic()
    with httpx.Client(timeout=600) as http:
        while not stop.is_set():
            n += 1
            if rate:
                time.sleep(max(started + n / rate - time.monotonic(), 0))
            if valid:
                status = [str(http.get(f"{url}/models").status_code).encode()]
            elif n % 5 == 0:  # a body declared past the limit, of which only the start is sent
                with socket.create_connection((host, int(port)), timeout=60) as sock:
                    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                                 b"\r\nContent-Length: 104857600\r\n\r\n{\"messages\": [")
                    status = sock.recv(64).split(b" ")[1:2]
            elif n % 7 == 0:  # start a long answer, read its first piece, hang up
                with http.stream("POST", f"{url}/chat/completions", json=long_answer) as response:
                    next(response.iter_lines())
                status = [b"dropped"]
            else:
                path, body = bodies[n % len(bodies)]
                status = [str(http.post(f"{url}/{path}", content=body,
                                        headers={"Content-Type": "application/json"}).status_code).encode()]
            key = status[0].decode() if status else "none"
            counts[key] = counts.get(key, 0) + 1
    results.put(counts)


def _alongside(server_url: str, bench: BenchConfig, rate: float, valid: bool) -> tuple[dict, dict]:
    """The well-formed load's latencies while hostile clients run, and what they sent."""
    processes = multiprocessing.get_context("spawn")
    stop, results = processes.Event(), processes.Queue()
    attackers = [processes.Process(target=_hostile_client, args=(server_url, stop, bench.body_mb, results, rate,
                                                                   valid)) for _ in range(bench.hostile_clients)]
    for process in attackers:
        process.start()
    time.sleep(5.0)  # the attack is under way before the measured load starts
    try:
        measured = load(server_url, max(bench.clients), bench.requests_per_client, bench.max_tokens)
    finally:
        stop.set()
        counts: dict[str, int] = {}
        for _ in attackers:
            for key, value in results.get(timeout=600).items():
                counts[key] = counts.get(key, 0) + value
        for process in attackers:
            process.join()
    return measured, counts


def under_hostile_traffic(server_url: str, bench: BenchConfig) -> list[tuple[str, dict, dict]]:
    """(label, latencies, requests sent) of the well-formed load: alone (the baseline), with paced hostile
    clients, with hostile clients as fast as the server answers, and with the same flood of valid
    ``GET /v1/models`` (the control: what any flood costs)."""
    alone = load(server_url, max(bench.clients), bench.requests_per_client, bench.max_tokens)
    plans = [(f"hostile, {bench.hostile_rate:g} requests/s per client", bench.hostile_rate, False),
             ("hostile, as fast as answered", 0.0, False),
             ("control: GET /v1/models as fast as answered", 0.0, True)]
    if not bench.hostile_rate:
        plans = plans[1:]
    return [("well-formed alone (baseline)", alone, {})] + [
        (label, *_alongside(server_url, bench, rate, valid)) for label, rate, valid in plans]


def wait_behind(server_url: str, long_tokens: int) -> dict:
    """Latency of a 3-token request alone, and while a ``long_tokens`` answer is being generated."""
    import httpx
    import openai

    api = openai.OpenAI(base_url=server_url, api_key="bench", max_retries=0, timeout=600)

    def short() -> float:
        start = time.perf_counter()
        api.completions.create(model="base", prompt="The capital of France is", max_tokens=3, temperature=0)
        return time.perf_counter() - start

    alone = statistics.median(short() for _ in range(3))
    body = {"model": "base", "stream": True, "max_tokens": long_tokens, "temperature": 0,
            "prompt": ", ".join(str(n) for n in range(1, 21)) + ","}  # counting on: it does not stop early
    finish = {}

    def long_answer():
        with httpx.stream("POST", f"{server_url}/completions", json=body, timeout=600) as response:
            lines = response.iter_lines()
            while "text" not in next(lines):
                pass
            started.set()
            for line in lines:
                if '"finish_reason": "' in line:
                    finish["reason"] = line.split('"finish_reason": "')[1].split('"')[0]

    started = threading.Event()
    thread = threading.Thread(target=long_answer)
    thread.start()
    started.wait()
    behind = short()
    thread.join()
    return dict(alone=alone, behind=behind, long_finish=finish.get("reason"))


def run(bench: BenchConfig):
    import torch  # here, not at the top: the spawned hostile clients re-import the top

    from sftkit.generation import GenerateConfig, load_models
    from sftkit.generation.api import Server

    if bench.threads:
        torch.set_num_threads(bench.threads)
    widest = max(bench.clients)
    config = GenerateConfig(base_model=bench.base_model, prompt_type=bench.prompt_type, api=True,
                            max_new_tokens=bench.max_tokens, min_new_tokens=bench.max_tokens, do_sample=False,
                            api_queue_size=widest * 2 + bench.hostile_clients * 2, server_port=bench.port,
                            api_max_body_mb=bench.body_mb)
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
        hostile = under_hostile_traffic(servers["on"].url, bench) if bench.hostile_clients else None
        waited = None
        if bench.wait_behind_tokens:
            long_server = Server(models, replace(modes["on"], max_new_tokens=bench.wait_behind_tokens, min_new_tokens=0,
                                                 server_port=bench.port + len(servers))).start()
            servers["long"] = long_server
            waited = wait_behind(long_server.url, bench.wait_behind_tokens)
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
    if hostile:
        print(f"\nWell-formed requests ({widest} clients, batching on) with {bench.hostile_clients} other clients "
              f"alongside\n")
        print("| traffic alongside | p50 latency (s) | p95 latency (s) | p95 vs alone (limit 1.5x) | requests sent |")
        print("|---|---|---|---|---|")
        alone = hostile[0][1]
        for label, r, counts in hostile:
            sent = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "-"
            print(f"| {label} | {r['p50']:.2f} | {r['p95']:.2f} | x{r['p95'] / alone['p95']:.2f} | {sent} |")
    if waited:
        print(f"\nA 3-token request alone and behind a {bench.wait_behind_tokens}-token answer "
              f"(static batching; the long answer ended by {waited['long_finish']})\n")
        print("| 3-token request | latency (s) | vs alone |")
        print("|---|---|---|")
        print(f"| alone (baseline) | {waited['alone']:.2f} | x1.00 |")
        print(f"| behind the long answer | {waited['behind']:.2f} | x{waited['behind'] / waited['alone']:.1f} |")


if __name__ == "__main__":
    flags.main(BenchConfig, run, prog="bench_api.py", summary=__doc__.split("\n\n")[0])
