"""The filter helper: each dropped row counted once under its first reason, columns added, output written."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sftkit.data.run.filtering import Verdict, filter_rows, keep
from sftkit.data.run.stats import StageStats


def test_a_row_dropped_for_several_reasons_counts_once_under_the_first():
    batch = pa.record_batch({"x": pa.array([0, 1, 2, 3, 4])})
    verdict = Verdict({"a": np.array([1, 1, 0, 0, 0], bool), "b": np.array([0, 1, 1, 0, 0], bool)},
                      {"double": pa.array([0, 2, 4, 6, 8])})
    stats = StageStats("s", rows_in=5)
    kept = keep(batch, verdict, stats)
    assert kept.to_pydict() == {"x": [3, 4], "double": [6, 8]}
    assert stats.dropped == {"a": 2, "b": 1}
    stats.rows_out = kept.num_rows
    assert stats.balanced()


def test_filter_rows_streams_every_batch_into_one_file(tmp_path):
    batches = [pa.record_batch({"x": pa.array(range(i, i + 4))}) for i in (0, 4, 8)]
    schema = pa.schema([("x", pa.int64())])
    stats = filter_rows("s", iter(batches), tmp_path / "out.parquet", schema,
                        lambda b: Verdict({"odd": b.column("x").to_numpy() % 2 == 1}))
    assert (stats.rows_in, stats.rows_out, dict(stats.dropped)) == (12, 6, {"odd": 6})
    assert pq.read_table(tmp_path / "out.parquet").column("x").to_pylist() == [0, 2, 4, 6, 8, 10]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]
