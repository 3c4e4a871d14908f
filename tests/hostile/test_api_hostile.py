"""Hostile requests against the OpenAI-compatible API: each is a 4xx in OpenAI's error shape (never a
500, never a 200 that ignores what was asked), and the server answers a good request right after.

A real uvicorn server on 127.0.0.1 with the tiny model; bodies sent as raw bytes (httpx, or a socket
when the attack is the HTTP framing itself), answers read by the official openai client. Also:
disconnecting clients (streaming or not, running or queued) free the engine at the next token, a
large body is refused before it is read whole and never stalls the event loop, and the scheduler
batches only requests with equal sampling settings. The soak test (slow) mixes valid and hostile
traffic from several clients against a server process for a couple of minutes.
"""
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from sftkit.generation import Request, build_prompt, generate_answers, load_models
from sftkit.generation.api import Server
from tests.generation.conftest import tiny_config
from tests.generation.test_api import free_port, slow_one_at_a_time_server, wait_until

REPO = Path(__file__).resolve().parents[2]
GOOD = {"model": "base", "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]}
LONG_STORY = "Tell me everything"  # the tiny model talks past 400 tokens here (checked below)
BODY_LIMIT_MB = 1


@pytest.fixture(scope="module")
def api(tiny_llama):
    config = tiny_config(tiny_llama, max_new_tokens=16, api=True, server_port=free_port(),
                         api_max_body_mb=BODY_LIMIT_MB)
    server = Server(load_models(config), config).start()
    yield server
    server.close()


def post(api, path, body: bytes, headers=None, **kwargs):
    return httpx.post(f"{api.url}/{path}", content=body, timeout=120,
                      headers={"Content-Type": "application/json", **(headers or {})}, **kwargs)


def assert_openai_error(response, status, param="unset"):
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    if param != "unset":
        assert error["param"] == param, error


def assert_still_serves(api):
    reply = openai.OpenAI(base_url=api.url, api_key="x", max_retries=0, timeout=120).chat.completions.create(**GOOD)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1


def chat(**fields) -> bytes:
    return json.dumps({**GOOD, **fields}).encode()


SURROGATE = b'"\\ud800 half a pair"'  # valid JSON, not text: a lone UTF-16 surrogate
HOSTILE = [
    # (name, path, raw body, status, param)
    ("not utf-8", "chat/completions", b'{"messages": [{"role": "user", "content": "caf\xe9 \xff"}]}', 400, None),
    ("not json", "chat/completions", b'{"messages": [', 400, None),
    ("json array", "chat/completions", b"[1, 2]", 400, None),
    ("10k-deep json", "chat/completions", b'{"messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400, None),
    ("10k-deep object", "chat/completions", b'{"x": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_000 + b"}", 400, None),
    ("seed 10**30", "chat/completions", chat(seed=10 ** 30), 400, "seed"),
    ("lone surrogate in content", "chat/completions",
     b'{"messages": [{"role": "user", "content": ' + SURROGATE + b"}]}", 400, "messages.0.content"),
    ("lone surrogate in stop", "chat/completions", chat(stop=["x"]).replace(b'["x"]', b"[" + SURROGATE + b"]"),
     400, "stop.0"),
    ("lone surrogate in a prompt", "completions", b'{"prompt": ' + SURROGATE + b"}", 400, "prompt"),
    ("five stops", "chat/completions", chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("a 1001-character stop", "chat/completions", chat(stop="x" * 1001), 400, "stop"),
    ("empty last message", "chat/completions", chat(messages=[{"role": "user", "content": ""}]), 400, "messages"),
    ("blank last message after turns", "chat/completions", chat(messages=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "  \n "}]), 400, "messages"),
    ("no messages", "chat/completions", chat(messages=[]), 400, "messages"),
    ("a tool message answering no call", "chat/completions", chat(messages=[{"role": "tool", "content": "x"}]), 400,
     "messages"),
    ("an unknown role", "chat/completions", chat(messages=[{"role": "robot", "content": "x"}]), 400,
     "messages.0.role"),
    ("an image part", "chat/completions", chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]), 400,
     "messages.0.content.0.type"),
    ("n=0", "chat/completions", chat(n=0), 400, "n"),
    ("n=1000", "chat/completions", chat(n=1000), 400, "n"),
    ("negative temperature", "chat/completions", chat(temperature=-1), 400, "temperature"),
    ("max_tokens=0", "chat/completions", chat(max_tokens=0), 400, "max_tokens"),
    ("max_tokens a string", "chat/completions", chat(max_tokens="many"), 400, "max_tokens"),
    ("logprobs", "chat/completions", chat(logprobs=True), 400, "logprobs"),
    ("top_logprobs", "chat/completions", chat(top_logprobs=3), 400, "top_logprobs"),
    ("json response format", "chat/completions", chat(response_format={"type": "json_object"}), 400,
     "response_format"),
    ("legacy functions", "chat/completions", chat(functions=[{"name": "f"}]), 400, "functions"),
    ("tools not a list", "chat/completions", chat(tools={"name": "f"}), 400, "tools"),
    ("a tool without a name", "chat/completions", chat(tools=[{"type": "function", "function": {}}]), 400,
     "tools.0.function.name"),
    ("tool_choice without tools", "chat/completions", chat(tool_choice="auto"), 400, "tool_choice"),
    ("tool_choice naming no tool", "chat/completions",
     chat(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "function", "function": {"name": "g"}}), 400, "tool_choice"),
    ("a call whose arguments are not JSON", "chat/completions", chat(messages=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "x"}]), 400, "messages"),
    ("presence penalty", "chat/completions", chat(presence_penalty=1.5), 400, "presence_penalty"),
    ("logit bias", "chat/completions", chat(logit_bias={"5": 100}), 400, "logit_bias"),
    ("echo", "completions", json.dumps({"prompt": "Hi", "echo": True}).encode(), 400, "echo"),
    ("completion logprobs", "completions", json.dumps({"prompt": "Hi", "logprobs": 0}).encode(), 400, "logprobs"),
    ("empty prompt", "completions", json.dumps({"prompt": ""}).encode(), 400, "prompt"),
    ("no prompts", "completions", json.dumps({"prompt": []}).encode(), 400, "prompt"),
    ("token-id prompt", "completions", json.dumps({"prompt": [1, 2, 3]}).encode(), 400, "prompt.0"),
    ("a surrogate as a key", "chat/completions", b"{" + SURROGATE + b': 1, "messages": []}', 400,
     "\\ud800 half a pair"),
]


@pytest.mark.parametrize("name, path, body, status, param", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_a_hostile_request_is_a_4xx_in_openais_shape_and_the_server_still_answers(api, name, path, body, status,
                                                                                 param):
    assert_openai_error(post(api, path, body), status, param)
    assert_still_serves(api)


@pytest.mark.parametrize("name, path, body, status, param",
                         [case for case in HOSTILE if case[1] == "chat/completions" and b'"messages"' in case[2]
                          and case[0] not in ("not utf-8", "not json")][:12])
def test_under_stream_true_the_error_comes_before_the_200(api, name, path, body, status, param):
    streamed = body.replace(b'{"', b'{"stream": true, "', 1)
    assert_openai_error(post(api, path, streamed), status)


def test_unknown_routes_and_methods_answer_in_openais_shape(api):
    missing = httpx.get(f"{api.url}/nothing-here")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    wrong = httpx.get(f"{api.url}/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()
    assert_still_serves(api)


def test_seed_zero_is_a_seed(api):
    client = openai.OpenAI(base_url=api.url, api_key="x", max_retries=0, timeout=120)

    def sampled(seed):
        return client.chat.completions.create(model="base", temperature=1.5, seed=seed, max_tokens=12,
                                              messages=[{"role": "user", "content": "Write a poem"}]
                                              ).choices[0].message.content

    assert sampled(0) == sampled(0) == sampled(0)
    assert len({sampled(1), sampled(2), sampled(0)}) > 1


def raw_http(api, head: bytes, body: bytes, read_timeout=60.0) -> bytes:
    """Send bytes as they are; the server's answer (what arrives before it closes or the timeout)."""
    host, port = api.url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(head + body)
        received = b""
        try:
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                part = sock.recv(65536)
                if not part:
                    break
                received += part
        except socket.timeout:
            pass
    return received


def test_a_body_declared_past_the_limit_is_413_before_it_is_sent(api):
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n")
    answer = raw_http(api, head, b'{"messages": [{"role": "user", "content": "')  # then nothing more
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1:2] == [b"413"], answer[:200]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_too_large" and body["error"]["type"] == "invalid_request_error"
    assert_still_serves(api)


def test_a_chunked_body_past_the_limit_is_413(api):
    chunk = b"x" * 65536
    pieces = [b'{"messages": [{"role": "user", "content": "'] + [chunk] * (BODY_LIMIT_MB * 16 + 2) + [b'"}]}']
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    answer = raw_http(api, head, body)
    assert answer.split(b"\r\n", 1)[0].split()[1:2] == [b"413"], answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"
    assert_still_serves(api)


def test_a_prompt_longer_than_the_context_could_hold_is_refused_without_tokenizing(api):
    response = post(api, "chat/completions", chat(messages=[{"role": "user", "content": "word " * 20_000}]))
    assert_openai_error(response, 413, "messages")
    assert "characters, more than 512 tokens" in response.json()["error"]["message"]
    assert_still_serves(api)


@pytest.fixture(scope="module")
def wide_context(tiny_llama):
    """A server that believes in a context that a megabyte of text could fit in characters (not in
    tokens), so it must tokenize it to tell."""
    config = tiny_config(tiny_llama, max_new_tokens=16, api=True, server_port=free_port(), max_context_tokens=200_000,
                         api_max_body_mb=BODY_LIMIT_MB)
    server = Server(load_models(config), config).start()
    yield server
    server.close()


def test_a_large_prompt_is_tokenized_off_the_event_loop(wide_context):
    """While a body just under the limit is parsed and tokenized, the server keeps answering."""
    api = wide_context
    text = " ".join(f"w{n}" for n in range(150_000))[: BODY_LIMIT_MB * 1024 * 1024 - 200]
    done = threading.Event()
    result = {}

    def big():
        result["response"] = post(api, "chat/completions", chat(messages=[{"role": "user", "content": text}]))
        done.set()

    thread = threading.Thread(target=big)
    thread.start()
    answered_meanwhile = 0
    while not done.is_set():
        if httpx.get(f"{api.url}/models", timeout=120).status_code == 200 and not done.is_set():
            answered_meanwhile += 1
    thread.join()
    assert_openai_error(result["response"], 413)  # about a million tokens: tokenized, then refused
    assert answered_meanwhile >= 3, "the event loop stalled while the large prompt was tokenized"


# ---------------------------------------------------------------- clients that go away

@pytest.fixture
def one_slot(tiny_llama):
    """A server answering one request at a time (one waiting), slowed so generation takes a while; and
    the count of forward passes, which says how long generation really ran."""
    with slow_one_at_a_time_server(tiny_llama, queue_size=2) as started:
        yield started


def scheduler_of(server):
    return server.app.state.api.scheduler


def long_story_runs_past(models, config, tokens):
    prompt = build_prompt(models.tokenizer, [], LONG_STORY, config, 512).text
    answer = generate_answers(models, [Request(prompt, max_new_tokens=tokens)], config)[0]
    return answer.finish_reason == "max_new_tokens"


def test_a_non_streaming_client_that_disconnects_stops_its_generation(one_slot):
    server, models, config, forwards = one_slot
    assert long_story_runs_past(models, config, 400), "the long story must not end by itself"
    forwards.clear()
    body = {"model": "base", "max_tokens": 400, "temperature": 0, "messages": [{"role": "user", "content": LONG_STORY}]}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after a second and closes its connection
        httpx.post(f"{server.url}/chat/completions", json=body, timeout=httpx.Timeout(120, read=1.0))
    wait_until(lambda: scheduler_of(server).admitted == 0, what="the disconnected request's slot being freed")
    assert len(forwards) < 300, f"generation ran on for {len(forwards)} tokens after the client left"
    before = len(forwards)
    reply = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=120).chat.completions.create(
        model="base", max_tokens=3, temperature=0, messages=[{"role": "user", "content": "Hi"}])
    assert reply.usage.completion_tokens <= 3 and len(forwards) - before <= 4, "the next request ran at once"


def test_a_queued_request_whose_client_disconnects_never_runs(one_slot):
    server, models, config, forwards = one_slot
    scheduler = scheduler_of(server)
    running = {"model": "base", "stream": True, "max_tokens": 400, "temperature": 0,
               "messages": [{"role": "user", "content": LONG_STORY}]}
    queued = {"model": "base", "max_tokens": 50, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]}
    batches = scheduler.batches
    with httpx.stream("POST", f"{server.url}/chat/completions", json=running, timeout=120) as response:
        lines = response.iter_lines()
        while "content" not in next(lines):  # the first text has arrived: the worker is busy
            pass
        with pytest.raises(httpx.ReadTimeout):  # queued behind it; the client gives up
            httpx.post(f"{server.url}/chat/completions", json=queued, timeout=httpx.Timeout(120, read=0.5))
        wait_until(lambda: not scheduler.waiting, what="the queued request leaving the queue")
        assert scheduler.admitted == 1 and scheduler.batches == batches + 1
    wait_until(lambda: scheduler.admitted == 0, what="the streaming request's slot being freed")
    assert scheduler.batches == batches + 1, "the disconnected queued request never ran"
    assert_still_serves(server)


# ---------------------------------------------------------------- soak

def server_process(tiny_llama, port, *flags):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "generate.py"), "--api=True", f"--base_model={tiny_llama}",
                             "--local_files_only=True", f"--server_port={port}", *flags], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the API server did not start: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)


VALID = [(f"Question {n}: what do you know about the number {n}?", tokens) for n in range(6) for tokens in (4, 12)]


@pytest.mark.slow
def test_soak_valid_and_hostile_traffic_no_5xx_flat_memory_answers_as_alone(tiny_llama):
    proc, url = server_process(tiny_llama, free_port(), "--max_new_tokens=16", f"--api_max_body_mb={BODY_LIMIT_MB}",
                               "--api_queue_size=64", "--api_batch_size=8")
    server = psutil.Process(proc.pid)
    try:
        def ask(client, question, tokens, stream):
            kwargs = dict(model="base", max_tokens=tokens, temperature=0,
                          messages=[{"role": "user", "content": question}])
            if not stream:
                return client.chat.completions.create(**kwargs).choices[0].message.content
            chunks = client.chat.completions.create(stream=True, **kwargs)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        alone_client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=300)
        alone = {(q, t): ask(alone_client, q, t, False) for q, t in VALID}
        warm_rss = server.memory_info().rss
        failures, counts = [], {"valid": 0, "hostile": 0}
        deadline = time.monotonic() + float(os.environ.get("SFTKIT_SOAK_SECONDS", "60"))

        def client_loop(seed):
            rng = random.Random(seed)
            client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=300)
            with httpx.Client(timeout=300) as http:
                while time.monotonic() < deadline:
                    if rng.random() < 0.5:
                        question, tokens = rng.choice(VALID)
                        got = ask(client, question, tokens, rng.random() < 0.5)
                        counts["valid"] += 1
                        if got != alone[(question, tokens)]:
                            failures.append(f"answer differs: {question!r} {tokens}: {got!r}")
                    else:
                        name, path, body, status, _ = rng.choice(HOSTILE)
                        response = http.post(f"{url}/{path}", content=body,
                                             headers={"Content-Type": "application/json"})
                        counts["hostile"] += 1
                        if response.status_code != status:
                            failures.append(f"{name}: {response.status_code} {response.text[:200]}")

        threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        end_rss = server.memory_info().rss
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"soak: {counts['valid']} valid and {counts['hostile']} hostile requests from 6 clients; server RSS "
          f"{warm_rss / 2 ** 20:.0f} MiB after warm-up, {end_rss / 2 ** 20:.0f} MiB at the end")
    assert not failures, failures[:10]
    assert counts["valid"] >= 20 and counts["hostile"] >= 20, counts
    assert end_rss < warm_rss * 1.15 + 30 * 2 ** 20, f"server RSS grew from {warm_rss >> 20} to {end_rss >> 20} MiB"
