"""kill -9 during training: the resumed run matches the uninterrupted one; a changed flag is refused.

Kills are placed by events, not timers: the run is frozen (SIGSTOP) the moment a file shows it
reached the point under test, the test checks where it froze, then SIGKILLs it.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from sftkit import lock
from tests.train.helpers import write_rows
from tests.train.test_distributed import free_port

REPO = Path(__file__).resolve().parents[2]
FLAGS = dict(batch_size=4, micro_batch_size=2, cutoff_len=64, max_steps=24, val_set_size=0, warmup_steps=0,
             learning_rate=1e-2, save_steps=2, save_total_limit=0, logging_steps=1, report_to="none", seed=0,
             lora_dropout=0.1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def command(model: str, data: str, out: Path, **extra) -> list[str]:
    flags = {**FLAGS, "base_model": model, "data_path": data, "output_dir": str(out), **extra}
    return [sys.executable, str(REPO / "finetune.py"), *(f"--{k}={v}" for k, v in flags.items())]


def wait_for(predicate, process: subprocess.Popen, what: str, deadline_s: float = 300):
    """Poll ``predicate`` until it is true; fail if the process ends first or the deadline passes."""
    end = time.monotonic() + deadline_s
    while not predicate():
        assert process.poll() is None, f"the run ended before {what}:\n{process.stdout.read()[-3000:]}"
        assert time.monotonic() < end, f"no {what} within {deadline_s} s"
        time.sleep(0.002)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def losses(out: Path) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in json.loads((out / "metrics.json").read_text())["history"] if "loss" in h}


def assert_same_run(resumed: Path, reference: Path) -> None:
    a = load_file(str(reference / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
    ref = losses(reference)
    got = losses(resumed)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory) -> tuple[str, Path]:
    """Data file and output of the uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    data = write_rows(tmp / "data.json")
    subprocess.run(command(tiny_llama, data, tmp / "out"), env=ENV, check=True, capture_output=True, timeout=300)
    return data, tmp / "out"


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def resume(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, "--resume_from_checkpoint=latest"], env=ENV, capture_output=True, text=True,
                          timeout=300)


def kill_mid_step_then_resume(cmd: list[str], out: Path, max_steps: int) -> subprocess.CompletedProcess:
    """Start ``cmd``, kill -9 it after checkpoint-4 (before the end), resume it to the end."""
    run = start(cmd)
    wait_for(lambda: (out / "checkpoint-4").is_dir(), run, "checkpoint-4")
    run.send_signal(signal.SIGSTOP)  # somewhere after step 4: in a step, or writing the next checkpoint
    assert not (out / f"checkpoint-{max_steps}").exists()
    kill(run)
    done = resume(cmd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_kill_mid_step_then_resume_matches(tiny_llama, tmp_path, reference):
    data, ref_out = reference
    out = tmp_path / "out"
    kill_mid_step_then_resume(command(tiny_llama, data, out), out, FLAGS["max_steps"])
    assert_same_run(out, ref_out)


def test_kill_between_checkpoint_write_and_rename_then_resume_matches(tiny_llama, tmp_path, reference):
    """A checkpoint fully written under its temporary name but not yet renamed is never resumed from."""
    data, ref_out = reference
    out = tmp_path / "out"
    cmd = command(tiny_llama, data, out)
    run = start(cmd)
    wait_for(lambda: (out / "checkpoint-2").is_dir(), run, "checkpoint-2")  # something to resume from
    caught = None
    while caught is None:
        def staged() -> Path | None:
            return next((p for p in out.glob(".checkpoint-*.tmp-*") if (p / "trainer_state.json").is_file()), None)
        wait_for(lambda: staged() is not None, run, "a staged checkpoint")
        run.send_signal(signal.SIGSTOP)
        partial = staged()
        step = partial.name.split("-")[1].split(".")[0] if partial else None
        if partial is not None and not (out / f"checkpoint-{step}").exists():
            caught = int(step)  # frozen after writing, before the rename
        else:
            run.send_signal(signal.SIGCONT)  # the rename won this race; try the next checkpoint
            wait_for(lambda: (out / f"checkpoint-{step}").is_dir(), run, f"checkpoint-{step}")
    kill(run)
    done = resume(cmd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resumed from {out / f'checkpoint-{caught - 2}'}" in done.stdout + done.stderr
    assert not list(out.glob(".checkpoint-*.tmp-*"))
    assert_same_run(out, ref_out)


def test_a_changed_flag_after_a_kill_is_refused(tiny_llama, tmp_path, reference):
    data, _ = reference
    out = tmp_path / "out"
    cmd = command(tiny_llama, data, out)
    run = start(cmd)
    wait_for(lambda: (out / "checkpoint-2").is_dir(), run, "checkpoint-2")
    kill(run)
    run_config = (out / "run_config.yaml").read_text()
    done = resume(command(tiny_llama, data, out, learning_rate=2e-2, cutoff_len=48))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "--cutoff_len: 64 in the checkpoint, 48 now" in done.stderr
    assert "--learning_rate: 0.01 in the checkpoint, 0.02 now" in done.stderr
    assert "Traceback" not in done.stderr
    assert (out / "run_config.yaml").read_text() == run_config


def test_workers_exit_when_torchrun_is_killed_and_release_the_output_dir(tiny_llama, tmp_path):
    data = write_rows(tmp_path / "data.json")
    out = tmp_path / "out"
    flags = {**FLAGS, "base_model": tiny_llama, "data_path": data, "output_dir": str(out), "max_steps": 100000,
             "save_total_limit": 2}
    launcher = subprocess.Popen([str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node=2",
                                 f"--master_port={free_port()}", str(REPO / "finetune.py"),
                                 *(f"--{k}={v}" for k, v in flags.items())],
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (out / "checkpoint-2").is_dir(), launcher, "training under torchrun")
    workers = [p for p in psutil.Process(launcher.pid).children(recursive=True)
               if "finetune.py" in " ".join(p.cmdline())]
    assert len(workers) == 2

    # While it runs, a second run on the same output_dir fails at once, naming the process holding it.
    second = subprocess.run(command(tiny_llama, data, out, resume_from_checkpoint="latest"), env=ENV,
                            capture_output=True, text=True, timeout=120)
    holder = (out / lock.LOCK_NAME).read_text().strip()
    assert second.returncode == 2 and f"in use by another run (PID {holder})" in second.stderr, second.stderr
    assert int(holder) in [w.pid for w in workers]

    kill(launcher)
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"workers outlived their launcher: {[p.pid for p in alive]}"
    with lock.hold(out, "test"):  # and the output directory is free again
        pass
