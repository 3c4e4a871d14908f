"""The pipeline: the five stages in order, run by :mod:`sftkit.data.run.runner` on the chosen executor."""
from __future__ import annotations

from sftkit.data.stages import chop, detox, download, finalize, grade
from sftkit.data.config import DataConfig
from sftkit.data.run.executors import make_executor
from sftkit.data.run import runner
from sftkit.data.run.stats import StageStats

STAGES = {stage.name: stage for stage in (download.STAGE, detox.STAGE, chop.STAGE, grade.STAGE, finalize.STAGE)}


def run(stage: str, cfg: DataConfig) -> list[StageStats]:
    """``stage`` is one of STAGES, or ``all`` for every stage in order (finalize waits for every shard,
    so ``all --shard_index=i`` stops before it)."""
    names = list(STAGES) if stage == "all" else [stage]
    if stage == "all" and cfg.shard_index is not None:
        names.remove("finalize")
    with runner.holding_work_dir(cfg):
        executor = make_executor(cfg)
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
