import shutil
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftkit.data import DataError
from sftkit.data.algorithms.splitting import split_conversation
from sftkit.data.pipeline import run_stage
from sftkit.prompts import split_turns
from tests.data.conftest import sample_config

run, download = partial(run_stage, "detox"), partial(run_stage, "download")


@pytest.fixture
def downloaded(tmp_path):
    download(sample_config(tmp_path))
    return tmp_path


def test_detox_splits_dedups_scores_and_filters(downloaded, capsys):
    stats = run(sample_config(downloaded))
    assert stats.balanced() and stats.added["split"] > 0
    assert stats.dropped["duplicate"] > 0 and stats.dropped["profanity"] > 0
    out = pq.read_table(downloaded / "2_detox" / "part-00000-of-00001.parquet")
    scored = pq.read_table(downloaded / "2_detox" / "scored" / "part-00000-of-00001.parquet")
    assert out.num_rows == stats.rows_out and scored.num_rows == out.num_rows + stats.dropped["profanity"]
    assert len(set(out.column("id").to_pylist())) == out.num_rows
    assert (out.column("profanity_prob").to_numpy() < 0.25).all()
    assert (scored.column("profanity_prob").to_numpy() >= 0.25).sum() == stats.dropped["profanity"]
    for text in out.column("text").to_pylist():
        turns = split_turns(text)
        assert len(text) <= 2048 and turns[0][0] == "human" and turns[-1][0] == "bot"

    capsys.readouterr()
    looser = run(sample_config(downloaded, profanity_threshold=0.99))
    printed = capsys.readouterr().out
    assert "[detox/score] up to date" in printed and "[detox/filter] running again: settings changed: " \
                                                      "profanity_threshold" in printed
    assert looser.rows_out > stats.rows_out


def test_parallel_workers_give_the_same_rows(downloaded, tmp_path_factory):
    run(sample_config(downloaded))
    parallel = tmp_path_factory.mktemp("parallel")
    shutil.copytree(downloaded / "1_download", parallel / "1_download")
    stats = run(sample_config(parallel, workers=2, batch_rows=64))
    one = pq.read_table(downloaded / "2_detox" / "part-00000-of-00001.parquet")
    two = pq.read_table(parallel / "2_detox" / "part-00000-of-00001.parquet")
    assert two.equals(one) and stats.balanced()


def test_detoxify_scores_are_kept_and_thresholded(downloaded, tiny_detoxify):
    checkpoint, config_dir = tiny_detoxify
    cfg = sample_config(downloaded, detoxify=True, detoxify_checkpoint=str(checkpoint),
                        detoxify_config_path=str(config_dir), detoxify_threshold=0.97, device="cpu")
    stats = run(cfg)
    scored = pq.read_table(downloaded / "2_detox" / "scored" / "part-00000-of-00001.parquet")
    heads = [n for n in scored.column_names if n.startswith("detoxify_")]
    assert heads == ["detoxify_toxicity", "detoxify_severe_toxicity", "detoxify_obscene", "detoxify_threat",
                     "detoxify_insult", "detoxify_identity_attack"]
    over = np.zeros(scored.num_rows, bool)
    for head in heads:
        over |= scored.column(head).to_numpy() >= 0.97
    over &= scored.column("profanity_prob").to_numpy() < 0.25
    assert stats.dropped["detoxify"] == over.sum() > 0
    out = pq.read_table(downloaded / "2_detox" / "part-00000-of-00001.parquet")
    assert out.num_rows > 0 and all((out.column(h).to_numpy() < 0.97).all() for h in heads)


def test_detoxify_without_weights_stops_before_writing(downloaded):
    cfg = sample_config(downloaded, detoxify=True, detoxify_checkpoint=str(downloaded / "none.ckpt"))
    with pytest.raises(DataError, match="no such file"):
        run(cfg)
    assert not (downloaded / "2_detox" / "part-00000-of-00001.parquet").exists()


def test_detox_needs_the_download_first(tmp_path):
    with pytest.raises(DataError, match="run `python create_data.py download` first"):
        run(sample_config(tmp_path))


def test_shards_split_only_their_own_blocks_and_merge_back_to_the_same_rows(downloaded, tmp_path_factory,
                                                                             monkeypatch, capsys):
    import sftkit.data.stages.detox as detox

    run(sample_config(downloaded, batch_rows=16))
    whole = pq.read_table(downloaded / "2_detox" / "part-00000-of-00001.parquet")
    monkeypatch.setattr(detox, "CONVERSATION_BLOCK", 8)  # the sample spread over many blocks
    calls = []
    monkeypatch.setattr(detox, "split_conversation",
                        lambda text, *a: calls.append(text) or split_conversation(text, *a))
    sharded = tmp_path_factory.mktemp("sharded")
    shutil.copytree(downloaded / "1_download", sharded / "1_download")
    stats = run(sample_config(sharded, num_shards=3, batch_rows=16))
    conversations = sum(pq.read_metadata(p).num_rows for p in (downloaded / "1_download").glob("*.parquet"))
    assert len(calls) == conversations  # each conversation split once, by the shard owning its block
    parts = [pq.read_table(sharded / "2_detox" / f"part-0000{i}-of-00003.parquet") for i in range(3)]
    assert all(p.num_rows for p in parts) and stats.balanced()
    assert sum(p.num_rows for p in parts) == whole.num_rows == stats.rows_out
    merged = pa.concat_tables(parts)
    assert sorted(merged.column("id").to_pylist()) == sorted(whole.column("id").to_pylist())
    for i, part in enumerate(parts):  # each part keeps the input's order
        order = {row_id: n for n, row_id in enumerate(whole.column("id").to_pylist())}
        positions = [order[row_id] for row_id in part.column("id").to_pylist()]
        assert positions == sorted(positions) and all(row_id % 3 == i for row_id in part.column("id").to_pylist())

    by_hand = tmp_path_factory.mktemp("by_hand")
    shutil.copytree(downloaded / "1_download", by_hand / "1_download")
    capsys.readouterr()
    run(sample_config(by_hand, num_shards=3, shard_index=2, batch_rows=16))
    assert "[detox] split part-00000-of-00003 here" in capsys.readouterr().out  # a shard alone splits the others
    for index in (0, 1):
        run(sample_config(by_hand, num_shards=3, shard_index=index, batch_rows=16))
        assert "split part-" not in capsys.readouterr().out  # ... which the next shards reuse
    for i in range(3):
        name = f"part-0000{i}-of-00003.parquet"
        assert pq.read_table(by_hand / "2_detox" / name).equals(parts[i]), name
