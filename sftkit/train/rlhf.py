"""``finetune.py rlhf``: the three steps of DeepSpeed-Chat's pipeline in one command.

1. SFT: a LoRA adapter on --sft_data                                      -> output_dir/sft/
2. reward model: a scoring head on the base model, from --preference_data -> output_dir/rm/
3. RL: PPO or GRPO, the SFT adapter as the actor and its frozen copy as the reference, rewarded by
   the step-2 model, on --prompts                                           -> output_dir/ppo/ (or grpo/)

Each step is the ``finetune.py`` command a user would type (printed, then run as its own process,
under torchrun with --nproc), so it is checkpointed and resumable like any run. A step whose output
is complete and was trained with the same settings is skipped; one that stopped part-way resumes
from its newest checkpoint; one trained with other settings is refused by name (delete it, or use
another --output_dir). ``output_dir/run_config.yaml`` records the pipeline's settings, then each run
of it: what every step did, its command and its time.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from sftkit import atomic, flags, lock
from sftkit.errors import TrainError
from sftkit.train import run_record
from sftkit.train.checkpoint import list_checkpoints
from sftkit.train.config import RLHFConfig, TrainConfig

FINETUNE = Path(__file__).resolve().parents[2] / "finetune.py"


@dataclasses.dataclass
class Step:
    name: str  # sft, rm, ppo or grpo: also its folder
    flags: dict  # finetune.py flags
    config: TrainConfig  # the same, parsed and checked

    @property
    def folder(self) -> Path:
        return Path(self.config.output_dir)


def plan_steps(config: RLHFConfig) -> list[Step]:
    """The three steps' flags, checked now (a bad RL flag fails before SFT starts, not after)."""
    out = Path(config.output_dir)
    common = {"base_model": config.base_model, **({"prompt_type": config.prompt_type} if config.prompt_type else {}),
              **config.train_flags}
    sft = {**common, "stage": "sft", **({"data_path": config.sft_data} if config.sft_data else {}),
           **config.sft_flags, "output_dir": str(out / "sft")}
    rm = {**common, "stage": "rm", **({"data_path": config.preference_data} if config.preference_data else {}),
          **config.rm_flags, "output_dir": str(out / "rm")}
    prompts = config.prompts or config.preference_data
    sft_config = flags.parse(TrainConfig, sft, environ={})
    # The actor starts as the SFT model: its adapter (also the frozen reference), or the fully fine-tuned weights.
    actor = {"base_model": str(out / "sft")} if sft_config.full_finetune else {"lora_weights": str(out / "sft")}
    rl = {**common, "stage": config.rl, **({"data_path": prompts} if prompts else {}), **actor,
          "reward_model": str(out / "rm"), **config.rl_flags, "output_dir": str(out / config.rl)}
    return [Step("sft", sft, sft_config), Step("rm", rm, flags.parse(TrainConfig, rm, environ={})),
            Step(config.rl, rl, flags.parse(TrainConfig, rl, environ={}))]


def command(step: Step, nproc: int, resume: bool) -> list[str]:
    script = str(FINETUNE) if FINETUNE.is_file() else shutil.which("sftkit-finetune") or "sftkit-finetune"
    launcher = [sys.executable, script] if nproc == 1 else [
        str(Path(sys.executable).with_name("torchrun")), f"--nproc_per_node={nproc}", script]
    args = [f"--{name}={_flag_text(value)}" for name, value in step.flags.items()]
    return launcher + args + (["--resume_from_checkpoint=latest"] if resume else [])


def _flag_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def state_of(step: Step, nproc: int) -> str:
    """``done``, ``resume`` or ``start``; a folder trained with other settings is a TrainError."""
    folder = step.folder
    if not folder.is_dir() or not any(p.name != lock.LOCK_NAME for p in folder.iterdir()):
        return "start"
    checkpoints = list_checkpoints(folder)
    config_file = folder / run_record.RUN_CONFIG
    if config_file.is_file():
        saved = run_record.read_run_config(folder)[0]
        now = run_record.settings_of(step.config, nproc)
        changed = run_record.differences(saved, now)
        if changed:
            lines = "\n".join(f"  --{name}: {old!r} then, {new!r} now" for name, (old, new) in changed.items())
            raise TrainError(f"rlhf: {folder} was trained with other settings:\n{lines}\nRerun with those settings, "
                             f"delete {folder} to redo the {step.name} step, or use another --output_dir")
        metrics = folder / "metrics.json"
        finished = metrics.is_file() and "train_loss" in json.loads(metrics.read_text())
        if finished and (saved.get("max_steps"), saved.get("num_epochs")) == (now["max_steps"], now["num_epochs"]):
            return "done"
    if checkpoints:
        return "resume"
    shutil.rmtree(folder)  # killed before its first checkpoint: nothing in it can be resumed
    return "start"


def record(out: Path, config: RLHFConfig, entry: dict) -> None:
    """run_config.yaml: the pipeline's settings first, then one document per run of it (never rewritten)."""
    path = out / run_record.RUN_CONFIG
    head = path.read_text() if path.is_file() else yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
    atomic.write_text(path, head + "---\n" + yaml.safe_dump(entry, sort_keys=False))


def summary_line(step: Step) -> str:
    metrics = json.loads((step.folder / "metrics.json").read_text())
    parts = [f"{metrics['step']} steps", f"train loss {metrics['train_loss']:.4f}"]
    if "eval_accuracy" in metrics:
        parts.append(f"validation pairwise accuracy {metrics['eval_accuracy']:.2f}")
    rewards = [h for h in metrics["history"] if "reward" in h]
    if rewards:
        parts.append(f"reward {rewards[0]['reward']:.3f} -> {rewards[-1]['reward']:.3f}, "
                     f"KL {rewards[-1]['kl']:.2f}")
    return ", ".join(parts)


def run(config: RLHFConfig) -> dict:
    """Run (or skip, or resume) the three steps; the status of each."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise TrainError(f"--output_dir={out} is a file; choose a directory")
    steps = plan_steps(config)
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with lock.hold(out, "--output_dir"):
        for number, step in enumerate(steps, 1):
            state = state_of(step, config.nproc)
            cmd = command(step, config.nproc, resume=state == "resume")
            if state == "done":
                print(f"rlhf: {number}/3 {step.name}: {step.folder} is complete, skipped", flush=True)
                done[step.name] = {"status": "skipped (complete)", "command": shlex.join(cmd)}
                continue
            print(f"rlhf: {number}/3 {step.name}{' (resumed)' if state == 'resume' else ''}\n$ {shlex.join(cmd)}",
                  flush=True)
            t0 = time.monotonic()
            result = subprocess.run(cmd)
            seconds = round(time.monotonic() - t0, 1)
            if result.returncode != 0:
                done[step.name] = {"status": f"failed (exit {result.returncode})", "command": shlex.join(cmd),
                                   "seconds": seconds}
                record(out, config, {"run": {"started": started, "steps": done}})
                raise TrainError(f"rlhf: the {step.name} step failed (exit {result.returncode}); fix it and rerun "
                                 f"the same command: finished steps are skipped, this one resumes")
            done[step.name] = {"status": "resumed" if state == "resume" else "trained", "command": shlex.join(cmd),
                               "seconds": seconds}
        record(out, config, {"run": {"started": started, "steps": done}})
    for step in steps:
        print(f"rlhf: {step.name}: {summary_line(step)} ({done[step.name]['status']}) -> {step.folder}")
    return done
