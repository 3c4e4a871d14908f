"""Hostile inputs to batch / eval mode (generate.py --eval_prompts_file), through the real command line:
a bad place is one clear error line (exit status 2, no traceback) found before the model loads, with
no file left behind; a bad row is a counted skip with its reason, the others answered."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNWRITABLE = "/sys"  # a directory no process may create files in, root included


def generate(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, str(REPO / "generate.py"), "--local_files_only=True",
                           "--max_new_tokens=4", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def assert_one_clear_line(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("generate.py: error: ")
    for fragment in fragments:
        assert fragment in line, line


def test_lone_surrogate_escapes_in_prompts_are_counted_and_skipped_and_the_rest_answered(tiny_llama, tmp_path):
    """Prompts read through sftkit.rows like every other file: a row holding half a UTF-16 pair (not
    text) is a counted reject with its reason and place, never a traceback or a dead run."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"fine"\n{"prompt": "broken \\ud800 here"}\n"also fine"\n{"instruction": "x \\udfff"}\n')
    out = tmp_path / "answers.json"
    result = generate(f"--base_model={tiny_llama}", f"--eval_prompts_file={prompts}", f"--eval_output_file={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "2 rows skipped (lone_surrogate: 2" in result.stderr and f"{prompts}:2" in result.stderr
    assert [row["prompt"] for row in json.loads(out.read_text())] == ["fine", "also fine"]


def test_an_unwritable_output_place_fails_before_the_model_loads(tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text('["Hi"]')
    out = f"{UNWRITABLE}/answers.json"
    # No such model: had it been loaded first, the error would be about the model.
    result = generate(f"--base_model={tmp_path / 'no-model-here'}", f"--eval_prompts_file={prompts}",
                      f"--eval_output_file={out}")
    assert_one_clear_line(result, f"--eval_output_file={out}: cannot write in {UNWRITABLE}")
    assert "no-model-here" not in result.stderr
