"""Tool calls end to end, as a user runs them: finetune.py teaches the tiny model a tool-calling dataset in
OpenAI's messages format, generate.py serves it as the API, and the official openai client sends tools,
receives the call (whole and streamed), sends the tool's result back and gets the answer; generate.py's
batch mode counts the valid calls in its report."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.generation.test_api import free_port

REPO = Path(__file__).resolve().parents[2]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CITIES = {"Oslo": 3, "Paris": 18, "Lima": 25}


def conversations() -> list[dict]:
    """Each city asked about, called for and answered; the call alone too, so it is learned where a prompt
    ends (after ``<bot>:``) as well as in a conversation's history."""
    rows = []
    for n, (city, temp) in enumerate(CITIES.items()):
        ask = {"role": "user", "content": f"What is the weather in {city}?"}
        call = {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{n}", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]}
        result = {"role": "tool", "tool_call_id": f"call_{n}", "content": json.dumps({"temp_c": temp})}
        answer = {"role": "assistant", "content": f"It is {temp} degrees in {city}."}
        rows += [{"messages": [ask, call], "tools": [WEATHER]},
                 {"messages": [ask, call, result, answer], "tools": [WEATHER]}]
    return rows


def run(*args, **kwargs):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    """The tiny model fine-tuned (in full) on the conversations by finetune.py."""
    root = tmp_path_factory.mktemp("tool_calls")
    data = root / "tools.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in conversations()))
    model = root / "model"
    trained = run(REPO / "finetune.py", f"--base_model={tiny_llama}", f"--data_path={data}", f"--output_dir={model}",
                  "--lora_r=0", "--max_steps=100", "--batch_size=6", "--micro_batch_size=6", "--learning_rate=5e-3",
                  "--warmup_steps=5", "--val_set_size=0", "--save_steps=0", "--report_to=none", "--cutoff_len=512")
    assert trained.returncode == 0, trained.stderr[-3000:]
    return model


@pytest.fixture(scope="module")
def served(trained):
    """The trained model served by generate.py --api=True."""
    model, port = trained, free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    server = subprocess.Popen([sys.executable, str(REPO / "generate.py"), f"--base_model={model}", "--api=True",
                               "--local_files_only=True", f"--server_port={port}", "--max_new_tokens=96",
                               "--repetition_penalty=1.0"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300  # guards against a hang only
        while True:
            if server.poll() is not None:
                raise AssertionError(f"generate.py --api=True exited: {server.stderr.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API server did not start"
            time.sleep(0.2)
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
    finally:
        server.terminate()
        server.wait(timeout=60)


def ask(city):
    return [{"role": "user", "content": f"What is the weather in {city}?"}]


@pytest.mark.slow
def test_the_trained_model_calls_the_tool_and_answers_from_its_result(served):
    reply = served.chat.completions.create(model="base", messages=ask("Oslo"), tools=[WEATHER], temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    history = ask("Oslo") + [choice.message.model_dump(exclude_none=True),
                             {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 3})}]
    final = served.chat.completions.create(model="base", messages=history, tools=[WEATHER], temperature=0)
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls
    assert final.choices[0].message.content == "It is 3 degrees in Oslo."


@pytest.mark.slow
def test_a_streamed_call_arrives_as_delta_tool_calls(served):
    texts, calls, finish = [], {}, None
    for chunk in served.chat.completions.create(model="base", messages=ask("Paris"), tools=[WEATHER], temperature=0,
                                                stream=True):
        delta = chunk.choices[0].delta
        texts.append(delta.content or "")
        for call in delta.tool_calls or ():
            calls.setdefault(call.index, []).append(call)
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and "".join(texts) == "" and list(calls) == [0]
    (call,) = calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


@pytest.mark.slow
def test_tool_choice_none_answers_in_text_and_a_named_function_is_called(served):
    plain = served.chat.completions.create(model="base", messages=ask("Lima"), tools=[WEATHER], temperature=0,
                                           tool_choice="none")
    assert plain.choices[0].finish_reason in ("stop", "length") and not plain.choices[0].message.tool_calls
    named = served.chat.completions.create(model="base", messages=ask("Lima"), tools=[WEATHER], temperature=0,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = named.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"city": "Lima"}
    assert plain.usage.prompt_tokens < named.usage.prompt_tokens  # no tool list rendered under "none"


@pytest.mark.slow
def test_batch_mode_records_each_answers_calls_and_the_report_counts_the_valid_ones(trained, tmp_path):
    renamed = {"type": "function", "function": {**WEATHER["function"], "name": "get_weather2"}}
    rows = [{"messages": ask(city), "tools": [WEATHER]} for city in CITIES]
    rows.append({"messages": ask("Oslo"), "tools": [renamed]})  # it calls the function it learned: not listed
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "answers.json"
    done = run(REPO / "generate.py", f"--base_model={trained}", "--local_files_only=True",
               f"--eval_prompts_file={prompts}", f"--eval_output_file={out}", "--max_new_tokens=96",
               "--repetition_penalty=1.0")
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(out.read_text())
    assert [a["tool_call"] for a in answers] == ["valid", "valid", "valid", "unknown_function"]
    assert [a["tool_calls"][0]["arguments"] for a in answers[:3]] == [{"city": city} for city in CITIES]
    report = (tmp_path / "answers_report" / "report.md").read_text()
    assert "| base | 4 | 4 | 3 | unknown_function: 1 |" in report and "3/4 valid tool calls" in done.stderr
