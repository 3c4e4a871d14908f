"""Checkpoints that resume exactly: adapter, optimizer, scheduler, RNG, step and data position.

Layout of ``checkpoint-N/``: ``adapter_model.safetensors`` + ``adapter_config.json`` (usable as
``--lora_weights``), ``optimizer.pt`` (tensors only, loaded with ``weights_only=True``),
``scheduler.json``, ``rng_state_<rank>.safetensors``, what the recipe adds (online stages: the rollout
batch, ``rollouts.safetensors``, and PPO's ``value_head.safetensors``), ``run_settings.json`` (the settings that
trained it, checked on resume: sftkit/train/run_record.py) and ``trainer_state.json`` in the shape
Hugging Face's ``TrainerState.save_to_json`` writes (``global_step``, ``epoch``, ``log_history``…),
so tools made for Trainer checkpoints read it. Under DeepSpeed the optimizer lives in DeepSpeed's
own ``ds/`` sub-folder instead. Every folder is written under a temporary name and renamed when
complete (sftkit.atomic), so a crash never leaves a half checkpoint that 'latest' could pick.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sftkit import atomic
from sftkit.errors import TrainError
from sftkit.train.distributed import all_gather_strings, barrier
from sftkit.train.modeling import load_full_weights

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders in ``output_dir``, oldest step first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, output_dir: str) -> Path:
    """The checkpoint folder ``--resume_from_checkpoint`` names ('latest' or a path)."""
    if resume.lower() in ("latest", "true"):
        found = list_checkpoints(output_dir)
        if not found:
            raise TrainError(f"--resume_from_checkpoint={resume}: no checkpoint-N folder in {output_dir}")
        return found[-1]
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise TrainError(f"--resume_from_checkpoint={resume}: not a checkpoint folder (no trainer_state.json); "
                                f"give a checkpoint-N folder from a previous run, or 'latest'")
    return path


# sftkit's log records name the learning rate "lr"; Trainer's log_history names it "learning_rate".
_LOG_RENAMES = {"lr": "learning_rate"}


def to_trainer_state(state: dict) -> dict:
    """sftkit's ``{"step", "epoch", "history", …}`` as a Hugging Face ``TrainerState`` JSON object.

    Every key is a TrainerState field (``TrainerState.load_from_json`` accepts it), sorted and
    indented as ``save_to_json`` writes them.
    """
    log_history = [{_LOG_RENAMES.get(k, k): v for k, v in record.items()} for record in state["history"]]
    evals = [r for r in state["history"] if isinstance(r.get("eval_loss"), (int, float))]
    best = min(evals, key=lambda r: r["eval_loss"]) if evals else None
    return {
        "best_global_step": best["step"] if best else None,
        "best_metric": best["eval_loss"] if best else None,
        "best_model_checkpoint": None,
        "epoch": state["epoch"],
        "eval_steps": state.get("eval_steps", 0),
        "global_step": state["step"],
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": log_history,
        "logging_steps": state.get("logging_steps", 1),
        "max_steps": state.get("max_steps", state["step"]),
        "num_input_tokens_seen": int(state.get("num_input_tokens_seen", 0)),
        "num_train_epochs": state.get("num_train_epochs", 0),
        "save_steps": state.get("save_steps", 0),
        "stateful_callbacks": {},
        "total_flos": 0.0,
        "train_batch_size": state.get("train_batch_size"),
        "trial_name": None,
        "trial_params": None,
    }


def from_trainer_state(data: dict) -> dict:
    """sftkit's ``{"step", "epoch", "history"}`` from a trainer_state.json (Trainer's shape, or sftkit's older one)."""
    if "global_step" not in data:
        return data
    back = {v: k for k, v in _LOG_RENAMES.items()}
    history = [{back.get(k, k): v for k, v in record.items()} for record in data.get("log_history", [])]
    return {"step": data["global_step"], "epoch": data.get("epoch", 0), "history": history}


def _rng_state(device: str) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(output_dir: str, step: int, *, world, save_adapter, optimizer, scheduler, engine,
                    trainer_state: dict, save_total_limit: int, settings: dict | None = None,
                    save_state=None) -> Path:
    """Write ``checkpoint-<step>`` (all ranks call this; each writes its own RNG state).

    ``trainer_state`` is sftkit's ``{"step", "epoch", "history", …}``; ``settings`` the run's
    settings (run_record.settings_of), stored for the resume check; ``save_state(folder)`` writes
    what the recipe needs besides (online stages: their rollouts).
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    # Every rank writes into one temporary folder, named by the main process's PID (it does the
    # rename), so after a kill it is gone with that process: clean_stale removes it at the next start.
    main_pid = int(all_gather_strings([str(os.getpid())])[0][0])
    writing = atomic.replacing(final) if world.is_main else contextlib.nullcontext(atomic.temp_path(final, main_pid))
    with writing as staging:
        if world.is_main:
            staging.mkdir()
        barrier()
        save_adapter(staging)  # collective under ZeRO-3; only the main process writes
        if save_state is not None:
            save_state(staging)
        if engine is not None:
            engine.save_checkpoint(str(staging / "ds"), tag="state", exclude_frozen_parameters=True)
        elif world.is_main:
            torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        if world.is_main:
            atomic.write_json(staging / "scheduler.json", scheduler.state_dict())
            # As TrainerState.save_to_json writes it: sorted keys, indent 2, a final newline.
            atomic.write_text(staging / "trainer_state.json",
                              json.dumps(to_trainer_state(trainer_state), indent=2, sort_keys=True) + "\n")
            if settings is not None:
                atomic.write_json(staging / "run_settings.json", settings)
        save_file({k: v.contiguous() for k, v in _rng_state(world.device).items()},
                  str(staging / f"rng_state_{world.rank}.safetensors"))
        barrier()  # every rank's files are in before the main process renames the folder
    if world.is_main:
        if save_total_limit > 0:
            for old in list_checkpoints(output_dir)[:-save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, *, world, model, optimizer, scheduler, engine) -> dict:
    """Restore adapter, optimizer, scheduler and this rank's RNG; return the trainer state."""
    from peft import set_peft_model_state_dict

    if engine is not None:
        engine.load_checkpoint(str(path / "ds"), tag="state", load_module_strict=False,
                               load_optimizer_states=True, load_lr_scheduler_states=False)
    else:
        if (path / "adapter_model.safetensors").is_file():
            set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors"), device=world.device))
        else:  # full fine-tuning saves the whole model
            load_full_weights(model, path, world.device)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=world.device, weights_only=True))
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    rng_file = path / f"rng_state_{world.rank}.safetensors"
    if rng_file.is_file():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and world.device.startswith("cuda"):
            torch.cuda.set_rng_state(rng["cuda"], world.device)
    return from_trainer_state(json.loads((path / "trainer_state.json").read_text()))
