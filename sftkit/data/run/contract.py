"""The stage contract: what a stage declares so the runner can run it (and nothing that runs it).

A :class:`Stage` is a list of phases. A :class:`ShardPhase` builds, for one :class:`Shard`, the
cached :class:`Step` s it runs: their input files, output files and the ``DataConfig`` fields that
change their result; a :class:`DriverPhase` is work done once in the driver (reward scoring). A
step's cache key is :func:`settings_key` plus the hashes of its inputs. The stages import this
module; the runner (:mod:`sftkit.data.run.runner`) and the registry (:mod:`sftkit.data.pipeline`)
sit above them, so nothing here imports a stage or the machinery that runs one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sftkit.data.config import DataConfig
from sftkit.data.run.manifest import cached, digests
from sftkit.data.run.parquet_io import count_rows, iter_batches
from sftkit.data.run.stats import StageStats
from sftkit.data.run.workdir import part_name, shard_mask, stage_parts


@dataclass(frozen=True)
class Shard:
    """One of ``count`` disjoint pieces of a stage's work."""

    index: int
    count: int

    @property
    def part(self) -> str:
        return part_name(self.index, self.count)

    def mask(self, ids: np.ndarray) -> np.ndarray:
        """Rows of this shard: ``id % count == index`` (ids are content hashes, so shards balance and
        every copy of a row lands in the same shard, which keeps exact dedup global)."""
        return shard_mask(ids, self.index, self.count)


@dataclass
class ShardInput:
    """A shard's rows in the previous stage's parts: its own part when the shard counts agree (each part
    holds exactly its shard's rows), else every part with the shard's mask applied."""

    paths: list[Path]
    mask: Shard | None = None

    def batches(self, batch_rows: int, columns: list[str] | None = None):
        for batch in iter_batches(self.paths, batch_rows, columns if columns is None or "id" in columns
                                  else ["id", *columns]):
            yield batch if self.mask is None else batch.filter(self.mask.mask(batch.column("id").to_numpy()))

    def row_bound(self) -> int:
        """Rows in the files read (the shard's own rows when no mask applies): for progress bars."""
        return count_rows(self.paths)


def shard_input(cfg: DataConfig, previous: str, needed_by: str, shard: Shard) -> ShardInput:
    parts = stage_parts(cfg.work_dir, previous, needed_by)
    if shard.count == 1:
        return ShardInput(parts)
    if len(parts) == shard.count:
        return ShardInput([parts[shard.index]])
    return ShardInput(parts, shard)


@dataclass
class Step:
    """One cached unit of a shard's work, reused when its inputs and declared settings are unchanged."""

    name: str
    manifest: Path
    inputs: list[Path]
    outputs: list[Path]
    settings: tuple[str, ...]  # the DataConfig fields that change this step's output
    compute: Callable[[], StageStats]
    derived: dict[str, Any] = field(default_factory=dict)  # values derived from settings (a model key, ...)


@dataclass
class ShardPhase:
    """Steps run per shard (in a Ray task under --executor=ray).

    ``combine="then"``: each step reads the one before (the shard's stats chain); ``"merge"``: the
    steps are independent pieces (download's files), their stats add up.
    """

    steps: Callable[[DataConfig, Shard], list[Step]]
    combine: str = "then"


@dataclass
class DriverPhase:
    """Work done once for the shards being run, in the driver, with the executor's help (reward actors)."""

    run: Callable[[DataConfig, list[Shard], Any], None]


@dataclass
class Stage:
    name: str
    version: int
    phases: list
    num_shards: Callable[[DataConfig], int]  # how many shards this stage has for these settings
    describe: Callable[[DataConfig, Shard], str]  # a shard's input, for error messages
    check: Callable[[DataConfig], None] = lambda cfg: None  # settings errors, before any work
    temp_dirs: Callable[[DataConfig], list[Path]] = lambda cfg: []  # where killed runs leave temporaries
    report: Callable[[DataConfig, StageStats], None] = lambda cfg, stats: None  # a line after the summary


def settings_key(stage: Stage, step: Step, cfg: DataConfig, shard: Shard) -> dict:
    """Exactly what the cache key holds besides the input hashes."""
    return {"version": stage.version, "shard": [shard.index, shard.count],
            **{name: getattr(cfg, name) for name in step.settings}, **step.derived}


def run_step(stage: Stage, step: Step, cfg: DataConfig, shard: Shard, compute: Callable[[], StageStats] | None = None,
             input_digests: list[dict] | None = None) -> tuple[StageStats, str | None]:
    """Reuse ``step``'s outputs when its manifest matches, else run it (``compute`` overrides
    ``step.compute``; ``input_digests`` saves hashing inputs shared by many steps). Returns the
    step's stats and the line saying what happened (None for a first run)."""
    return cached(step.name, step.manifest, digests(step.inputs) if input_digests is None else input_digests,
                  settings_key(stage, step, cfg, shard), step.outputs, compute or step.compute)
