"""Generation engine: stopping, streaming, prompting, adapters, quantized loading and batch mode."""
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sftkit.generation import (AnswerStream, GenerateConfig, GenerationError, StopTextFilter, build_prompt,
                               context_length, generate_answers, load_for_generation, read_prompts)
from sftkit.models import ModelError

REPO = Path(__file__).resolve().parents[1]


def tiny_config(model_dir, **overrides) -> GenerateConfig:
    settings = dict(base_model=model_dir, local_files_only=True, max_new_tokens=24, repetition_penalty=1.0)
    return GenerateConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def llama(tiny_llama):
    config = tiny_config(tiny_llama)
    model, tokenizer = load_for_generation(config)
    return config, model, tokenizer


def make_adapter(base_dir, out_dir, target_modules) -> str:
    """A LoRA adapter with random (non-zero) B matrices, so it really changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=target_modules,
                                                 init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    return str(out_dir)


def answer(model, tokenizer, config, message, history=()):
    prompt = build_prompt(tokenizer, list(history), message, config, context_length(model, config))
    return generate_answers(model, tokenizer, [prompt.text], config)[0]


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
    stream = AnswerStream(model, tokenizer, prompt, config)
    shown = list(stream)
    assert "".join(shown) == "The capital is Paris."
    assert all("<" not in piece for piece in shown)
    assert stream.answer.text == "The capital is Paris."
    assert stream.answer.finish_reason == "stop_string"
    assert model.emitted <= stop_tokens  # generation itself stopped, not just the display

    model = ScriptedModel(ids, tokenizer.eos_token_id)
    (batch_answer,) = generate_answers(model, tokenizer, [prompt], config)
    assert batch_answer.text == "The capital is Paris."
    assert batch_answer.finish_reason == "stop_string" and batch_answer.new_tokens == stop_tokens


def test_scripted_stream_stops_at_eos_and_counts_tokens(tiny_llama):
    from sftkit.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama, padding_side="left")
    ids = script(tokenizer, [" Hello", " there."]) + [tokenizer.eos_token_id] + script(tokenizer, [" never"])
    config = tiny_config(tiny_llama)
    stream = AnswerStream(ScriptedModel(ids, tokenizer.eos_token_id), tokenizer, "<human>: hi\n<bot>:", config)
    assert "".join(stream) == "Hello there."
    assert stream.answer.finish_reason == "eos"
    assert stream.answer.new_tokens == ids.index(tokenizer.eos_token_id) + 1


# ---------------------------------------------------------------- tiny model: greedy, adapters, stopping

def test_greedy_is_deterministic_and_streaming_matches_non_streaming(llama):
    config, model, tokenizer = llama
    first = answer(model, tokenizer, config, "What is the capital of France?")
    second = answer(model, tokenizer, config, "What is the capital of France?")
    assert first.text == second.text and first.new_tokens > 0
    prompt = build_prompt(tokenizer, [], "What is the capital of France?", config, 512).text
    stream = AnswerStream(model, tokenizer, prompt, config)
    pieces = list(stream)
    assert "".join(pieces) == stream.answer.text == first.text
    assert stream.answer.new_tokens == first.new_tokens
    assert stream.answer.first_token_seconds is not None


def test_adapter_changes_greedy_output(tiny_llama, llama, tmp_path):
    config, model, tokenizer = llama
    base = answer(model, tokenizer, config, "Who are you?")
    adapter = make_adapter(tiny_llama, tmp_path / "lora_out", ["q_proj", "v_proj", "down_proj"])
    adapted_config = replace(config, lora_weights=adapter)
    adapted_model, _ = load_for_generation(adapted_config)
    from peft import PeftModel

    assert isinstance(adapted_model, PeftModel)
    adapted = answer(adapted_model, tokenizer, adapted_config, "Who are you?")
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
        load_for_generation(tiny_config(tiny_llama, lora_weights=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no adapter_config.json"):
        load_for_generation(tiny_config(tiny_llama, lora_weights=str(tmp_path / "empty")))


def test_adapter_for_another_base_model_names_both(tiny_llama, tiny_neox, tmp_path):
    adapter = make_adapter(tiny_neox, tmp_path / "neox_lora", ["query_key_value"])
    with pytest.raises(ModelError) as err:
        load_for_generation(tiny_config(tiny_llama, lora_weights=adapter))
    assert tiny_neox in str(err.value) and tiny_llama in str(err.value)


def test_tiny_model_stops_at_a_stop_string_spanning_tokens(llama):
    config, model, tokenizer = llama
    free = answer(model, tokenizer, replace(config, max_new_tokens=30), "Hello")
    prompt = build_prompt(tokenizer, [], "Hello", config, 512).text
    out = model.generate(**tokenizer([prompt], return_tensors="pt"), max_new_tokens=30, do_sample=False,
                         eos_token_id=None, pad_token_id=tokenizer.pad_token_id)[0, -30:].tolist()
    # A stop string made of the end of token 10 and the start of token 11 of the greedy answer.
    token_10, token_11 = (tokenizer.decode([t], skip_special_tokens=True) for t in out[9:11])
    assert token_10 and token_11 and free.new_tokens >= 11, "the tiny model should talk for 11+ tokens"
    stop = token_10[-1] + token_11[:1]
    expected = tokenizer.decode(out, skip_special_tokens=True).split(stop)[0].strip()

    stopped_config = replace(config, max_new_tokens=30, stop=[stop])
    batch = answer(model, tokenizer, stopped_config, "Hello")
    stream = AnswerStream(model, tokenizer, prompt, stopped_config)
    shown = "".join(stream)
    assert batch.text == shown == expected
    assert stop not in shown
    assert batch.finish_reason == stream.answer.finish_reason == "stop_string"
    assert batch.new_tokens <= 11 and stream.answer.new_tokens <= 11


def test_closing_a_stream_early_stops_the_generation_thread(llama):
    config, model, tokenizer = llama
    config = replace(config, max_new_tokens=400, max_context_tokens=512)
    prompt = build_prompt(tokenizer, [], "Tell me a long story", config, 512).text
    before = {t for t in threading.enumerate() if t.name == "sftkit-generate"}
    stream = AnswerStream(model, tokenizer, prompt, config)
    pieces = iter(stream)
    next(pieces)
    pieces.close()
    assert stream.cancel.is_set()
    assert not [t for t in threading.enumerate() if t.name == "sftkit-generate" and t not in before]


def test_cancel_event_ends_the_answer_as_cancelled(llama):
    config, model, tokenizer = llama
    config = replace(config, max_new_tokens=400, max_context_tokens=512)
    prompt = build_prompt(tokenizer, [], "Tell me a long story", config, 512).text
    cancel = threading.Event()
    stream = AnswerStream(model, tokenizer, prompt, config, cancel=cancel)
    for n, _ in enumerate(stream):
        if n == 1:
            cancel.set()
    assert stream.answer.finish_reason == "cancelled"
    assert stream.answer.new_tokens < 400


# ---------------------------------------------------------------- prompting and trimming

def test_prompt_uses_the_training_format(llama):
    config, _, tokenizer = llama
    prompt = build_prompt(tokenizer, [("Hi", "Hello!")], "How are you?", config, 512)
    assert prompt.text == "<human>: Hi\n<bot>: Hello!\n<human>: How are you?\n<bot>:"
    assert prompt.warning() is None


def test_history_is_trimmed_from_the_oldest_turn(llama):
    config, model, tokenizer = llama
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
    config, model, tokenizer = llama
    config = replace(config, max_context_tokens=128, max_new_tokens=32)
    message = "start " + "filler " * 300 + "the real question?"
    prompt = build_prompt(tokenizer, [("old", "turn")], message, config, context_length(model, config))
    assert prompt.tokens <= 96 and prompt.truncated_tokens > 0 and prompt.dropped_turns == 1
    assert prompt.text.endswith("the real question?\n<bot>:") and "start" not in prompt.text
    assert "cut the first" in prompt.warning()
    with pytest.warns(UserWarning, match="prompt 1: prompt too long"):
        from sftkit.generation import answer_batch

        rows = answer_batch(model, tokenizer, [message], config, progress=False)
    assert rows[0]["new_tokens"] > 0


def test_empty_message_and_impossible_budget_are_rejected(llama):
    config, _, tokenizer = llama
    with pytest.raises(GenerationError, match="empty message"):
        build_prompt(tokenizer, [], "   ", config, 512)
    with pytest.raises(GenerationError, match="max_new_tokens=600"):
        build_prompt(tokenizer, [], "hi", replace(config, max_new_tokens=600), 512)


# ---------------------------------------------------------------- quantized loading

@pytest.mark.parametrize("bits", ["load_8bit", "load_4bit"])
def test_quantized_loading_generates(tiny_llama, bits):
    import bitsandbytes as bnb

    config = tiny_config(tiny_llama, **{bits: True})
    model, tokenizer = load_for_generation(config)
    layer = bnb.nn.Linear8bitLt if bits == "load_8bit" else bnb.nn.Linear4bit
    assert any(isinstance(m, layer) for m in model.modules())
    result = answer(model, tokenizer, config, "What is the capital of France?")
    assert result.new_tokens > 0 and result.finish_reason in ("eos", "stop_string", "max_new_tokens")


# ---------------------------------------------------------------- batch mode

def test_read_prompts_accepts_strings_and_instruction_rows(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('"plain"\n{"prompt": "p"}\n\n{"instruction": "Add", "input": "2 and 2"}\n{"instruction": "x"}\n')
    assert read_prompts(path) == ["plain", "p", "Add\n\n2 and 2", "x"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(["ok", {"question": "?"}]))
    with pytest.raises(GenerationError, match=r"bad.json item 2: a row needs 'prompt' or 'instruction'"):
        read_prompts(bad)
    bad.write_text(json.dumps(["ok", "  "]))
    with pytest.raises(GenerationError, match="item 2: empty"):
        read_prompts(bad)
    bad.write_text("{not json")
    with pytest.raises(GenerationError, match="not valid JSON"):
        read_prompts(bad)


def test_batch_sizes_agree(llama):
    from sftkit.generation import answer_batch

    config, model, tokenizer = llama
    prompts = ["What is the capital of France?", "Hi", "Add two and two please, and explain."]
    one = answer_batch(model, tokenizer, prompts, config, progress=False)
    three = answer_batch(model, tokenizer, prompts, replace(config, batch_size=3), progress=False)
    assert [r["response"] for r in one] == [r["response"] for r in three]
    assert [r["new_tokens"] for r in one] == [r["new_tokens"] for r in three]


def run_generate(*args, **kwargs):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, str(REPO / "generate.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.slow
def test_batch_mode_end_to_end_through_the_cli(tiny_llama, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["What is the capital of France?", {"instruction": "Add", "input": "2 and 2"},
                                   "Who are you?"]))
    out = tmp_path / "answers.json"
    common = [f"--base_model={tiny_llama}", "--local_files_only=True", "--max_new_tokens=16",
              f"--eval_prompts_file={prompts}", f"--eval_output_file={out}"]
    # An interrupted earlier run left its first answer behind: it is kept, the rest are answered.
    partial = tmp_path / "answers.json.partial.jsonl"
    partial.write_text(json.dumps({"prompt": "What is the capital of France?", "response": "KEPT",
                                   "seconds": 0.5, "new_tokens": 3}) + "\n")
    done = run_generate(*common)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [r["prompt"] for r in rows] == ["What is the capital of France?", "Add\n\n2 and 2", "Who are you?"]
    assert rows[0]["response"] == "KEPT" and not partial.exists()
    for row in rows[1:]:
        assert set(row) == {"prompt", "response", "seconds", "new_tokens"}
        assert 0 < row["new_tokens"] <= 16 and row["seconds"] > 0 and isinstance(row["response"], str)
    assert "resuming" in done.stderr and "generate: 3 answers" in done.stderr

    again = run_generate(*common)
    assert again.returncode == 2 and "exists; pass --overwrite=True" in again.stderr
    assert json.loads(out.read_text()) == rows

    partial.write_text(json.dumps({"prompt": "another prompt", "response": "x", "seconds": 1,
                                   "new_tokens": 1}) + "\n")
    other = run_generate(*common, "--overwrite=True")
    assert other.returncode == 2 and "holds answers to other prompts" in other.stderr


def test_cli_errors_are_one_clear_line(tiny_llama, tmp_path):
    result = run_generate(f"--base_model={tiny_llama}", "--eval_prompts_file=missing.json",
                          f"--eval_output_file={tmp_path / 'a.json'}")
    assert result.returncode == 2
    assert result.stderr.strip() == "generate.py: error: --eval_prompts_file=missing.json: no such file"
    typo = run_generate("--max_new_token=5")
    assert typo.returncode == 2 and "did you mean --max_new_tokens" in typo.stderr


def test_help_lists_every_flag_with_its_default():
    import dataclasses

    result = run_generate("--help")
    assert result.returncode == 0
    for field in dataclasses.fields(GenerateConfig):
        assert f"--{field.name}=" in result.stdout
    assert "--server_name=str  ['127.0.0.1']" in result.stdout
    assert "--prompt_type=str  ['human_bot']" in result.stdout


def tiny_reward_model(tokenizer_dir, out_dir) -> str:
    """A tiny single-logit sequence-classification model with the tiny tokenizer, saved like a real one."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(2)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def test_batch_mode_scores_each_answer_with_a_reward_model(tiny_llama, llama, tmp_path):
    from sftkit.generation import run_batch

    config, model, tokenizer = llama
    reward = tiny_reward_model(tiny_llama, tmp_path / "reward")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"What is the capital of France?"\n{"instruction": "Who are you?"}\n')
    out = tmp_path / "scored.json"
    rows = run_batch(replace(config, eval_prompts_file=str(prompts), eval_output_file=str(out),
                             reward_model=reward, batch_size=2), model, tokenizer)
    assert json.loads(out.read_text()) == rows
    assert [set(r) for r in rows] == [{"prompt", "response", "seconds", "new_tokens", "score"}] * 2
    assert all(0.0 < r["score"] < 1.0 for r in rows)
    assert rows[0]["score"] != rows[1]["score"]

    missing = replace(config, eval_prompts_file=str(prompts), eval_output_file=str(tmp_path / "b.json"),
                      reward_model=str(tmp_path / "no_reward_model"))
    with pytest.raises(GenerationError, match="cannot load reward model"):
        run_batch(missing, model, tokenizer)
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "b.json.partial.jsonl").exists()
