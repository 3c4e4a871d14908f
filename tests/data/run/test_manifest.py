import pytest

from sftkit.data import DataError
from sftkit.data.run.manifest import cached_step, digests, stale_reason, write_manifest
from sftkit.data.run.parquet_io import ParquetSink
from sftkit.data.run.stats import StageStats


def test_reuse_only_when_inputs_and_settings_are_unchanged(tmp_path):
    source, out, manifest = tmp_path / "in.txt", tmp_path / "out.txt", tmp_path / "out.manifest.json"
    source.write_text("input v1")
    calls = []

    def compute():
        calls.append(1)
        out.write_text("output")
        return StageStats("step", rows_in=2, rows_out=1, dropped={"x": 1})

    stats = cached_step("step", manifest, digests([source]), {"k": 1}, [out], compute)
    again = cached_step("step", manifest, digests([source]), {"k": 1}, [out], compute)
    assert len(calls) == 1 and again.to_dict() == stats.to_dict()
    assert stale_reason(manifest, digests([source]), {"k": 2}, [out]) == "settings changed: k"
    source.write_text("input v2")
    assert stale_reason(manifest, digests([source]), {"k": 1}, [out]) == "inputs changed"
    source.write_text("input v1")
    out.write_text("edited by hand")
    assert "was modified" in stale_reason(manifest, digests([source]), {"k": 1}, [out])
    out.unlink()
    assert "missing" in stale_reason(manifest, digests([source]), {"k": 1}, [out])


def test_an_output_not_written_by_the_pipeline_is_never_overwritten(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("someone's file")
    with pytest.raises(DataError, match="was not written by this pipeline"):
        cached_step("step", tmp_path / "m.json", [], {}, [out], lambda: StageStats("step"))
    assert out.read_text() == "someone's file"


def test_settings_compare_after_a_json_round_trip(tmp_path):
    out = tmp_path / "o"
    out.write_text("x")
    write_manifest(tmp_path / "m.json", "s", [], {"keep": {30: 0.2}, "t": (1, 2)}, [out], StageStats("s"))
    assert stale_reason(tmp_path / "m.json", [], {"keep": {30: 0.2}, "t": (1, 2)}, [out]) is None


def test_parquet_sink_leaves_nothing_behind_on_error(tmp_path):
    import pyarrow as pa

    schema = pa.schema([("a", pa.int64())])
    with pytest.raises(RuntimeError), ParquetSink(tmp_path / "x.parquet", schema) as sink:
        sink.write(pa.record_batch({"a": [1, 2]}, schema=schema))
        raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []
