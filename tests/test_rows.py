"""The one reader: records from every container (streamed, per-record reasons), row shapes to turns,
one role table, tool calls as turns, preference pairs in every shape."""
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftkit import rows
from sftkit.errors import DataError

ROWS = [{"text": "<human>: Q1\n<bot>: A1"}, {"n": 3, "s": "caf\u00e9 [x] {y}, \"z\""}, [1, 2], "a string", 12345]


def read_all(path, **kw):
    return [(n, value, reason) for n, value, reason, _ in rows.records(path, **kw)]


def test_every_container_gives_the_same_records(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    array = tmp_path / "a.json"
    array.write_text(json.dumps(ROWS, indent=2))
    gz_named_json = tmp_path / "b.json"  # gzip is told by its magic bytes, not by the name
    gz_named_json.write_bytes(gzip.compress(json.dumps(ROWS).encode()))
    expected = [(n, r, None) for n, r in enumerate(ROWS, 1)]
    assert read_all(jsonl) == expected
    assert read_all(array) == expected
    assert read_all(gz_named_json) == expected
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": f"t{i}"} for i in range(5000)]), parquet)
    assert [v for _, v, _ in read_all(parquet, batch_rows=700)] == [{"text": f"t{i}"} for i in range(5000)]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_a_json_array_is_read_element_by_element_across_any_chunking(tmp_path, chunk):
    records = ROWS + [{"long": "x" * 300, "nested": {"a": [1, {"b": "]},["}]}}, 3.25e10, True, None, -0.5]
    path = tmp_path / "a.json"
    path.write_text(" \n[ " + " ,\n ".join(json.dumps(r) for r in records) + "\n]\n")
    with open(path, "rb") as fh:
        got = [(n, v, reason) for n, v, reason, _ in rows._ArrayReader(fh, path, chunk_chars=chunk).records()]
    assert got == [(n, r, None) for n, r in enumerate(records, 1)]


def test_bad_records_are_reasons_in_every_container_never_exceptions(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    good = json.dumps({"text": "ok"}).encode()
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b"\n".join([good, b'{"text": "caf\xe9"}', b"{oops", deep.encode(), good]) + b"\n")
    assert [(n, reason) for n, _, reason in read_all(jsonl)] == [
        (1, None), (2, "invalid_utf8"), (3, "bad_json"), (4, "too_deep"), (5, None)]
    array = tmp_path / "bad.json"
    array.write_bytes(b"[" + b",\n".join([good, b'{"text": "caf\xe9"}', b'{"text": oops, "x": [1, "]"]}',
                                          deep.encode(), good]) + b"]")
    found = list(rows.records(array))
    assert [(n, reason) for n, _, reason, _ in found] == [
        (1, None), (2, "invalid_utf8"), (3, "bad_json"), (4, "too_deep"), (5, None)]
    assert found[1][3] == '{"text": "caf\ufffd"}' and found[2][3].startswith('{"text": oops')


def test_files_that_cannot_be_read_at_all_are_clear_errors(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"input": 1},\n{"input": 2}')
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 2 \(the list never closes\)"):
        list(rows.records(broken))
    pretty = tmp_path / "one.json"
    pretty.write_text(json.dumps({"input": "x", "source": "y"}, indent=2))
    with pytest.raises(DataError, match=r"one.json: expected a list of rows .* keys \['input', 'source'\]"):
        list(rows.records(pretty))
    damaged = tmp_path / "d.parquet"
    damaged.write_bytes(b"PAR1" + b"\0" * 64)
    with pytest.raises(DataError, match="d.parquet: cannot read parquet"):
        list(rows.records(damaged))
