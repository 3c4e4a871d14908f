"""Generation engine: stopping, streaming, prompting, adapters, quantized loading and batch mode."""
import threading
from dataclasses import replace

import pytest
import torch

from sftkit.generation import (AnswerStream, GenerationError, Models, Request, StopTextFilter, build_prompt,
                               context_length, generate_answers, load_models)
from sftkit.models import ModelError
from tests.generation.conftest import make_adapter, tiny_config


def answer(models, config, message, history=()):
    prompt = build_prompt(models.tokenizer, list(history), message, config, context_length(models.model, config))
    return generate_answers(models, [prompt.text], config)[0]


# ---------------------------------------------------------------- stop strings, scripted

def test_stop_filter_holds_back_a_stop_string_split_across_pieces():
    shown = StopTextFilter(["<human>:", "<bot>:"])
    pieces = [" Paris", " is", " nice.", "\n<hu", "man", ">: and more"]
    outputs = [shown.feed(p) for p in pieces]
    assert outputs == ["Paris", " is", " nice.", "", "", ""]
    assert shown.stopped and shown.flush() == ""
    assert shown.shown == "Paris is nice."


def test_stop_filter_releases_text_that_only_looked_like_a_stop_string():
    shown = StopTextFilter(["<human>:"])
    assert shown.feed("a <hu") == "a"
    assert shown.feed("go> b") == " <hugo> b"
    assert shown.feed(" <") == ""
    assert shown.flush() == " <"
    assert not shown.stopped and shown.shown == "a <hugo> b <"


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
    model, tokenizer = models.model, models.tokenizer
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
    model, tokenizer = models.model, models.tokenizer
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


def test_adapter_changes_greedy_output(tiny_llama, llama, tmp_path):
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    base = answer(models, config, "Who are you?")
    adapter = make_adapter(tiny_llama, tmp_path / "lora_out", ["q_proj", "v_proj", "down_proj"])
    adapted_config = replace(config, lora_weights=adapter)
    adapted_models = load_models(adapted_config)
    from peft import PeftModel

    assert isinstance(adapted_models.model, PeftModel)
    adapted = answer(adapted_models, adapted_config, "Who are you?")
    assert adapted.text != base.text


def test_newest_checkpoint_is_used_when_the_adapter_dir_has_only_checkpoints(tiny_llama, tmp_path, capsys):
    from sftkit.generation import resolve_adapter

    out = tmp_path / "lora_out"
    make_adapter(tiny_llama, out / "checkpoint-5", ["q_proj"])
    make_adapter(tiny_llama, out / "checkpoint-20", ["q_proj"])
    make_adapter(tiny_llama, out / "checkpoint-3", ["q_proj"])
    assert resolve_adapter(str(out)) == str(out / "checkpoint-20")
    assert "checkpoint-20" in capsys.readouterr().err


def test_missing_adapter_dir_is_a_clear_error(tiny_llama, tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        load_models(tiny_config(tiny_llama, lora_weights=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no adapter_config.json"):
        load_models(tiny_config(tiny_llama, lora_weights=str(tmp_path / "empty")))


def test_adapter_for_another_base_model_names_both(tiny_llama, tiny_neox, tmp_path):
    adapter = make_adapter(tiny_neox, tmp_path / "neox_lora", ["query_key_value"])
    with pytest.raises(ModelError) as err:
        load_models(tiny_config(tiny_llama, lora_weights=adapter))
    assert tiny_neox in str(err.value) and tiny_llama in str(err.value)


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
    model, tokenizer = models.model, models.tokenizer
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
    model, tokenizer = models.model, models.tokenizer
    config = replace(config, max_new_tokens=400, max_context_tokens=512)
    prompt = build_prompt(tokenizer, [], "Tell me a long story", config, 512).text
    cancel = threading.Event()
    stream = AnswerStream(models, prompt, config, cancel=cancel)
    for n, _ in enumerate(stream):
        if n == 1:
            cancel.set()
    assert stream.answer.finish_reason == "cancelled"
    assert stream.answer.new_tokens < 400


# ---------------------------------------------------------------- prompting and trimming

def test_prompt_uses_the_training_format(llama):
    config, models = llama
    tokenizer = models.tokenizer
    prompt = build_prompt(tokenizer, [("Hi", "Hello!")], "How are you?", config, 512)
    assert prompt.text == "<human>: Hi\n<bot>: Hello!\n<human>: How are you?\n<bot>:"
    assert prompt.warning() is None


def test_history_is_trimmed_from_the_oldest_turn(llama):
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    history = [(f"question {i} " + "word " * 3, f"answer {i} " + "word " * 3) for i in range(10)]
    config = replace(config, max_context_tokens=200, max_new_tokens=40)
    prompt = build_prompt(tokenizer, history, "last question", config, context_length(model, config))
    assert 0 < prompt.dropped_turns < 10
    assert prompt.tokens <= 160
    assert "question 9" in prompt.text and "question 0" not in prompt.text
    assert f"question {prompt.dropped_turns - 1} " not in prompt.text
    assert f"question {prompt.dropped_turns} " in prompt.text
    assert prompt.text.endswith("<human>: last question\n<bot>:")
    assert "dropped the" in prompt.warning()


def test_too_long_message_keeps_its_end_and_warns(llama):
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    config = replace(config, max_context_tokens=128, max_new_tokens=32)
    message = "start " + "filler " * 300 + "the real question?"
    prompt = build_prompt(tokenizer, [("old", "turn")], message, config, context_length(model, config))
    assert prompt.tokens <= 96 and prompt.truncated_tokens > 0 and prompt.dropped_turns == 1
    assert prompt.text.endswith("the real question?\n<bot>:") and "start" not in prompt.text
    assert "cut the first" in prompt.warning()
    with pytest.warns(UserWarning, match="prompt 1: prompt too long"):
        from sftkit.generation.batch import answer_batch

        rows = answer_batch(models, [message], config, progress=False)
    assert rows[0]["new_tokens"] > 0


def test_empty_message_and_impossible_budget_are_rejected(llama):
    config, models = llama
    tokenizer = models.tokenizer
    with pytest.raises(GenerationError, match="empty message"):
        build_prompt(tokenizer, [], "   ", config, 512)
    with pytest.raises(GenerationError, match="max_new_tokens=600"):
        build_prompt(tokenizer, [], "hi", replace(config, max_new_tokens=600), 512)


# ---------------------------------------------------------------- quantized loading

@pytest.mark.parametrize("bits", ["load_8bit", "load_4bit"])
def test_quantized_loading_generates(tiny_llama, bits):
    import bitsandbytes as bnb

    config = tiny_config(tiny_llama, **{bits: True})
    models = load_models(config)
    layer = bnb.nn.Linear8bitLt if bits == "load_8bit" else bnb.nn.Linear4bit
    assert any(isinstance(m, layer) for m in models.model.modules())
    result = answer(models, config, "What is the capital of France?")
    assert result.new_tokens > 0 and result.finish_reason in ("eos", "stop_string", "max_new_tokens")




# ---------------------------------------------------------------- several adapters on one base

def test_lora_weights_names_several_adapters(tmp_path):
    from sftkit.generation.loading import parse_lora_weights

    assert parse_lora_weights(None) == []
    assert parse_lora_weights("base=,tuned=lora_out") == [("base", None), ("tuned", "lora_out")]
    (tmp_path / "my lora").mkdir()
    assert parse_lora_weights(str(tmp_path / "my lora")) == [("my_lora", str(tmp_path / "my lora"))]
    assert parse_lora_weights("runs/lora_out") == [("lora_out", "runs/lora_out")]
    with pytest.raises(GenerationError, match="given twice"):
        parse_lora_weights("a=x,a=y")
    with pytest.raises(GenerationError, match="is not name=path"):
        parse_lora_weights("a=x,y")
    with pytest.raises(GenerationError, match="at most once"):
        parse_lora_weights("a=,b=")


def test_one_load_serves_every_adapter_and_a_mixed_batch_matches_each_alone(tiny_llama, two_adapters):
    from peft import PeftModel

    from sftkit.generation import load_models

    spec = f"tuned={two_adapters['tuned']},other={two_adapters['other']}"
    models = load_models(tiny_config(tiny_llama, lora_weights=spec))
    assert isinstance(models.model, PeftModel)
    assert models.names == ["base", "tuned", "other"] and models.default == "tuned" and models.base == "base"
    assert models.resolve(None) == "tuned" and models.peft_adapter("base") == "__base__"
    with pytest.raises(GenerationError, match="unknown model 'nope'; this server has base, tuned, other"):
        models.resolve("nope")
    config = tiny_config(tiny_llama)
    prompt = build_prompt(models.tokenizer, [], "Who are you?", config, 512).text
    alone = {name: generate_answers(models, [Request(prompt, name)], config)[0].text for name in models.names}
    assert len(set(alone.values())) == 3, "each adapter answers differently"
    assert alone["base"] == answer(load_models(config), config, "Who are you?").text
    mixed = generate_answers(models, [Request(prompt, name) for name in models.names], config)
    assert [a.text for a in mixed] == [alone[name] for name in models.names]
    # the default (first named) adapter answers when none is named, as a single adapter always did
    assert generate_answers(models, [prompt], config)[0].text == alone["tuned"]


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
