import json

import pytest

from sftkit.data.pipeline import STAGES, run
from sftkit.errors import FlagError
from tests.data.conftest import sample_config

STAGE_FILES = ["oig_instruct_cleaned.json", "oig_instruct_cleaned.card.json", "oig_instruct_cleaned.card.md"]


def summaries(stats):
    return [s.summary_line() for s in stats]


def test_shards_run_by_hand_then_finalize_give_the_unsharded_result(sample_work, tmp_path):
    for stage in list(STAGES)[:-1]:  # each stage reads every shard of the one before
        for index in range(2):
            run(stage, sample_config(tmp_path, shard_index=index, num_shards=2))
    with pytest.raises(FlagError, match="finalize runs once over every shard's output"):
        run("finalize", sample_config(tmp_path, shard_index=1, num_shards=2))
    run("finalize", sample_config(tmp_path, num_shards=2))
    for name in STAGE_FILES:
        assert (tmp_path / name).read_bytes() == (sample_work / name).read_bytes(), name


def test_any_number_of_shards_gives_the_same_bytes_and_counts(sample_work, tmp_path, capsys):
    whole = run("all", sample_config(tmp_path / "one"))
    sharded = run("all", sample_config(tmp_path / "three", num_shards=3))
    assert summaries(sharded) == summaries(whole)
    for name in STAGE_FILES:
        assert (tmp_path / "three" / name).read_bytes() == (sample_work / name).read_bytes(), name
    capsys.readouterr()
    run("all", sample_config(tmp_path / "three", num_shards=3))
    printed = capsys.readouterr().out
    for stage in ("detox", "chop", "grade"):
        assert f"[{stage}] reused 3 of 3 finished shard(s): 0, 1, 2" in printed


def test_stage_output_order_is_part_of_the_cache_key(sample_work, tmp_path, capsys):
    """finalize's order depends on shuffle_bucket_rows: changing it must not reuse the old output."""
    import shutil

    for stage in ("1_download", "2_detox", "3_chop", "4_grade"):
        shutil.copytree(sample_work / stage, tmp_path / stage)
    run("finalize", sample_config(tmp_path))
    before = json.loads((tmp_path / "oig_instruct_cleaned.json").read_text())
    capsys.readouterr()
    run("finalize", sample_config(tmp_path, shuffle_bucket_rows=40))
    assert "[finalize] running again: settings changed: shuffle_bucket_rows" in capsys.readouterr().out
    after = json.loads((tmp_path / "oig_instruct_cleaned.json").read_text())
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in before)
    assert [r["id"] for r in after] != [r["id"] for r in before]
