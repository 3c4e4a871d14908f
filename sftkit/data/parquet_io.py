"""Streaming parquet in and out: record batches in, row groups out, atomic rename at the end."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


class ParquetSink:
    """Write record batches to ``path`` through a temporary file renamed into place on success.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema):
        self.path = Path(path)
        self.schema = schema
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> "ParquetSink":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        return self

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows:
            table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            self._writer.write_table(table.select(self.schema.names).cast(self.schema))
            self.rows += batch.num_rows

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


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

