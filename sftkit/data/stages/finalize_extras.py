"""What finalize adds for issue #10: the global near-duplicate pass, personality rows, the oasst pairs file.

Near duplicates are found in one pass over every grade part (all shards' rows), the rows of a
cluster taken in row-id order, so every shard computes the same set and keeps the same row of each
cluster however the data was sharded; each shard then drops its own rows of that set. Personality rows and the pairs file are generated, not
filtered.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from sftkit import atomic
from sftkit.data.algorithms import neardup, personality
from sftkit.data.config import DataConfig
from sftkit.data.stages.download import resolve_files
from sftkit.data.algorithms.hashing import row_ids
from sftkit.data.run.parquet_io import iter_batches
from sftkit.data.inputs.sources import PAIRS_SUFFIX
from sftkit.data.run.workdir import stage_dir

PAIRS_JSON = "oasst_pairs.json"


# The DataConfig fields that change finalize's output besides its own (a change re-runs it).
SETTINGS = ("near_dup_threshold", "near_dup_shingle_words", "near_dup_num_perm", "personality",
            "personality_repeat", "bot_name", "bot_maker")


def _plain(text: str) -> str:
    return text.replace("<human>:", " ").replace("<bot>:", " ")


def near_duplicate_ids(cfg: DataConfig, inputs: list[Path]) -> np.ndarray:
    """Sorted ids of the rows to drop as near duplicates (empty when --near_dup_threshold >= 1)."""
    if cfg.near_dup_threshold >= 1:
        return np.empty(0, dtype=np.uint64)
    items = ((row_id, _plain(text)) for batch in iter_batches(inputs, cfg.batch_rows, ["id", "text"])
             for row_id, text in zip(batch.column("id").to_numpy().tolist(), batch.column("text").to_pylist()))
    return neardup.near_duplicate_ids(items, cfg.near_dup_threshold, cfg.near_dup_shingle_words,
                                      cfg.near_dup_num_perm, cfg.batch_rows, scratch_dir=cfg.work_dir)


def personality_batch(cfg: DataConfig, schema: pa.Schema) -> pa.RecordBatch:
    """The personality rows, each repeated --personality_repeat times (ids differ per copy)."""
    texts = personality.personality_texts(cfg.bot_name, cfg.bot_maker) if cfg.personality else []
    rows = [text for _ in range(max(cfg.personality_repeat, 0)) for text in texts]
    ids = row_ids([f"{text}\x00copy {i // max(len(texts), 1)}" for i, text in enumerate(rows)])
    return pa.RecordBatch.from_pydict({"id": ids, "text": rows, "source": [personality.SOURCE] * len(rows)},
                                      schema=schema)


def write_oasst_pairs(cfg: DataConfig) -> Path | None:
    """Merge the download stage's OpenAssistant pairs into ``<work_dir>/oasst_pairs.json`` (a JSON list of
    {"prompt": [{"role", "content"}...], "chosen", "rejected", "source"}); None when no input had any."""
    download_dir = stage_dir(cfg.work_dir, "download")
    pair_files = [download_dir / f"{name}{PAIRS_SUFFIX}" for name in resolve_files(cfg)]
    pairs = [json.loads(line) for path in pair_files if path.is_file()
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = Path(cfg.work_dir) / PAIRS_JSON
    if not pairs:
        out.unlink(missing_ok=True)  # left from a run whose inputs had OpenAssistant trees
        return None
    atomic.write_text(out, json.dumps(pairs, ensure_ascii=False, indent=1) + "\n")
    print(f"[finalize] wrote {out} ({len(pairs):,} ranked OpenAssistant answer pairs)")
    return out
