"""OpenAI-compatible API: a real uvicorn server on 127.0.0.1 driven by the official openai client."""
import contextlib
import json
import socket
import threading
import time
from dataclasses import replace

import httpx
import openai
import pytest

from sftkit.generation import Request, build_prompt, generate_answers, load_models
from sftkit.generation.api import Server
from tests.generation.conftest import tiny_config

KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout=120.0, what="condition"):
    """Poll ``condition`` until true (the timeout only guards against a hang, it measures nothing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def api(tiny_llama, two_adapters):
    config = tiny_config(tiny_llama, lora_weights=f"base=,tuned={two_adapters['tuned']},other={two_adapters['other']}",
                         max_new_tokens=16, api=True, api_key=KEY, server_port=free_port())
    models = load_models(config)
    server = Server(models, config).start()
    client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)
    yield dict(config=config, models=models, server=server, client=client)
    server.close()


def expected(api, message, model="base", system="", max_new_tokens=16):
    config, models = api["config"], api["models"]
    config = replace(config, system_prompt=system, max_new_tokens=max_new_tokens)
    prompt = build_prompt(models.tokenizer, [], message, config, 512)
    return generate_answers(models, [Request(prompt.text, model)], config)[0]


def chat(api, message, **kwargs):
    return api["client"].chat.completions.create(
        model=kwargs.pop("model", "base"), messages=[{"role": "user", "content": message}], **kwargs)


def test_lists_the_base_model_and_each_adapter(api):
    assert [m.id for m in api["client"].models.list()] == ["base", "tuned", "other"]
    assert api["client"].models.retrieve("tuned").id == "tuned"


def test_chat_answers_like_the_engine_with_usage_counts(api):
    reply = chat(api, "What is the capital of France?", temperature=0)
    want = expected(api, "What is the capital of France?")
    assert reply.choices[0].message.content == want.text and reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens == want.new_tokens
    assert reply.usage.prompt_tokens == want.prompt_tokens > 0
    assert reply.usage.total_tokens == want.prompt_tokens + want.new_tokens
    assert reply.choices[0].finish_reason == ("length" if want.finish_reason == "max_new_tokens" else "stop")


def test_system_messages_are_rendered_as_the_system_prompt(api):
    reply = api["client"].chat.completions.create(model="base", temperature=0, messages=[
        {"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Who are you?"}])
    want = expected(api, "Who are you?", system="You are a pirate.")
    assert reply.choices[0].message.content == want.text
    assert reply.usage.prompt_tokens == want.prompt_tokens > expected(api, "Who are you?").prompt_tokens


def test_stream_adds_up_to_the_answer_and_ends_with_done(api):
    pieces = []
    for chunk in chat(api, "Hello there", stream=True, temperature=0, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage
    want = expected(api, "Hello there")
    assert "".join(pieces) == want.text and len(pieces) >= 2
    assert usage.completion_tokens == want.new_tokens
    with httpx.stream("POST", f"{api['server'].url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "base", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
                      timeout=120) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_the_model_field_picks_an_adapter(api):
    answers = {name: chat(api, "Who are you?", model=name, temperature=0).choices[0].message.content
               for name in ("base", "tuned", "other")}
    assert answers["tuned"] == expected(api, "Who are you?", model="tuned").text
    assert answers["other"] == expected(api, "Who are you?", model="other").text
    assert len(set(answers.values())) == 3
    with pytest.raises(openai.NotFoundError) as err:
        chat(api, "Hi", model="nope")
    assert err.value.body["code"] == "model_not_found" and "base, tuned, other" in err.value.body["message"]


def test_completions_continue_raw_text_with_stop_and_max_tokens(api):
    models, config = api["models"], api["config"]
    prompt = "<human>: What is the capital of France?\n<bot>:"
    full = generate_answers(models, [Request(prompt, "base")], replace(config, max_new_tokens=16))[0]
    reply = api["client"].completions.create(model="base", prompt=prompt, max_tokens=16, temperature=0)
    assert reply.choices[0].text == full.text
    short = api["client"].completions.create(model="base", prompt=prompt, max_tokens=3, temperature=0)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    assert len(full.text) >= 10, "the tiny model should say something"
    stop = full.text[6:9]
    stopped = api["client"].completions.create(model="base", prompt=prompt, max_tokens=16, temperature=0, stop=stop)
    assert stopped.choices[0].text == full.text.split(stop)[0].strip()
    assert stopped.choices[0].finish_reason == "stop"


def test_n_choices_and_seed_make_sampling_reproducible(api):
    first = chat(api, "Tell me something", n=3, temperature=1.0, top_p=0.95, seed=11)
    again = chat(api, "Tell me something", n=3, temperature=1.0, top_p=0.95, seed=11)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1, "sampled choices should differ from each other"
    assert first.usage.completion_tokens >= 3 and first.usage.prompt_tokens == expected(api, "Tell me something").prompt_tokens


def test_wrong_or_missing_key_is_401(api):
    bad = openai.OpenAI(base_url=api["server"].url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    response = httpx.get(f"{api['server'].url}/models")
    assert response.status_code == 401 and "error" in response.json()


def test_bad_bodies_are_400_and_too_long_prompts_413(api):
    headers = {"Authorization": f"Bearer {KEY}"}
    url = api["server"].url
    missing = httpx.post(f"{url}/chat/completions", headers=headers, json={"model": "base"})
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error" and "messages" in missing.json()["error"]["message"]
    wrong_type = httpx.post(f"{url}/chat/completions", headers=headers,
                            json={"model": "base", "messages": [{"role": "user", "content": "hi"}], "n": "many"})
    assert wrong_type.status_code == 400
    ends_with_bot = httpx.post(f"{url}/chat/completions", headers=headers,
                               json={"messages": [{"role": "assistant", "content": "hi"}]})
    assert ends_with_bot.status_code == 400 and "end with a user message" in ends_with_bot.json()["error"]["message"]
    with pytest.raises(openai.APIStatusError) as err:
        chat(api, "word " * 600)
    assert err.value.status_code == 413 and err.value.body["code"] == "context_length_exceeded"


def test_sixteen_concurrent_clients_all_get_answers_batched(api):
    questions = [(f"Question number {n}: what is {n} and {n}?", ("base", "tuned", "other")[n % 3]) for n in range(16)]
    replies: dict[int, str] = {}
    errors = []
    start = threading.Barrier(16)
    batches_before = api["server"].app.state.api.scheduler.batches

    def ask(n):
        try:
            client = openai.OpenAI(base_url=api["server"].url, api_key=KEY, max_retries=0, timeout=300)
            start.wait()
            text, model = questions[n]
            replies[n] = client.chat.completions.create(model=model, temperature=0, messages=[
                {"role": "user", "content": text}]).choices[0].message.content
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and sorted(replies) == list(range(16))
    for n, (text, model) in enumerate(questions):
        assert replies[n] == expected(api, text, model=model).text
    assert api["server"].app.state.api.scheduler.batches - batches_before < 16, "concurrent requests share batches"


@contextlib.contextmanager
def slow_one_at_a_time_server(tiny_llama, queue_size: int):
    """A server answering one request at a time (``queue_size`` waiting), slowed so generation takes a
    while: (server, models, config, forwards), the last the list of forward passes made so far."""
    config = tiny_config(tiny_llama, max_new_tokens=400, api=True, server_port=free_port(),
                         api_queue_size=queue_size, api_batch_size=1)
    models = load_models(config)
    forwards = []
    models.model.register_forward_pre_hook(lambda module, args: forwards.append(time.sleep(0.005)))
    server = Server(models, config).start()
    try:
        yield server, models, config, forwards
    finally:
        server.close()


@pytest.fixture
def one_slot_server(tiny_llama):
    with slow_one_at_a_time_server(tiny_llama, queue_size=1) as (server, _, _, forwards):
        yield server, forwards


def test_a_full_queue_is_429_and_a_cut_connection_frees_its_slot(one_slot_server):
    server, forwards = one_slot_server
    scheduler = server.app.state.api.scheduler
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    body = {"model": "base", "stream": True, "max_tokens": 400, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me a long story"}]}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        while "content" not in next(lines):  # the first text has arrived: the slot is taken
            pass
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="base", messages=[{"role": "user", "content": "Hi"}])
        assert err.value.response.headers["retry-after"] == "1" and err.value.body["code"] == "queue_full"
    wait_until(lambda: scheduler.admitted == 0, what="the cut connection's slot being freed")
    cut_at = len(forwards)
    assert cut_at < 400, "the generation of the cut connection stopped early"
    reply = client.chat.completions.create(model="base", max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "Hi"}])
    assert reply.usage.completion_tokens >= 1
