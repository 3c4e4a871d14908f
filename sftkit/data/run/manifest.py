"""Manifests: a step's output is reused only when its inputs' hashes and its settings are unchanged.

A manifest is JSON beside the step's outputs: the sha256 of every input and output, the settings
that shaped the output, and the step's counts. File existence alone never counts as done.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from sftkit import atomic
from sftkit.data import DataError
from sftkit.data.run.stats import StageStats

MANIFEST_VERSION = 1


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def digests(paths: Iterable[str | os.PathLike]) -> list[dict[str, str]]:
    """Name and sha256 of each file (names, not full paths, so a moved work_dir stays valid)."""
    return [{"name": Path(p).name, "sha256": sha256_file(p)} for p in paths]


def normalize(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as they round-trip through JSON, so a stored copy compares equal."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == MANIFEST_VERSION else None


def stale_reason(manifest_path: str | os.PathLike, inputs: list[dict], settings: dict,
                 outputs: list[str | os.PathLike]) -> str | None:
    """Why the step must run again, or None when its outputs can be reused."""
    manifest_path = Path(manifest_path)
    outputs = [Path(p) for p in outputs]
    manifest = _load(manifest_path)
    if manifest is None:
        if outputs[0].exists():  # the main output; side files (rejects, cards) are always rewritten
            raise DataError(f"{outputs[0]} already exists but was not written by this pipeline "
                            f"(no manifest {manifest_path.name}); move it away or choose another --work_dir")
        return "no previous run"
    if manifest.get("pending"):
        # Written before the outputs: the earlier run stopped somewhere between the two.
        return "the previous run was interrupted before it finished"
    if manifest["inputs"] != inputs:
        return "inputs changed"
    settings = normalize(settings)
    if manifest["settings"] != settings:
        changed = sorted(k for k in settings.keys() | manifest["settings"].keys()
                         if settings.get(k) != manifest["settings"].get(k))
        return "settings changed: " + ", ".join(changed)
    for entry, path in zip(manifest["outputs"], outputs):
        if not path.is_file() or entry["name"] != path.name or sha256_file(path) != entry["sha256"]:
            return f"output {path.name} is missing or was modified"
    return None


def stored_stats(manifest_path: str | os.PathLike) -> StageStats:
    manifest = _load(Path(manifest_path))
    if manifest is None or manifest.get("pending"):
        raise DataError(f"{manifest_path}: missing or unfinished manifest; run that stage again")
    return StageStats.from_dict(manifest["stats"])


def write_pending(manifest_path: str | os.PathLike, step: str, inputs: list[dict], settings: dict) -> None:
    """Claim the outputs before writing them, so a kill between output and manifest is recognised."""
    manifest = {"version": MANIFEST_VERSION, "step": step, "pending": True, "inputs": inputs,
                "settings": normalize(settings)}
    atomic.write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))


def write_manifest(manifest_path: str | os.PathLike, step: str, inputs: list[dict], settings: dict,
                   outputs: list[str | os.PathLike], stats: StageStats) -> None:
    """Record a finished step. Written last, after its outputs are in place."""
    manifest = {"version": MANIFEST_VERSION, "step": step, "inputs": inputs, "settings": normalize(settings),
                "outputs": digests(outputs), "stats": stats.to_dict()}
    atomic.write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))


def cached(name: str, manifest_path: str | os.PathLike, inputs: list[dict], settings: dict,
           outputs: list[str | os.PathLike], compute) -> tuple[StageStats, str | None]:
    """Run ``compute() -> StageStats`` unless the manifest shows identical inputs and settings.

    Returns the stats and a line saying what happened (None for a first run).
    """
    reason = stale_reason(manifest_path, inputs, settings, outputs)
    if reason is None:
        return (stored_stats(manifest_path),
                f"[{name}] up to date (inputs and settings unchanged): reusing {Path(outputs[0]).name}")
    write_pending(manifest_path, name, inputs, settings)
    stats = compute()
    write_manifest(manifest_path, name, inputs, settings, outputs, stats)
    return stats, (None if reason == "no previous run" else f"[{name}] running again: {reason}")


def cached_step(name: str, manifest_path: str | os.PathLike, inputs: list[dict], settings: dict,
                outputs: list[str | os.PathLike], compute) -> StageStats:
    """:func:`cached`, printing what happened."""
    stats, note = cached(name, manifest_path, inputs, settings, outputs, compute)
    if note:
        print(note, flush=True)
    return stats
