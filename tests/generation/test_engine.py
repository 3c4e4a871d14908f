"""Generation engine: stopping, streaming, cancelling, batches of several adapters."""
import threading
from dataclasses import replace

import torch

from sftkit.generation import AnswerStream, Models, Request, build_prompt, generate_answers, load_models
from tests.generation.conftest import answer, tiny_config


class ScriptedModel:
    """Stands in for a causal LM: emits a fixed token script through generate()'s streamer and
    stopping-criteria contract, and records how many tokens it was allowed to produce."""

    def __init__(self, script_ids, eos_id):
        self.script = script_ids
        self.device = torch.device("cpu")
        self.generation_config = type("GenerationConfig", (), {"eos_token_id": eos_id})()
        self.emitted = 0

    def generate(self, input_ids, attention_mask, streamer=None, stopping_criteria=(), **kwargs):
        ids = input_ids
        if streamer:
            streamer.put(ids)
        for token in self.script[: kwargs["max_new_tokens"]]:
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            self.emitted += 1
            if streamer:
                streamer.put(torch.tensor([token]))
            if any(bool(c(ids, None).all()) for c in stopping_criteria) or token in kwargs["eos_token_id"]:
                break
        if streamer:
            streamer.end()
        return ids


def script(tokenizer, pieces):
    """Token ids whose pieces are encoded separately, so a stop string really spans several tokens."""
    ids = []
    for piece in pieces:
        ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


def test_scripted_stream_stops_at_a_stop_string_split_across_tokens(tiny_llama):
    from sftkit.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama, padding_side="left")
    pieces = [" The", " capital", " is", " Paris.", "\n<h", "um", "an>", ":", " What", " else", "?"]
    ids = script(tokenizer, pieces)
    stop_tokens = len(script(tokenizer, pieces[:8]))
    config = tiny_config(tiny_llama, max_new_tokens=50)
    prompt = build_prompt(tokenizer, [], "Capital of France?", config, 512).text

    model = ScriptedModel(ids, tokenizer.eos_token_id)
    stream = AnswerStream(Models.around(model, tokenizer), prompt, config)
    shown = list(stream)
    assert "".join(shown) == "The capital is Paris."
    assert all("<" not in piece for piece in shown)
    assert stream.answer.text == "The capital is Paris."
    assert stream.answer.finish_reason == "stop_string"
    assert model.emitted <= stop_tokens  # generation itself stopped, not just the display

    model = ScriptedModel(ids, tokenizer.eos_token_id)
    (batch_answer,) = generate_answers(Models.around(model, tokenizer), [prompt], config)
    assert batch_answer.text == "The capital is Paris."
    assert batch_answer.finish_reason == "stop_string" and batch_answer.new_tokens == stop_tokens


def test_scripted_stream_stops_at_eos_and_counts_tokens(tiny_llama):
    from sftkit.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama, padding_side="left")
    ids = script(tokenizer, [" Hello", " there."]) + [tokenizer.eos_token_id] + script(tokenizer, [" never"])
    config = tiny_config(tiny_llama)
    stream = AnswerStream(Models.around(ScriptedModel(ids, tokenizer.eos_token_id), tokenizer), "<human>: hi\n<bot>:",
                          config)
    assert "".join(stream) == "Hello there."
    assert stream.answer.finish_reason == "eos"
    assert stream.answer.new_tokens == ids.index(tokenizer.eos_token_id) + 1


# ---------------------------------------------------------------- tiny model: greedy, adapters, stopping

def test_greedy_is_deterministic_and_streaming_matches_non_streaming(llama):
    config, models = llama
    tokenizer = models.tokenizer
    first = answer(models, config, "What is the capital of France?")
    second = answer(models, config, "What is the capital of France?")
    assert first.text == second.text and first.new_tokens > 0
    prompt = build_prompt(tokenizer, [], "What is the capital of France?", config, 512).text
    stream = AnswerStream(models, prompt, config)
    pieces = list(stream)
    assert "".join(pieces) == stream.answer.text == first.text
    assert stream.answer.new_tokens == first.new_tokens
    assert stream.answer.first_token_seconds is not None


def test_a_batch_is_left_padded_whatever_the_tokenizers_padding_side(llama):
    """Training validation hands the engine its training tokenizer, which pads on the right."""
    config, models = llama
    tokenizer = models.tokenizer
    prompts = [build_prompt(tokenizer, [], message, config, 512).text
               for message in ("Hi", "What is the capital of France, and why is it there?")]
    alone = [generate_answers(models, [p], config)[0].text for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        together = [a.text for a in generate_answers(models, prompts, config)]
    finally:
        tokenizer.padding_side = side
    assert together == alone


def test_tiny_model_stops_at_a_stop_string_spanning_tokens(llama):
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    free = answer(models, replace(config, max_new_tokens=30), "Hello")
    prompt = build_prompt(tokenizer, [], "Hello", config, 512).text
    out = model.generate(**tokenizer([prompt], return_tensors="pt"), max_new_tokens=30, do_sample=False,
                         eos_token_id=None, pad_token_id=tokenizer.pad_token_id)[0, -30:].tolist()
    # A stop string made of the end of token 10 and the start of token 11 of the greedy answer.
    token_10, token_11 = (tokenizer.decode([t], skip_special_tokens=True) for t in out[9:11])
    assert token_10 and token_11 and free.new_tokens >= 11, "the tiny model should talk for 11+ tokens"
    stop = token_10[-1] + token_11[:1]
    expected = tokenizer.decode(out, skip_special_tokens=True).split(stop)[0].strip()

    stopped_config = replace(config, max_new_tokens=30, stop=[stop])
    batch = answer(models, stopped_config, "Hello")
    stream = AnswerStream(models, prompt, stopped_config)
    shown = "".join(stream)
    assert batch.text == shown == expected
    assert stop not in shown
    assert batch.finish_reason == stream.answer.finish_reason == "stop_string"
    assert batch.new_tokens <= 11 and stream.answer.new_tokens <= 11


def test_closing_a_stream_early_stops_the_generation_thread(llama):
    config, models = llama
    tokenizer = models.tokenizer
    config = replace(config, max_new_tokens=400, max_context_tokens=512)
    prompt = build_prompt(tokenizer, [], "Tell me a long story", config, 512).text
    before = {t for t in threading.enumerate() if t.name == "sftkit-generate"}
    stream = AnswerStream(models, prompt, config)
    pieces = iter(stream)
    next(pieces)
    pieces.close()
    assert stream.cancel.is_set()
    assert not [t for t in threading.enumerate() if t.name == "sftkit-generate" and t not in before]


def test_cancel_event_ends_the_answer_as_cancelled(llama):
    config, models = llama
    tokenizer = models.tokenizer
    config = replace(config, max_new_tokens=400, max_context_tokens=512)
    prompt = build_prompt(tokenizer, [], "Tell me a long story", config, 512).text
    cancel = threading.Event()
    stream = AnswerStream(models, prompt, config, cancel=cancel)
    for n, _ in enumerate(stream):
        if n == 1:
            cancel.set()
    assert stream.answer.finish_reason == "cancelled"
    assert stream.answer.new_tokens < 400


def test_batch_stream_streams_two_adapters_together(tiny_llama, two_adapters):
    from sftkit.generation import BatchStream

    models = load_models(tiny_config(tiny_llama, lora_weights=f"base=,tuned={two_adapters['tuned']}"))
    config = tiny_config(tiny_llama)
    prompt = build_prompt(models.tokenizer, [], "Hello there", config, 512).text
    stream = BatchStream(models, [Request(prompt, "base"), Request(prompt, "tuned")], config)
    texts = ["", ""]
    order = []
    for row, piece in stream:
        texts[row] += piece
        order.append(row)
    assert texts == [a.text for a in stream.answers]
    assert {0, 1} <= set(order[:4]), "both answers advance together"
    alone = generate_answers(models, [Request(prompt, "base"), Request(prompt, "tuned")], config)
    assert texts == [a.text for a in alone]
