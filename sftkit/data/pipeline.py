"""The runner: run one stage or all five in order, each printing its summary line."""
from __future__ import annotations

import time

from sftkit.data import chop, detox, download, finalize, grade
from sftkit.data.config import DataConfig
from sftkit.data.stats import StageStats

STAGES = {"download": download.run, "detox": detox.run, "chop": chop.run, "grade": grade.run,
          "finalize": finalize.run}


def run_stage(stage: str, cfg: DataConfig) -> StageStats:
    start = time.perf_counter()
    stats = STAGES[stage](cfg)
    stats.stage = stage
    print(f"{stats.summary_line()} ({time.perf_counter() - start:.1f}s)", flush=True)
    return stats


def run(stage: str, cfg: DataConfig) -> list[StageStats]:
    """``stage`` is one of STAGES, or ``all`` for every stage in order."""
    if stage == "all":
        return [run_stage(name, cfg) for name in STAGES]
    return [run_stage(stage, cfg)]
