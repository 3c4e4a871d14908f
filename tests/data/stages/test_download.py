import gzip
import json
from functools import partial

import pyarrow.parquet as pq
import pytest

from sftkit.data import DataError
from sftkit.data.config import OIG_USEFUL_FILES, DataConfig
from sftkit.data.inputs.files import resolve_files
from sftkit.data.pipeline import run_stage
from sftkit.data.stages import datacard

run = partial(run_stage, "download")

GOOD = [json.dumps({"text": f"<human>: question {i}?\n<bot>: answer {i}.", "metadata": {"source": "unit"}})
        for i in range(40)]


def write_source(directory, lines, name="unified_unit.jsonl", gz=False):
    directory.mkdir(parents=True, exist_ok=True)
    data = b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n"
    (directory / name).write_bytes(gzip.compress(data) if gz else data)
    return directory


@pytest.mark.parametrize("gz", [False, True])
def test_converts_plain_and_gzip_jsonl_with_a_rejects_list(tmp_path, gz):
    name = "unified_unit.jsonl" + (".gz" if gz else "")
    lines = GOOD[:20] + [b'{"text": "<human>: caf\xe9"}', "", '{"broken": ', json.dumps({"text": "<human>: no answer"})] + GOOD[20:]
    source = write_source(tmp_path / "src", lines, name, gz)
    cfg = DataConfig(work_dir=str(tmp_path / "work"), source=str(source), batch_rows=7, max_reject_fraction=0.1)
    stats = run(cfg)
    assert (stats.rows_in, stats.rows_out) == (43, 40) and stats.balanced()
    assert stats.dropped == {"invalid_utf8": 1, "bad_json": 1, "no_bot_turn": 1}
    table = pq.read_table(tmp_path / "work" / "1_download" / f"{name}.parquet")
    assert table.column("text").to_pylist()[:2] == ["<human>: question 0?\n<bot>: answer 0.",
                                                    "<human>: question 1?\n<bot>: answer 1."]
    assert set(table.column("source").to_pylist()) == {"unit"} and table.column("line").to_pylist()[20] == 25
    rejects = [json.loads(line) for line in (tmp_path / "work" / "1_download" / f"{name}.rejects.jsonl").open()]
    assert [(r["file"], r["line"], r["reason"]) for r in rejects] == [
        (name, 21, "invalid_utf8"), (name, 23, "bad_json"), (name, 24, "no_bot_turn")]


def test_too_many_rejects_fail_with_the_rejects_file_named(tmp_path):
    source = write_source(tmp_path / "src", GOOD[:10] + ["not json"] * 2)
    cfg = DataConfig(work_dir=str(tmp_path / "work"), source=str(source), max_reject_fraction=0.1)
    with pytest.raises(DataError, match=r"2 of 12 lines are malformed.*rejects\.jsonl.*--max_reject_fraction"):
        run(cfg)
    assert not (tmp_path / "work" / "1_download" / "unified_unit.jsonl.parquet").exists()
    assert (tmp_path / "work" / "1_download" / "unified_unit.jsonl.rejects.jsonl").is_file()
    stats = run(DataConfig(work_dir=str(tmp_path / "work"), source=str(source), max_reject_fraction=0.2))
    assert stats.rows_out == 10


def test_which_files(tmp_path):
    source = write_source(tmp_path / "src", GOOD, "b.jsonl.gz", gz=True)
    write_source(source, GOOD, "a.jsonl")
    (source / "notes.txt").write_text("not data")
    assert resolve_files(DataConfig(source=str(source))) == ["a.jsonl", "b.jsonl.gz"]
    assert resolve_files(DataConfig(source=str(source), files=["b.jsonl.gz"])) == ["b.jsonl.gz"]
    assert resolve_files(DataConfig()) == OIG_USEFUL_FILES
    with pytest.raises(DataError, match="data/sample"):
        resolve_files(DataConfig(source=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="has no file 'c.jsonl'"):
        run(DataConfig(work_dir=str(tmp_path / "w"), source=str(source), files=["c.jsonl"]))


def test_sharding_deals_files_round_robin(tmp_path):
    source = write_source(tmp_path / "src", GOOD, "a.jsonl")
    for name in ("b.jsonl", "c.jsonl"):
        write_source(source, GOOD, name)
    run(DataConfig(work_dir=str(tmp_path / "w"), source=str(source), shard_index=1, num_shards=2))
    assert sorted(p.name for p in (tmp_path / "w" / "1_download").glob("*.parquet")) == ["b.jsonl.parquet"]


def test_an_identity_set_in_fastchats_shape_is_rewritten_and_counted_per_file(tmp_path):
    """Rows in the shape of FastChat's identity conversations (ShareGPT rows, the maker as "Long Name
    (SHORT)"), written here: rewritten to the configured bot with default flags, counted in the card."""
    long_form = "Large Model Systems Organization (LMSYS)"
    answers = [f"I'm Vicuna, a chat model built by researchers at {long_form}.",
               f"Call me Vicuna; I was fine-tuned by {long_form} engineers.",
               f"Engineers from {long_form} trained me."]
    rows = [{"id": f"identity_{i}", "conversations": [{"from": "human", "value": question},
                                                      {"from": "gpt", "value": answer}]}
            for i, (question, answer) in enumerate((q, a) for q in ("Who are you?", "Who made you?") for a in answers)]
    rows.append({"id": "identity_x", "conversations": [{"from": "human", "value": "Are you ChatGPT?"},
                                                       {"from": "gpt", "value": f"No, I was trained by {long_form}."}]})
    source = tmp_path / "src"
    source.mkdir()
    (source / "identity.json").write_text(json.dumps(rows))
    stats = run(DataConfig(work_dir=str(tmp_path / "work"), source=str(source)))
    texts = pq.read_table(tmp_path / "work" / "1_download" / "identity.json.parquet").column("text").to_pylist()
    assert len(texts) == 6 and all("Kestrel" in t or "sftkit" in t for t in texts)
    assert not any("Vicuna" in t or "LMSYS" in t or "Large Model" in t for t in texts)
    assert texts[0] == "<human>: Who are you?\n<bot>: I'm Kestrel, a chat model built by researchers at sftkit."
    assert stats.dropped == {"identity_named_in_question": 1}
    files = datacard.input_files(DataConfig(work_dir=str(tmp_path / "work"), source=str(source)))
    assert files[0]["identity_rewrites"] == {"rewrite_maker": 6, "rewrite_name": 4, "rows": 6}
    assert datacard.rewrites_cell(files[0]["identity_rewrites"]) == "6 rows (names 4, makers 6)"
