import json

from sftkit.data.pipeline import STAGES, run
from tests.data.conftest import sample_config


def test_shards_together_give_the_unsharded_result(sample_work, tmp_path):
    for stage in STAGES:  # each stage reads every shard of the one before
        for index in range(2):
            run(stage, sample_config(tmp_path, shard_index=index, num_shards=2))
    sharded = []
    for index in range(2):
        sharded += json.loads((tmp_path / f"oig_instruct_cleaned.part-{index:05d}-of-00002.json").read_text())
    whole = json.loads((sample_work / "oig_instruct_cleaned.json").read_text())
    assert sorted(r["id"] for r in sharded) == sorted(r["id"] for r in whole)
    assert sorted(r["input"] for r in sharded) == sorted(r["input"] for r in whole)
