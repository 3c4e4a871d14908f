"""What a training run records about itself, so a resume continues the same run or refuses.

Each checkpoint stores the settings that trained it (``run_settings.json``: every flag, the
effective batch, the process count and a content hash of the data). ``--resume_from_checkpoint``
compares them with the new command: a change to anything that alters what is learned is a
:class:`TrainError` listing the differences; logging, evaluation and save frequency, and a longer
``max_steps``/``num_epochs`` may change. ``run_config.yaml`` keeps the settings that started the
adapter as its first YAML document and gets one more document per resume, never rewritten.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Iterator

import yaml

import sftkit
from sftkit import atomic, lock
from sftkit.errors import FlagError, TrainError
from sftkit.rows import data_files, hub_dataset
from sftkit.train.rewards import functions_fingerprint

SETTINGS_FILE = "run_settings.json"
RUN_CONFIG = "run_config.yaml"
CODE_DIR = "code"

# Flags a resume may change: they decide what is logged, evaluated or saved, how long the run goes on,
# how files are fetched, or where and by how many processes data is tokenized, never what a step learns. Every other flag (new ones included) must match.
SAFE_TO_CHANGE = frozenset({
    "logging_steps", "save_steps", "save_total_limit", "eval_steps", "eval_epochs", "val_metrics",
    "val_max_new_tokens", "report_to", "max_steps", "num_epochs", "run_id", "save_code", "local_files_only",
    "trust_remote_code", "use_auth_token", "resume_download", "gradient_checkpointing", "llama_flash_attn",
    "debug", "tokenized_cache_dir", "tokenize_workers",
})
# Not settings of the run: where it is resumed from, the recipe file (its values are in the other flags).
NOT_COMPARED = frozenset({"resume_from_checkpoint", "config", "output_dir"})
SECRET = frozenset({"use_auth_token"})
DATA_FLAGS = ("data_path", "valid_path", "data_mix_in_path")


def data_fingerprint(path: str) -> str:
    """sha256 over the names and bytes of the data files at ``path``; for a hub dataset, over its name
    and the fingerprint ``datasets`` gives the copy it loads (a new revision of the data gets another)."""
    if not path:
        return ""
    files = data_files(path)
    if not files:
        return hashlib.sha256(f"hub:{path}:{hub_dataset(path)._fingerprint}".encode()).hexdigest()
    return _files_sha256(tuple((str(f), f.name, _stat_key(f)) for f in files))


def _stat_key(file: Path) -> tuple[int, int, int]:
    found = file.stat()
    return found.st_size, found.st_mtime_ns, found.st_ino


@functools.lru_cache(maxsize=32)
def _files_sha256(files: tuple) -> str:
    """The hash of files read once per process while their size, mtime and inode stay the same (a
    run hashes its data for its record and for each tokenized cache key: 0.6 s per 400 MB, each)."""
    digest = hashlib.sha256()
    for file, name, _ in files:
        digest.update(name.encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_fingerprint(path: str) -> str:
    """sha256 over the config and weight files of a model directory (a hub id hashes as its name)."""
    folder = Path(path)
    digest = hashlib.sha256()
    if not folder.is_dir():
        digest.update(f"hub:{path}".encode())
        return digest.hexdigest()
    for file in sorted(p for p in folder.iterdir() if p.is_file() and (
            p.name.endswith(".json") or p.suffix in (".safetensors", ".bin"))):
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def settings_of(config, world_size: int) -> dict:
    """Every flag plus what the flags alone don't say: processes, effective batch, data hashes, and for
    the online stages the content of the reward model and reward functions (retrained in place: refused)."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    settings["data_path"] = config.resolved_data_path()
    for name in SECRET:
        if settings.get(name):
            settings[name] = "<set>"
    settings["processes"] = world_size
    settings["effective_batch_size"] = config.effective_batch_size(world_size)
    settings["gradient_accumulation"] = config.gradient_accumulation(world_size)
    # How --pack fills rows decides which rows each step trains on; earlier releases packed greedily
    # (no such key), so resuming their packed checkpoints is refused rather than silently replanned.
    settings["packing"] = "best_fit_decreasing" if getattr(config, "pack", False) else None
    for name in DATA_FLAGS:
        settings[f"{name}_sha256"] = data_fingerprint(settings.get(name) or "")
    if getattr(config, "reward_model", ""):
        settings["reward_model_sha256"] = model_fingerprint(config.reward_model)
    if getattr(config, "reward_funcs", []):
        settings["reward_funcs_sha256"] = functions_fingerprint(config.reward_funcs)
    return settings


def differences(saved: dict, current: dict) -> dict[str, tuple]:
    """Settings that differ and may not: ``{name: (saved, current)}``."""
    names = (set(saved) | set(current)) - SAFE_TO_CHANGE - NOT_COMPARED
    return {n: (saved.get(n), current.get(n)) for n in sorted(names) if saved.get(n) != current.get(n)}


def check_resume(checkpoint: Path, current: dict) -> None:
    """Refuse to resume ``checkpoint`` with settings that change what the run learns."""
    file = checkpoint / SETTINGS_FILE
    if not file.is_file():
        raise TrainError(f"{checkpoint}: no {SETTINGS_FILE}, so it cannot be checked that this command continues "
                         f"the same run; start a new run in a new --output_dir (use --lora_weights={checkpoint} to "
                         f"start from its adapter)")
    saved = json.loads(file.read_text())
    changed = differences(saved, current)
    if changed:
        lines = "\n".join(f"  --{name}: {old!r} in the checkpoint, {new!r} now" for name, (old, new) in changed.items())
        raise TrainError(f"--resume_from_checkpoint={checkpoint}: these settings differ from the run that wrote it "
                         f"and would change what it learns:\n{lines}\nResume with the checkpoint's values, or start "
                         f"over in a new --output_dir (--lora_weights={checkpoint} starts from its adapter).")


def save_settings(folder: Path, settings: dict) -> None:
    atomic.write_json(folder / SETTINGS_FILE, settings)


def record_start(output_dir: Path, settings: dict, resumed_from: Path | None, at_step: int = 0) -> None:
    """First run: write run_config.yaml. A resume: append a document saying from where and what changed."""
    path = output_dir / RUN_CONFIG
    if resumed_from is None or not path.is_file():
        text = yaml.safe_dump(settings, sort_keys=False)
    else:
        first = next(yaml.safe_load_all(path.read_text()))
        changed = {k: {"was": first.get(k), "now": v} for k, v in settings.items()
                   if k in first and first.get(k) != v and k not in NOT_COMPARED}
        entry = {"resumed": {"from": str(resumed_from), "at_step": at_step, "run_id": settings.get("run_id", ""),
                             "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                             "changed": changed}}
        text = path.read_text() + "---\n" + yaml.safe_dump(entry, sort_keys=False)
    atomic.write_text(path, text)


def read_run_config(output_dir: Path) -> list[dict]:
    """The documents of run_config.yaml: the settings that started the run, then one per resume."""
    return list(yaml.safe_load_all((Path(output_dir) / RUN_CONFIG).read_text()))


def save_code(output_dir: Path) -> Path:
    """Copy finetune.py (when run from a clone) and the sftkit package into ``output_dir/code``."""
    package = Path(sftkit.__file__).resolve().parent
    target = output_dir / CODE_DIR
    with atomic.replacing(target) as staging:
        staging = Path(staging)
        shutil.copytree(package, staging / "sftkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        script = package.parent / "finetune.py"
        if script.is_file():
            shutil.copy2(script, staging / "finetune.py")
    return target


def begin(config, world, resume_from: Path | None, log) -> dict:
    """Checks and records at the start of a run; returns the settings saved with each checkpoint."""
    if config.llama_flash_attn and not world.device.startswith("cuda"):
        raise FlagError("--llama_flash_attn=True needs a CUDA GPU (flash-attn kernels); drop it on the CPU")
    settings = settings_of(config, world.size)
    if resume_from is not None:
        check_resume(resume_from, settings)
    effective = settings["effective_batch_size"]
    if effective != config.batch_size:
        log(f"batch: --batch_size={config.batch_size} is not a multiple of --micro_batch_size="
            f"{config.micro_batch_size} x {world.size} processes; each step trains on {effective} sequences "
            f"({settings['gradient_accumulation']} accumulation steps), as h2oGPT computes it")
    if config.save_code and world.is_main:
        log(f"code: copied to {save_code(Path(config.output_dir))}")
    return settings


@contextlib.contextmanager
def one_writer(output_dir: str, is_main: bool) -> Iterator[None]:
    """Rank 0 holds ``output_dir``'s lock for the run's lifetime; a second run fails at once."""
    if not is_main:
        yield
        return
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise TrainError(f"--output_dir={output_dir} is a file; choose a directory")
    with lock.hold(output_dir, "--output_dir"):
        # Holding the lock, nothing else writes here: whatever a killed run left half-written goes
        # (a half checkpoint, half final weights), and a checkpoint set aside mid-swap comes back.
        atomic.clean_stale(output_dir)
        yield
