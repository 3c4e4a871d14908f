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


def test_tool_conversations_go_through_every_stage_whole_and_train_back_with_their_calls(tmp_path):
    """The bundled tool-calling files through all five stages (filters set to keep short rows): each tool
    conversation is one row whose messages read back, as finetune.py reads them, as the input's turns."""
    import shutil
    from pathlib import Path

    from sftkit import rows
    from sftkit.data.config import DataConfig
    from sftkit.prompts import render_conversation
    from sftkit.train.data import load_conversations

    formats = Path(__file__).resolve().parents[2] / "data" / "formats"
    source = tmp_path / "source"
    source.mkdir()
    for name in ("openai_tools.jsonl", "sharegpt_tools.json"):
        shutil.copy(formats / name, source / name)
    cfg = DataConfig(work_dir=str(tmp_path / "work"), source=str(source), workers=1, short_turn_keep={},
                     min_turn_mean_chars=0, min_grade=-1000, max_grade=1000, personality=False, near_dup_threshold=1)
    run("all", cfg)
    out = tmp_path / "work" / "oig_instruct_cleaned.json"
    written = json.loads(out.read_text())
    originals = {}
    for name in ("openai_tools.jsonl", "sharegpt_tools.json"):
        for unit in rows.read(source / name):
            for conversation in unit.conversations:
                originals[json.dumps(conversation.turns)] = conversation
    tool_rows = [row for row in written if "messages" in row]
    assert len(tool_rows) >= 8 and all(row["prompt_type"] == "human_bot" for row in tool_rows)
    read_back = load_conversations(str(out))[0]
    with_tools = [c for c in read_back if c.tools]
    assert len(with_tools) == len(tool_rows)
    for conversation in with_tools:  # every call and result intact, each conversation whole (never split)
        original = originals[json.dumps(conversation.turns)]
        assert conversation.tools == original.tools and any(role == "tool_call" for role, _ in conversation.turns)
    for row in tool_rows:
        turns = rows.message_turns(row["messages"])
        assert row["input"] == render_conversation(turns, "human_bot", tools=row["tools"])[0]
