"""The runner: everything a stage needs besides its own row processing.

A stage declares its phases and steps (:mod:`sftkit.data.run.contract`). The runner owns what every
stage used to repeat: the work-dir lock, stale temporary files, which shards run, each step's
manifest (cache key = input hashes + exactly the declared settings + the shard), the stats merged
over shards, empty-output warnings and the summary line. An executor (:mod:`sftkit.data.run.executors`),
handed the shard task by :mod:`sftkit.data.pipeline`, decides where shards run, so a local run and a
Ray run go through the same code and write the same files.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from sftkit import atomic, lock
from sftkit.data import DataError
from sftkit.data.config import DataConfig
from sftkit.data.run.contract import DriverPhase, Shard, ShardPhase, Stage, Step, run_step
from sftkit.data.run.stats import StageStats
from sftkit.errors import FlagError


def run_steps(stage: Stage, phase: ShardPhase, steps: list[Step], cfg: DataConfig, shard: Shard,
              before: StageStats | None) -> tuple[StageStats, list[str], bool]:
    """Run (or reuse) one shard's steps in order; (shard stats so far, lines to print, all reused)."""
    stats, notes, reused = before, [], bool(steps)
    for step in steps:
        chained = phase.combine == "then"

        def compute(step=step, before=stats if chained else None):
            own = step.compute()
            return own if before is None else before.then(own)

        own, note = run_step(stage, step, cfg, shard, compute)
        reused &= note is not None and "up to date" in note
        if note:
            notes.append(note)
        if chained or stats is None:
            stats = own
        else:
            stats = stats.merge(own)
        if not chained:
            notes.append(own.summary_line())
    if stats is None:
        stats = StageStats(stage.name)
    return stats, notes, reused


def shards_to_run(stage: Stage, cfg: DataConfig) -> list[Shard]:
    count = stage.num_shards(cfg)
    if cfg.num_shards < 1:
        raise FlagError(f"--num_shards={cfg.num_shards}: need at least 1")
    if cfg.shard_index is None:
        return [Shard(i, count) for i in range(count)]
    if not 0 <= cfg.shard_index < cfg.num_shards:
        raise FlagError(f"--shard_index={cfg.shard_index} --num_shards={cfg.num_shards}: need 0 <= shard_index "
                        "< num_shards")
    if count == 1 and cfg.num_shards > 1:
        raise FlagError(f"{stage.name} runs once over every shard's output: run it without --shard_index")
    return [Shard(cfg.shard_index, count)] if cfg.shard_index < count else []


def check_work_dir(cfg: DataConfig) -> Path:
    """The work dir, created, or an error saying it is an output location that cannot be used."""
    work_dir = Path(cfg.work_dir)
    if work_dir.exists() and not work_dir.is_dir():
        raise DataError(f"--work_dir={cfg.work_dir} is a file, not a directory: it is where the stages write "
                        "their outputs; point --work_dir at a directory (it is created if missing)")
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        probe = atomic.temp_path(work_dir / ".write-probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"--work_dir={cfg.work_dir}: cannot write there ({exc.strerror or exc}); it is the "
                        "output directory of every stage: choose a writable --work_dir") from None
    return work_dir


_held: dict[Path, int] = {}


@contextlib.contextmanager
def holding_work_dir(cfg: DataConfig) -> Iterator[None]:
    """One writer per --work_dir for the whole command (re-entrant within this process)."""
    work_dir = check_work_dir(cfg).resolve()
    if work_dir in _held:
        _held[work_dir] += 1
        try:
            yield
        finally:
            _held[work_dir] -= 1
        return
    with lock.hold(work_dir, "--work_dir"):
        _held[work_dir] = 1
        try:
            yield
        finally:
            del _held[work_dir]


def clean_stale_temps(stage: Stage, cfg: DataConfig) -> None:
    removed = []
    for directory in stage.temp_dirs(cfg):
        removed += atomic.clean_stale(directory)
    if removed:
        print(f"[{stage.name}] removed {len(removed)} temporary file(s) left by a killed run: "
              + ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else ""), flush=True)


def run_stage(stage: Stage, cfg: DataConfig, executor) -> StageStats:
    """Run one stage's shards on ``executor`` (:mod:`sftkit.data.run.executors`, holding the shard task)
    and print its summary line."""
    with holding_work_dir(cfg):
        start = time.perf_counter()
        stage.check(cfg)
        clean_stale_temps(stage, cfg)
        shards = shards_to_run(stage, cfg)
        before: dict[int, dict | None] = {shard.index: None for shard in shards}
        reused = set(before)
        for number, phase in enumerate(stage.phases):
            if isinstance(phase, DriverPhase):
                phase.run(cfg, shards, executor)
                continue
            jobs = [(stage.name, number, cfg, shard, before[shard.index]) for shard in shards]
            results = executor.run_shards(jobs, [stage.describe(cfg, s) for s in shards])
            rows = 0
            with tqdm(total=len(jobs), desc=f"{stage.name} shards", unit=" shard", leave=False,
                      disable=len(jobs) < 2) as bar:
                for index, result in results:
                    before[index] = result["stats"]
                    if not result["reused"]:
                        reused.discard(index)
                    for note in result["notes"]:
                        print(note, flush=True)
                    rows += result["stats"]["rows_in"]
                    bar.set_postfix_str(f"{rows / max(time.perf_counter() - start, 1e-9):,.0f} rows/s")
                    bar.update()
        stats = StageStats(stage.name)
        for index in sorted(before):
            if before[index] is not None:
                stats = stats.merge(StageStats.from_dict(before[index]))
        stats.stage = stage.name
        if len(shards) > 1 and reused:
            print(f"[{stage.name}] reused {len(reused)} of {len(shards)} finished shard(s): "
                  f"{', '.join(str(i) for i in sorted(reused))}", flush=True)
        print(f"{stats.summary_line()} ({time.perf_counter() - start:.1f}s)", flush=True)
        if stats.rows_out == 0:
            print(f"[{stage.name}] warning: 0 rows out of {stats.rows_in:,} in; the later stages will have "
                  "nothing to work on (check --source/--files and this stage's thresholds)", flush=True)
        stage.report(cfg, stats)
        return stats
