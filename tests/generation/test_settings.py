"""Sampling and decoding controls, and h2oGPT's generate.py flags, through the engine and the CLI."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sftkit.generation import AnswerStream, build_prompt, generate_answers, generation_kwargs, load_models
from tests.generation.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
QUESTION = "Write a very long poem about the sea"


def answers(llama, n=1, **settings):
    config, models = llama
    config = replace(config, **settings)
    prompt = build_prompt(models.tokenizer, [], QUESTION, config, 512).text
    return generate_answers(models, [prompt] * n, config)


def text(llama, **settings):
    return answers(llama, **settings)[0].text


def test_sampling_with_a_seed_is_reproducible_and_differs_from_greedy(llama):
    greedy = text(llama)
    sampled = text(llama, do_sample=True, temperature=1.5, seed=5)
    assert sampled == text(llama, do_sample=True, temperature=1.5, seed=5)
    assert sampled != text(llama, do_sample=True, temperature=1.5, seed=6)
    assert sampled != greedy


def test_narrow_sampling_settings_collapse_to_greedy(llama):
    greedy = text(llama)
    assert text(llama, do_sample=True, temperature=1.5, top_k=1, seed=3) == greedy
    assert text(llama, do_sample=True, temperature=1.5, top_p=0.001, top_k=0, seed=3) == greedy


def test_top_k_and_top_p_restrict_what_sampling_can_pick(llama):
    wide = {text(llama, do_sample=True, temperature=2.0, top_k=0, top_p=1.0, seed=s) for s in range(1, 4)}
    assert len(wide) == 3, "unrestricted hot sampling should vary with the seed"
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    kwargs = generation_kwargs(replace(config, do_sample=True, top_k=7, top_p=0.3, temperature=0.9), model, tokenizer)
    assert (kwargs["top_k"], kwargs["top_p"], kwargs["temperature"]) == (7, 0.3, 0.9)
    greedy = generation_kwargs(config, model, tokenizer)
    assert greedy["do_sample"] is False and greedy["temperature"] is None


def test_beams_answer_like_transformers_and_arrive_as_one_piece(llama):
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    config = replace(config, num_beams=3, max_new_tokens=12, stop=[])
    prompt = build_prompt(tokenizer, [], QUESTION, config, 512).text
    inputs = tokenizer([prompt], return_tensors="pt")
    direct = model.generate(**inputs, num_beams=3, max_new_tokens=12, do_sample=False, repetition_penalty=1.0,
                            pad_token_id=tokenizer.pad_token_id)[0, inputs["input_ids"].shape[1]:]
    want = tokenizer.decode(direct, skip_special_tokens=True).split("<human>:")[0].split("<bot>:")[0].strip()
    (beam,) = generate_answers(models, [prompt], config)
    assert beam.text == want
    stream = AnswerStream(models, prompt, config)
    pieces = list(stream)
    assert pieces == ([want] if want else []) and stream.answer.text == want


def test_system_prompt_goes_first_and_changes_the_answer(llama):
    config, models = llama
    tokenizer = models.tokenizer
    prompt = build_prompt(tokenizer, [], "Who are you?", replace(config, system_prompt="You are a pirate."), 512)
    assert prompt.text == "You are a pirate.\n<human>: Who are you?\n<bot>:"
    assert text(llama, system_prompt="You are a pirate.") != text(llama)


def test_min_new_tokens_num_return_sequences_max_time_and_early_stopping(llama):
    natural = answers(llama, max_new_tokens=400)[0]
    longer = answers(llama, max_new_tokens=400, min_new_tokens=natural.new_tokens + 10)[0]
    assert longer.new_tokens >= natural.new_tokens + 10
    several = answers(llama, num_return_sequences=3, do_sample=True, temperature=1.5, seed=2)
    assert len(several) == 3 and len({a.text for a in several}) > 1
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    kwargs = generation_kwargs(replace(config, max_time=2.5, num_beams=2, early_stopping=True), model, tokenizer)
    assert kwargs["max_time"] == 2.5 and kwargs["early_stopping"] is True
    assert "max_time" not in generation_kwargs(config, model, tokenizer)


def test_load_half_and_tokenizer_base_model(tiny_llama, tmp_path):
    import shutil

    half = load_models(tiny_config(tiny_llama, load_half=True)).model
    assert next(half.parameters()).dtype == torch.bfloat16
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    for name in os.listdir(tiny_llama):
        if "token" in name or name == "special_tokens_map.json":
            shutil.copy(Path(tiny_llama) / name, tokenizer_dir / name)
    tokenizer = load_models(tiny_config(tiny_llama, tokenizer_base_model=str(tokenizer_dir))).tokenizer
    assert tokenizer.name_or_path == str(tokenizer_dir)


def test_chat_false_answers_each_message_alone(llama):
    from sftkit.generation.session import ChatSession

    config, models = llama
    tokenizer = models.tokenizer
    session = ChatSession([["Hi", "Hello!"]])
    session.ask("How are you?")
    assert session.prompt(tokenizer, config, 512).text.startswith("<human>: Hi\n")
    assert session.prompt(tokenizer, replace(config, chat=False), 512).text == "<human>: How are you?\n<bot>:"


def run_cli(*args, launcher=(sys.executable,)):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([*launcher, str(REPO / "generate.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_seed_makes_sampled_batch_answers_reproducible_through_the_cli(tiny_llama, tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([QUESTION, "Who are you?"]))
    common = [f"--base_model={tiny_llama}", "--local_files_only=True", "--max_new_tokens=16", "--do_sample=True",
              "--temperature=1.5", f"--eval_prompts_file={prompts}"]
    outputs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = run_cli(*common, f"--seed={seed}", f"--eval_output_file={tmp_path / name}.json")
        assert result.returncode == 0, result.stderr
        outputs[name] = (tmp_path / f"{name}.json").read_bytes()
    assert outputs["a"] == outputs["b"] and outputs["a"] != outputs["c"]


@pytest.mark.slow
def test_torchrun_with_two_processes_answers_from_rank_0(tiny_llama, tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["Who are you?", "Hi"]))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    result = run_cli(f"--base_model={tiny_llama}", "--local_files_only=True", "--max_new_tokens=8", "--gradio=False",
                     f"--eval_prompts_file={prompts}", f"--eval_output_file={tmp_path / 'a.json'}",
                     launcher=(torchrun, "--nproc_per_node=2", "--master_port=0"))
    assert result.returncode == 0, result.stderr
    assert "rank 1 of 2 exits; rank 0 serves the model" in result.stderr
    assert result.stderr.count("generate: 2 answers") == 1
    assert [r["prompt"] for r in json.loads((tmp_path / "a.json").read_text())] == ["Who are you?", "Hi"]


def test_debug_shows_the_traceback(tiny_llama, tmp_path):
    args = [f"--base_model={tiny_llama}", "--eval_prompts_file=missing.json", f"--eval_output_file={tmp_path / 'a.json'}"]
    quiet, loud = run_cli(*args), run_cli(*args, "--debug=True")
    assert quiet.returncode == 2 and loud.returncode != 0
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr
    assert "GenerationError: --eval_prompts_file=missing.json: no such file" in loud.stderr
