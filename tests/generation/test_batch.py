"""Batch / eval mode: prompt files, batches, resume that checks what made the answers, scores, report."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sftkit.generation import GenerateConfig, GenerationError, load_models
from sftkit.generation.batch import answer_batch, read_prompts, run_batch
from tests.generation.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


def texts(prompts):
    return [p.text for p in prompts]


def test_read_prompts_accepts_strings_and_instruction_rows(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text('"plain"\n{"prompt": "p"}\n\n{"instruction": "Add", "input": "2 and 2"}\n{"instruction": "x"}\n')
    prompts = read_prompts(path)
    assert texts(prompts) == ["plain", "p", "Add\n\n2 and 2", "x"]
    assert prompts[2].turns == [("human", "Add"), ("input", "2 and 2")]  # the input is its own turn, as in training
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(["ok", {"question": "?"}, "  "]))
    assert texts(read_prompts(bad)) == ["ok"]
    assert f"2 rows skipped (empty_text: 1, unknown_shape: 1; first: {bad}:2: no usable column" in capsys.readouterr().err
    bad.write_text("{not json")
    with pytest.raises(GenerationError, match=r"holds no prompts; 1 rows skipped \(bad_json: 1; first: .*invalid JSON"):
        read_prompts(bad)


def test_multi_turn_files_keep_their_history_and_sample_with_a_seed(tmp_path):
    rows = [{"id": str(n), "conversations": [{"from": "system", "value": "be nice"},
                                             {"from": "human", "value": f"question {n}"},
                                             {"from": "gpt", "value": "answer"},
                                             {"from": "human", "value": f"follow-up {n}"}]} for n in range(20)]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(rows))
    prompts = read_prompts(path)
    assert texts(prompts) == [f"follow-up {n}" for n in range(20)]
    assert prompts[3].history == [("system", "be nice"), ("human", "question 3"), ("bot", "answer")]
    sample = texts(read_prompts(path, sample=5, seed=7))
    assert len(sample) == 5 and len(set(sample)) == 5 and set(sample) <= {f"follow-up {n}" for n in range(20)}
    assert texts(read_prompts(path, sample=5, seed=7)) == sample
    assert texts(read_prompts(path, sample=5, seed=8)) != sample
    rows[3]["conversations"] = [{"from": "gpt", "value": "no question"}]
    path.write_text(json.dumps(rows))
    assert len(read_prompts(path)) == 19


def test_a_prompts_file_that_is_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('["caf\u00e9 au lait?"]'.encode("latin-1"))
    with pytest.raises(GenerationError, match=r"latin1.json: holds no prompts; .*latin1.json:1: not valid UTF-8"):
        read_prompts(path)


def test_batch_sizes_agree(llama):
    config, models = llama
    prompts = ["What is the capital of France?", "Hi", "Add two and two please, and explain."]
    one = answer_batch(models, prompts, config, progress=False)
    three = answer_batch(models, prompts, replace(config, batch_size=3), progress=False)
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
    done = run_generate(*common)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [r["prompt"] for r in rows] == ["What is the capital of France?", "Add\n\n2 and 2", "Who are you?"]
    for row in rows:
        assert set(row) == {"model", "prompt", "response", "new_tokens", "finish_reason"}
        assert row["model"] == "base" and 0 < row["new_tokens"] <= 16 and isinstance(row["response"], str)
    assert "generate: 3 answers" in done.stderr and not Path(f"{out}.partial.jsonl").exists()
    report = tmp_path / "answers_report" / "report.md"
    assert f"report: {report}" in done.stderr and "| base | 3 |" in report.read_text()

    again = run_generate(*common)
    assert again.returncode == 2 and "exists; pass --overwrite=True" in again.stderr
    assert json.loads(out.read_text()) == rows


def progress_of(config, prompts):
    """A progress file as an interrupted run with ``config`` leaves it after its first answer."""
    from sftkit.generation.batch import progress_path, run_identity

    first = {"model": "base", "prompt": prompts[0], "response": "KEPT", "new_tokens": 3,
             "finish_reason": "eos", "seconds": 0.5}
    path = progress_path(Path(config.eval_output_file))
    path.write_text(json.dumps({"identity": run_identity(config)}) + "\n" + json.dumps(first) + "\n")
    return path


def test_resume_keeps_answers_made_with_the_same_settings(llama, tmp_path):
    config, _ = llama
    prompts = ["What is the capital of France?", "Who are you?"]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    config = replace(config, eval_prompts_file=str(tmp_path / "p.json"), eval_output_file=str(tmp_path / "a.json"))
    progress_of(config, prompts)
    rows = run_batch(config, load_models(config))
    assert [r["response"] for r in rows][0] == "KEPT" and rows[1]["response"] != "KEPT"


@pytest.mark.parametrize("change, named", [
    (dict(max_new_tokens=5), "max_new_tokens: 24 then, 5 now"),
    (dict(prompt_type="instruct"), 'prompt_type: "human_bot" then, "instruct" now'),
    (dict(temperature=0.1, do_sample=True), "do_sample: false then, true now"),
])
def test_resume_with_other_settings_refuses_naming_the_difference(llama, tmp_path, change, named):
    config, _ = llama
    prompts = ["What is the capital of France?", "Who are you?"]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    config = replace(config, eval_prompts_file=str(tmp_path / "p.json"), eval_output_file=str(tmp_path / "a.json"))
    progress = progress_of(config, prompts)
    with pytest.raises(GenerationError) as err:
        run_batch(replace(config, **change))
    assert named in str(err.value) and f"delete {progress} to start over" in str(err.value)
    assert not (tmp_path / "a.json").exists()


def test_resume_refuses_an_adapter_whose_weights_changed(tiny_llama, two_adapters, tmp_path):
    import shutil

    adapter = tmp_path / "lora_out"
    shutil.copytree(two_adapters["tuned"], adapter)
    prompts = ["Who are you?", "Hi"]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    config = tiny_config(tiny_llama, lora_weights=f"base=,tuned={adapter}", eval_prompts_file=str(tmp_path / "p.json"),
                         eval_output_file=str(tmp_path / "a.json"))
    progress_of(config, prompts)
    for name in ("adapter_model.safetensors", "adapter_config.json"):  # retrained in place: same path, new weights
        shutil.copy(Path(two_adapters["other"]) / name, adapter / name)
    with pytest.raises(GenerationError, match=r"models: .*sha256"):
        run_batch(config)


def test_eval_answers_every_prompt_with_every_model_and_reports(tiny_llama, two_adapters, tiny_reward_model,
                                                                tmp_path):
    prompts = ["What is the capital of France?", "Who are you?", "Hello, how are you today?",
               "Add two and two.", "The quick brown fox?"]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    out = tmp_path / "answers.json"
    config = tiny_config(tiny_llama, lora_weights=f"base=,tuned={two_adapters['tuned']}",
                         eval_prompts_file=str(tmp_path / "p.json"), eval_output_file=str(out),
                         score_model=tiny_reward_model, batch_size=2, max_new_tokens=12)
    rows = run_batch(config)
    assert json.loads(out.read_text()) == rows
    assert [(r["model"], r["prompt"]) for r in rows] == [(m, p) for m in ("base", "tuned") for p in prompts]
    assert all(0.0 < r["score"] < 1.0 for r in rows)
    base, tuned = rows[:5], rows[5:]
    assert [r["response"] for r in base] != [r["response"] for r in tuned]

    report = (tmp_path / "answers_report" / "report.md").read_text()
    from sftkit.generation.report import summarize, win_rate

    summary = summarize(rows)
    mean = sum(r["score"] for r in base) / 5
    low, high = summary["base"]["mean_ci"]
    assert low <= mean <= high and abs(summary["base"]["mean_score"] - mean) < 1e-9
    wins = win_rate([r["score"] for r in base], [r["score"] for r in tuned])
    assert f"| base | – | {wins:.2f} |" in report and f"| tuned | {1 - wins:.2f} | – |" in report
    assert f"| base | 5 | {mean:.3f} [" in report
    for plot in ("scores.png", "lengths.png"):
        assert f"![{plot}]({plot})" in report
        assert (tmp_path / "answers_report" / plot).read_bytes()[:4] == b"\x89PNG"
    assert "**Prompt:** What is the capital of France?" in report


def test_a_missing_score_model_fails_before_generating(llama, tmp_path):
    config, _ = llama
    (tmp_path / "p.json").write_text('["Hi"]')
    missing = replace(config, eval_prompts_file=str(tmp_path / "p.json"), eval_output_file=str(tmp_path / "b.json"),
                      score_model=str(tmp_path / "no_reward_model"))
    with pytest.raises(GenerationError, match="cannot load reward model"):
        run_batch(missing)
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "b.json.partial.jsonl").exists()


def test_cli_errors_are_one_clear_line(tiny_llama, tmp_path):
    result = run_generate(f"--base_model={tiny_llama}", "--eval_prompts_file=missing.json",
                          f"--eval_output_file={tmp_path / 'a.json'}")
    assert result.returncode == 2
    assert result.stderr.strip() == "generate.py: error: --eval_prompts_file=missing.json: no such file"
    typo = run_generate("--max_new_token=5")
    assert typo.returncode == 2 and "did you mean --max_new_tokens" in typo.stderr
    no_prompts = run_generate("--gradio=False")
    assert no_prompts.returncode == 2 and "--gradio=False runs batch/eval mode" in no_prompts.stderr


def test_help_lists_every_flag_with_its_default():
    import dataclasses

    result = run_generate("--help")
    assert result.returncode == 0
    for field in dataclasses.fields(GenerateConfig):
        assert f"--{field.name}=" in result.stdout
    assert "--server_name=str  ['127.0.0.1']" in result.stdout
    assert "--prompt_type=str  ['human_bot']" in result.stdout


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
OSLO_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


@pytest.mark.parametrize("text, outcome", [
    (OSLO_CALL, "valid"), ("It is cold.", "no_call"),
    (OSLO_CALL.replace("get_weather", "get_news"), "unknown_function"),
    (OSLO_CALL.replace('"city"', '"town"'), "missing_argument"), (OSLO_CALL[:40], "bad_call_json")])
def test_an_answer_to_a_prompt_with_tools_records_its_calls_and_whether_they_are_valid(text, outcome):
    from sftkit.generation.batch import tool_call_fields

    fields = tool_call_fields(text, [WEATHER], "human_bot")
    assert fields["tool_call"] == outcome
    assert [c["name"] for c in fields["tool_calls"]] == (["get_weather"] if outcome in ("valid", "missing_argument")
                                                          else ["get_news"] if outcome == "unknown_function" else [])


def test_the_report_counts_calls_made_and_valid_per_model(llama, tmp_path):
    from sftkit.generation.report import render_markdown, summarize

    config, models = llama
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [
        {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [WEATHER]},
        {"messages": [{"role": "user", "content": "Who are you?"}]}]))
    prompts = read_prompts(tmp_path / "p.jsonl")
    assert prompts[0].tools == [WEATHER] and prompts[1].tools is None
    rows = answer_batch(models, prompts, replace(config, max_new_tokens=4), progress=False)
    assert rows[0]["tool_call"] == "no_call" and rows[0]["tool_calls"] == []  # the random model calls nothing
    assert "tool_call" not in rows[1]
    made = [dict(rows[0], model="tuned", response=OSLO_CALL, tool_call="valid"),
            dict(rows[0], model="tuned", response="?", tool_call="unknown_function"),
            dict(rows[0], model="tuned", tool_call="no_call"), dict(rows[1], model="tuned")]
    summary = summarize([dict(row, model="base") for row in rows] + made)
    tuned = summary["tuned"]
    assert (tuned["tool_prompts"], tuned["made_call"], tuned["valid_calls"]) == (3, 2, 1)
    report = render_markdown(summary, made, replace(config, eval_prompts_file="p.jsonl"), [])
    assert "| tuned | 3 | 2 | 1 | unknown_function: 1 |" in report and "| base | 1 | 0 | 0 | – |" in report
