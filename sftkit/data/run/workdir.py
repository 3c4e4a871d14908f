"""Where each stage's parts live in the work directory, and which rows belong to a shard."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sftkit.data import DataError

STAGE_DIRS = {"download": "1_download", "detox": "2_detox", "chop": "3_chop", "grade": "4_grade"}
FINAL_JSON = "oig_instruct_cleaned.json"
_PART = re.compile(r"^part-(\d{5})-of-(\d{5})\.parquet$")


def stage_dir(work_dir: str | Path, stage: str) -> Path:
    return Path(work_dir) / STAGE_DIRS[stage]


def download_part(work_dir: str | Path, name: str) -> Path:
    """The download stage's parquet of input file ``name`` (one per input file, not per shard)."""
    return stage_dir(work_dir, "download") / f"{name}.parquet"


def part_name(shard_index: int, num_shards: int) -> str:
    return f"part-{shard_index:05d}-of-{num_shards:05d}"


def stage_parts(work_dir: str | Path, stage: str, needed_by: str) -> list[Path]:
    """Every part a stage wrote, checked to form one complete set (all shards of one run)."""
    directory = stage_dir(work_dir, stage)
    parts = sorted(p for p in directory.glob("part-*.parquet") if _PART.match(p.name))
    if not parts:
        raise DataError(f"{needed_by} needs the output of {stage}, and {directory} has none: "
                        f"run `python create_data.py {stage}` first (same --work_dir)")
    found = [tuple(int(x) for x in _PART.match(p.name).groups()) for p in parts]
    totals = {n for _, n in found}
    if len(totals) != 1:
        raise DataError(f"{directory} mixes parts of runs with different --num_shards ({sorted(totals)}); "
                        f"remove the stale parts and run {stage} again")
    (total,) = totals
    missing = sorted(set(range(total)) - {i for i, _ in found})
    if missing:
        raise DataError(f"{directory} lacks shard(s) {missing} of {total}: run {stage} with "
                        f"--shard_index={missing[0]} --num_shards={total} (or copy those parts here) "
                        f"before {needed_by}")
    return parts


def shard_mask(ids: np.ndarray, shard_index: int, num_shards: int) -> np.ndarray:
    """Rows of this shard: ``id % num_shards == shard_index`` (ids are content hashes, so shards balance)."""
    if num_shards == 1:
        return np.ones(len(ids), dtype=bool)
    return (ids % np.uint64(num_shards)) == np.uint64(shard_index)
