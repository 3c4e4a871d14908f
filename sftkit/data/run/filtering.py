"""Where a filtering stage's rows are dropped: one helper owns the masks, the counts and the output.

A filtering step (detox's thresholds, chop's turn lengths, grade's thresholds and reward) is a
function of a record batch returning a :class:`Verdict`: per reason, the rows that reason drops,
and the columns to add to every row. :func:`filter_rows` streams the step's input through it and
writes what is kept; :func:`keep` does it for one batch. A row dropped for several reasons is
counted once, under the first reason in the verdict (as a datatrove filter stops at the first
filter that drops a document), so ``rows_in - dropped == rows_out`` always holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa

from sftkit.data.run.parquet_io import ParquetSink
from sftkit.data.run.stats import StageStats


@dataclass
class Verdict:
    """A filtering step's judgement of one batch."""

    drops: dict[str, np.ndarray]  # reason -> boolean mask of the rows it drops; earlier reasons win
    columns: dict[str, pa.Array] = field(default_factory=dict)  # added to the batch (before dropping)


def keep(batch: pa.RecordBatch, verdict: Verdict, stats: StageStats) -> pa.RecordBatch:
    """The batch with the verdict's columns added and its dropped rows removed; drops counted in ``stats``."""
    dropped = np.zeros(batch.num_rows, dtype=bool)
    for reason, mask in verdict.drops.items():
        stats.drop(reason, int((mask & ~dropped).sum()))
        dropped |= mask
    for name, values in verdict.columns.items():
        batch = batch.append_column(name, values)
    return batch.filter(pa.array(~dropped))


def filter_rows(stage: str, batches: Iterable[pa.RecordBatch], out: Path, schema: pa.Schema,
                judge: Callable[[pa.RecordBatch], Verdict]) -> StageStats:
    """Stream ``batches`` through ``judge`` into ``out`` (parquet of ``schema``, written atomically);
    return the step's counts."""
    stats = StageStats(stage)
    with ParquetSink(out, schema) as sink:
        for batch in batches:
            stats.rows_in += batch.num_rows
            sink.write(keep(batch, judge(batch), stats))
    stats.rows_out = sink.rows
    return stats
