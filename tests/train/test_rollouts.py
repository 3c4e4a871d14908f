"""Rollout prompts from every training format, rendered as generate.py renders them; sampled answers
that stop at the prompt type's stops, seeded."""
import json

import pytest
import torch

from sftkit.errors import DataError
from sftkit.generation import GenerateConfig, build_prompt
from sftkit.models import load_model, load_tokenizer
from sftkit.prompts import render_prompt, stop_strings
from sftkit.train.rollouts import read_prompts, render, sample


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ROWS = {
    "finalize.json": [{"input": "<human>: What is water?\n<bot>: Water is H2O.", "prompt_type": "plain",
                       "source": "oig"}],
    "oasst_pairs.json": [{"prompt": [{"role": "user", "content": "Name a planet."}], "chosen": "Mars.",
                          "rejected": "Pluto.", "source": "oasst"}],
    "sharegpt.json": [{"conversations": [{"from": "system", "value": "Be brief."},
                                         {"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"},
                                         {"from": "human", "value": "How are you?"},
                                         {"from": "gpt", "value": "Fine."}]}],
    "messages.jsonl": [{"messages": [{"role": "user", "content": "Who are you?"},
                                     {"role": "assistant", "content": "An assistant."}]}],
    "alpaca.json": [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}],
    "prompts.json": ["Tell me a joke.", {"prompt": "What is 2+2?"}, "Tell me a joke.", 7],
    "hh.json": [{"chosen": "\n\nHuman: Is the sky blue?\n\nAssistant: Yes.",
                 "rejected": "\n\nHuman: Is the sky blue?\n\nAssistant: No."}],
}


def write(path, rows):
    text = "\n".join(json.dumps(r) for r in rows) if path.suffix == ".jsonl" else json.dumps(rows)
    path.write_text(text)
    return str(path)


def test_prompts_from_every_format_are_the_prompt_part_of_each_row(tiny_llama, tmp_path):
    tokenizer = load_tokenizer(tiny_llama)
    found = {}
    for name, rows in ROWS.items():
        prompts, stats = read_prompts(write(tmp_path / name, rows), {}, "human_bot", tokenizer, 400)
        found[name] = (prompts, stats)
    text = {name: [p.text for p in prompts] for name, (prompts, _) in found.items()}
    assert text["finalize.json"] == ["<human>: What is water?\n<bot>:"]
    assert text["oasst_pairs.json"] == ["<human>: Name a planet.\n<bot>:"]
    assert text["messages.jsonl"] == ["<human>: Who are you?\n<bot>:"]
    assert text["hh.json"] == ["<human>: Is the sky blue?\n<bot>:"]
    assert text["alpaca.json"] == [render_prompt([], "Add the numbers.", "human_bot", input="2 and 3")]
    assert text["sharegpt.json"] == [render_prompt([("human", "Hi there"), ("bot", "Hello!")], "How are you?",
                                                   "human_bot", system="Be brief.")]
    # the reward sees the human message, with earlier turns as <human>:/<bot>: text before it
    assert found["sharegpt.json"][0][0].question == "<human>: Hi there\n<bot>: Hello!\n<human>: How are you?"
    assert found["oasst_pairs.json"][0][0].question == "Name a planet."
    prompts, stats = found["prompts.json"]
    assert [p.question for p in prompts] == ["Tell me a joke.", "What is 2+2?"]
    assert stats.rows == 4 and stats.skipped == {"repeated_prompt": 1, "not_an_object": 1}


def test_the_rendering_is_generate_pys_and_the_ids_are_the_engines(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    for prompt_type in ("human_bot", "instruct", "chat"):
        mine = render([("human", "Who are you?")], prompt_type, tokenizer)
        theirs = build_prompt(tokenizer, [], "Who are you?", GenerateConfig(prompt_type=prompt_type), 512)
        assert mine.text == theirs.text
        assert list(mine.ids) == tokenizer(mine.text, add_special_tokens=prompt_type != "chat")["input_ids"]


def test_long_prompts_are_skipped_and_counted_and_none_left_is_an_error(tiny_llama, tmp_path):
    tokenizer = load_tokenizer(tiny_llama)
    path = write(tmp_path / "p.json", ["short?", "a much much longer question " * 20])
    prompts, stats = read_prompts(path, {}, "human_bot", tokenizer, 40)
    assert [p.question for p in prompts] == ["short?"]
    assert stats.skipped == {"prompt_too_long": 1}
    with pytest.raises(DataError, match="no usable prompts"):
        read_prompts(path, {}, "human_bot", tokenizer, 2)


def answers(policy, prompts, **overrides):
    tokenizer = load_tokenizer(policy)
    model = load_model(policy, device="cpu", dtype=torch.float32).eval()
    settings = dict(per_prompt=4, prompt_type="human_bot", max_new_tokens=16, temperature=1.0, top_p=1.0, seed=7,
                    synced=False)
    return tokenizer, sample(model, tokenizer, [render([("human", q)], "human_bot", tokenizer) for q in prompts],
                             **{**settings, **overrides})


def test_answers_stop_at_the_prompt_types_stop_strings(toy_policy):
    tokenizer, completions = answers(toy_policy, ["Who are you?", "Where is Paris?"])
    stops = stop_strings("human_bot")
    assert len(completions) == 8
    for c in completions:
        generated = tokenizer.decode(list(c.ids))
        assert c.stopped and generated.rstrip().endswith("<human>:"), generated  # learned stop, kept in the ids
        assert not any(s in c.text for s in stops) and c.text == generated.split("<human>:")[0].strip()
    _, cut = answers(toy_policy, ["Who are you?"], max_new_tokens=2)
    assert all(not c.stopped and len(c.ids) == 2 for c in cut)


def test_sampling_is_seeded(toy_policy):
    _, first = answers(toy_policy, ["Who are you?"], seed=3)
    _, again = answers(toy_policy, ["Who are you?"], seed=3)
    _, other = answers(toy_policy, ["Who are you?"], seed=4)
    assert first == again and first != other
    assert len({c.ids for c in first}) > 1  # the answers to one prompt differ: a group to compare
