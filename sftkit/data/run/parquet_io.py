"""Streaming parquet in and out: record batches in, row groups out, written through sftkit.atomic."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from sftkit import atomic


class ParquetSink:
    """Write record batches to ``path`` through :func:`sftkit.atomic.replacing`.

    The rows go to the atomic temporary, renamed into place when the ``with`` block ends
    cleanly; on an exception the temporary is removed and ``path`` is left as it was.
    ``durable=False`` skips the fsync, for scratch files a crash does not need.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, durable: bool = True):
        self.path = Path(path)
        self.schema = schema
        self.durable = durable
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._open = contextlib.ExitStack()

    def __enter__(self) -> "ParquetSink":
        with contextlib.ExitStack() as opening:  # a failed open removes the temporary again
            tmp = opening.enter_context(atomic.replacing(self.path, self.durable))
            self._writer = opening.enter_context(pq.ParquetWriter(tmp, self.schema, compression="zstd"))
            self._open = opening.pop_all()
        return self

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows:
            table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            self._writer.write_table(table.select(self.schema.names).cast(self.schema))
            self.rows += batch.num_rows

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Close the writer, then rename the temporary into place (or remove it on an error)."""
        return self._open.__exit__(exc_type, exc, tb)


def iter_batches(paths: Iterable[str | os.PathLike], batch_rows: int,
                 columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_rows`` rows from each file in turn; never a whole file in memory."""
    for path in paths:
        with pq.ParquetFile(path) as reader:
            yield from reader.iter_batches(batch_size=batch_rows, columns=columns)


def count_rows(paths: Iterable[str | os.PathLike]) -> int:
    """Rows in parquet files, from their footers."""
    total = 0
    for path in paths:
        with pq.ParquetFile(path) as reader:
            total += reader.metadata.num_rows
    return total


def read_schema(path: str | os.PathLike) -> pa.Schema:
    return pq.read_schema(path)

