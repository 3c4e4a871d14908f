import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftkit.data.run import parquet_io
from sftkit.data.run.parquet_io import ParquetSink

SCHEMA = pa.schema([("a", pa.int64())])


def test_rows_appear_under_the_name_only_when_the_sink_closes(tmp_path):
    target = tmp_path / "part.parquet"
    with ParquetSink(target, SCHEMA) as sink:
        sink.write(pa.record_batch({"a": [1, 2]}, schema=SCHEMA))
        assert not target.exists()
        assert [p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir()] == [".part.parquet.tmp"]
    assert pq.read_table(target).column("a").to_pylist() == [1, 2] and sink.rows == 2
    assert [p.name for p in tmp_path.iterdir()] == ["part.parquet"]


@pytest.mark.parametrize("durable", [True, False])
def test_an_error_while_writing_leaves_the_old_part_and_no_temporary(tmp_path, durable):
    target = tmp_path / "part.parquet"
    with ParquetSink(target, SCHEMA) as sink:
        sink.write(pa.record_batch({"a": [7]}, schema=SCHEMA))
    with pytest.raises(RuntimeError), ParquetSink(target, SCHEMA, durable=durable) as sink:
        sink.write(pa.record_batch({"a": [1, 2, 3]}, schema=SCHEMA))
        raise RuntimeError("failed mid-way")
    assert pq.read_table(target).column("a").to_pylist() == [7]
    assert [p.name for p in tmp_path.iterdir()] == ["part.parquet"]


def test_a_writer_that_cannot_open_leaves_no_temporary(tmp_path, monkeypatch):
    def refuse(path, *args, **kwargs):
        open(path, "wb").close()  # as a writer that created its file, then failed
        raise OSError("no space left on device")

    monkeypatch.setattr(parquet_io.pq, "ParquetWriter", refuse)
    with pytest.raises(OSError, match="no space"), ParquetSink(tmp_path / "part.parquet", SCHEMA):
        pass
    assert list(tmp_path.iterdir()) == []
