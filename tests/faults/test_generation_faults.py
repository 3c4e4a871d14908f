"""kill -9 in the middle of a batch generation: the rerun finishes to the very same bytes, and a rerun
with a changed flag refuses (naming the flag) instead of mixing answers from two settings."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [f"Question {n}: tell me about the number {n}." for n in range(24)]


def command(tiny_llama, prompts, output, *extra):
    return [sys.executable, str(REPO / "generate.py"), f"--base_model={tiny_llama}", "--local_files_only=True",
            "--max_new_tokens=24", "--batch_size=2", f"--eval_prompts_file={prompts}",
            f"--eval_output_file={output}", *extra]


def run(cmd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def answered(progress: Path) -> int:
    """Answers in a progress file (its first line is the settings header)."""
    if not progress.is_file():
        return 0
    return max(len(progress.read_text(encoding="utf-8").splitlines()) - 1, 0)


def kill_midway(cmd, progress: Path, at_least: int) -> int:
    """Start ``cmd``, kill -9 it once ``at_least`` answers are saved; the number saved then."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while answered(progress) < at_least:
            if proc.poll() is not None:
                raise AssertionError("the run ended before it could be killed midway")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    return answered(progress)


@pytest.mark.slow
def test_kill_9_midway_then_rerun_is_byte_identical_and_a_changed_flag_refuses(tiny_llama, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    reference = tmp_path / "reference.json"
    done = run(command(tiny_llama, prompts, reference))
    assert done.returncode == 0, done.stderr

    output = tmp_path / "answers.json"
    progress = output.with_name(output.name + ".partial.jsonl")
    saved = kill_midway(command(tiny_llama, prompts, output), progress, at_least=2)
    assert 2 <= saved < len(PROMPTS) and not output.exists()

    changed = run(command(tiny_llama, prompts, output, "--max_new_tokens=20"))
    assert changed.returncode == 2
    assert "max_new_tokens: 24 then, 20 now" in changed.stderr and f"delete {progress} to start over" in changed.stderr
    assert not output.exists() and answered(progress) == saved

    resumed = run(command(tiny_llama, prompts, output))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {output}: {saved} of {len(PROMPTS)} answers already made" in resumed.stderr
    assert output.read_bytes() == reference.read_bytes()
    assert not progress.exists()
