"""kill -9 during online RLHF (PPO, between two updates of one rollout batch): the resumed run is the
uninterrupted one step for step, rollouts included."""
import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.faults.test_train_faults import ENV, command, kill, resume, start, wait_for
from tests.train.toy_rollouts import write_prompts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ONLINE = dict(stage="ppo", reward_funcs="tests.train.toy_rollouts:target_fraction", rollouts_per_prompt=2,
              max_new_tokens=8, ppo_epochs=2, max_steps=8, save_steps=3, lora_dropout=0.0, cutoff_len=64)


def history(out: Path) -> list[dict]:
    keys = ("step", "loss", "reward", "kl", "vf_loss", "answer_tokens")
    return [{k: h[k] for k in keys} for h in json.loads((out / "metrics.json").read_text())["history"]]


def test_kill_between_two_updates_of_a_rollout_batch_then_resume_matches(toy_policy, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.json")
    reference = tmp_path / "reference"
    subprocess.run(command(toy_policy, prompts, reference, **ONLINE), env=ENV, check=True, capture_output=True,
                   timeout=600)
    out = tmp_path / "out"
    cmd = command(toy_policy, prompts, out, **ONLINE)
    run = start(cmd)
    wait_for(lambda: (out / "checkpoint-3").is_dir(), run, "checkpoint-3")  # after the 1st update of batch 2
    run.send_signal(signal.SIGSTOP)
    assert not (out / "checkpoint-6").exists()
    kill(run)
    done = resume(cmd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert history(out) == history(reference)
    for name in ("adapter_model.safetensors", "critic/value_head.safetensors"):
        a, b = load_file(str(reference / name)), load_file(str(out / name))
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=0, rtol=0)
