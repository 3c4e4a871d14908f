"""The pipeline: the stage registry, the shard task, and the commands that run stages in order.

This is the top of the data package: it imports the stages (:mod:`sftkit.data.stages`) and the
machinery (:mod:`sftkit.data.run`), and hands :func:`run_shard_phase` (the shard task) to the
executor, which runs it here or in a Ray worker. Nothing in the package imports this module.
"""
from __future__ import annotations

import time

from sftkit.data import DataError
from sftkit.data.config import DataConfig
from sftkit.data.inputs import formats
from sftkit.data.inputs.files import obtain, resolve_files
from sftkit.data.run import runner
from sftkit.data.run.contract import Shard
from sftkit.data.run.executors import make_executor
from sftkit.data.run.stats import StageStats
from sftkit.data.stages import chop, detox, download, finalize, grade

STAGES = {stage.name: stage for stage in (download.STAGE, detox.STAGE, chop.STAGE, grade.STAGE, finalize.STAGE)}
STAGES_BEFORE_FINALIZE = ("download", "detox", "chop", "grade")


def run_shard_phase(stage_name: str, phase: int, cfg: DataConfig, shard: Shard, before: dict | None) -> dict:
    """The shard task: one shard's part of one phase, the unit an executor runs (picklable arguments,
    plain result)."""
    start = time.perf_counter()
    stage = STAGES[stage_name]
    steps = stage.phases[phase].steps(cfg, shard)
    stats, notes, reused = runner.run_steps(stage, stage.phases[phase], steps, cfg, shard,
                                            before and StageStats.from_dict(before))
    return {"stats": stats.to_dict(), "notes": notes, "reused": reused, "seconds": time.perf_counter() - start}


def run(stage: str, cfg: DataConfig) -> list[StageStats]:
    """``stage`` is one of STAGES, or ``all`` for every stage in order (finalize waits for every shard,
    so ``all --shard_index=i`` stops before it)."""
    names = list(STAGES) if stage == "all" else [stage]
    if stage == "all" and cfg.shard_index is not None:
        names.remove("finalize")
    with runner.holding_work_dir(cfg):
        executor = make_executor(cfg, run_shard_phase)
        try:
            results = [runner.run_stage(STAGES[name], cfg, executor) for name in names]
        finally:
            executor.close()
    if stage == "all" and cfg.shard_index is not None:
        print(f"[finalize] not run for --shard_index={cfg.shard_index}: once every shard is done, run "
              "`python create_data.py finalize` (same --work_dir)")
    return results


def run_stage(stage: str, cfg: DataConfig) -> StageStats:
    """One stage by name (on --executor), returning its stats."""
    return run(stage, cfg)[0]


def oasst_inputs(cfg: DataConfig) -> list[str]:
    """The input files that are OpenAssistant exports (detected, or named by --input_format)."""
    return [name for name in resolve_files(cfg)
            if formats.detect(obtain(cfg, name), cfg.input_format).name in formats.OASST_FORMATS]


def add_open_assistant(cfg: DataConfig) -> list[StageStats]:
    """h2oGPT's ``test_add_open_assistant`` step: bring the OpenAssistant inputs into the work directory.

    In h2oGPT the OpenAssistant conversations are flattened by a separate step and merged by
    ``test_finalize_to_json``. Here they are ordinary inputs: this step checks that ``--files`` (or the
    source directory) holds an OpenAssistant export, runs the stages before finalize over all inputs
    (each reused when its inputs and settings are unchanged, so after the OIG stages only the new
    files' work is done again) and writes ``oasst_pairs.json``; ``test_finalize_to_json`` then merges
    them. ``create_data.py all`` with the same files does the same in one go.
    """
    found = oasst_inputs(cfg)
    if not found:
        raise DataError("add_open_assistant: none of the input files is an OpenAssistant export (message trees "
                        "or the flat oasst1 message table); add one to --files (e.g. "
                        "--files=<your OIG files>,2023-04-12_oasst_ready.trees.jsonl.gz)")
    print(f"[add_open_assistant] OpenAssistant inputs: {', '.join(found)}")
    stats = [run_stage(stage, cfg) for stage in STAGES_BEFORE_FINALIZE]
    finalize.write_oasst_pairs(cfg)
    return stats
