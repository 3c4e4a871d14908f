"""create_data.py end to end: the pytest form and the command line, over a local HTTP server."""
import dataclasses
import gzip
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sftkit.data.config import DataConfig
from sftkit.prompts import split_turns
from tests.data.conftest import tiny_detoxify, tiny_reward_model  # noqa: F401  (fixtures)
from tests.data.range_server import RangeServer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
FILES = sorted(p.name for p in SAMPLE.glob("*.jsonl.gz"))
STAGE_TESTS = ["test_download_useful_data_as_parquet", "test_assemble_and_detox", "test_chop_by_lengths",
               "test_grade", "test_finalize_to_json"]


def run(args, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def check_final(work_dir: Path) -> list[dict]:
    """The final JSON is well formed and the data card's counts add up; returns the rows."""
    rows = json.loads((work_dir / "oig_instruct_cleaned.json").read_text())
    assert rows and len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        assert set(row) == {"id", "input", "prompt_type", "source"} and row["prompt_type"] == "human_bot"
        turns = split_turns(row["input"])
        assert turns[0][0] == "human" and turns[-1][0] == "bot" and all(text for _, text in turns)
    card = json.loads((work_dir / "oig_instruct_cleaned.card.json").read_text())
    stages = card["stages"]
    assert card["rows"] == len(rows) == stages[-1]["rows_out"]
    for stage in stages:
        assert stage["rows_in"] + sum(stage["added"].values()) - sum(stage["dropped"].values()) == stage["rows_out"]
    assert all(a["rows_out"] == b["rows_in"] for a, b in zip(stages, stages[1:]))
    assert stages[0]["rows_in"] == sum(1 for f in FILES for line in gzip.open(SAMPLE / f) if line.strip())
    return rows


def scores_of(work_dir: Path, ids: set[str]) -> dict[str, dict]:
    table = pq.read_table(work_dir / "2_detox" / "scored" / "part-00000-of-00001.parquet").to_pylist()
    return {f"{r['id']:016x}": r for r in table if f"{r['id']:016x}" in ids}


@pytest.mark.slow
def test_pytest_form_and_command_line_over_http(tmp_path, tiny_detoxify, tiny_reward_model):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"retry_backoff_s": 0.05, "timeout_s": 10}))
    with RangeServer(SAMPLE, break_once={FILES[0]}) as server:
        env = {"SFTKIT_WORK_DIR": str(tmp_path / "pytest_form"), "SFTKIT_SOURCE": server.url,
               "SFTKIT_FILES": ",".join(FILES), "SFTKIT_CONFIG": str(recipe)}
        for stage_test in STAGE_TESTS:
            result = run(["-m", "pytest", "-s", "-q", "-p", "no:cacheprovider", f"create_data.py::{stage_test}"], env)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "1 passed" in result.stdout
        resumed = [r for r in server.requests if r[0] == FILES[0]]
        assert resumed[0][1:] == (None, 200) and resumed[1][2] == 206 and resumed[1][1].startswith("bytes=")

        checkpoint, config_dir = tiny_detoxify
        full = tmp_path / "full.yaml"
        full.write_text(yaml.safe_dump({
            "retry_backoff_s": 0.05, "detoxify": True, "detoxify_checkpoint": str(checkpoint),
            "detoxify_config_path": str(config_dir), "detoxify_threshold": 0.98, "use_reward_model": True,
            "reward_model": str(tiny_reward_model), "reward_threshold": 0.3, "local_files_only": True,
            "device": "cpu"}))
        result = run(["create_data.py", "all", f"--source={server.url}", f"--files={','.join(FILES)}",
                      f"--work_dir={tmp_path / 'cli_form'}", f"--config={full}"])
        assert result.returncode == 0, result.stdout + result.stderr
    for stage in ("download", "detox", "chop", "grade", "finalize"):
        assert f"[{stage}] rows in" in result.stdout

    plain = check_final(tmp_path / "pytest_form")
    filtered = check_final(tmp_path / "cli_form")
    # The same pipeline with two more filters keeps a subset of the same rows.
    assert {r["id"] for r in filtered} < {r["id"] for r in plain}
    scored = [r for r in filtered if r["source"] != "personality"]  # generated at finalize, not scored
    scores = scores_of(tmp_path / "cli_form", {r["id"] for r in scored})
    assert len(scores) == len(scored)
    for row in scores.values():
        assert row["profanity_prob"] < 0.25
        assert max(v for k, v in row.items() if k.startswith("detoxify_")) < 0.98
    graded = pq.read_table(tmp_path / "cli_form" / "4_grade" / "part-00000-of-00001.parquet")
    assert (graded.column("reward").to_numpy() >= 0.3).all()
    card = json.loads((tmp_path / "cli_form" / "oig_instruct_cleaned.card.json").read_text())
    dropped = {s["stage"]: s["dropped"] for s in card["stages"]}
    assert dropped["detox"]["detoxify"] > 0 and dropped["grade"]["reward_too_low"] > 0


def test_bundled_sample_by_directory_and_rerun_is_reused(tmp_path):
    args = ["create_data.py", "all", "--source=data/sample", f"--work_dir={tmp_path}"]
    first = run(args)
    assert first.returncode == 0, first.stderr
    assert "detoxify: off" in first.stdout and "reward model: off" in first.stdout
    check_final(tmp_path)
    written = (tmp_path / "oig_instruct_cleaned.json").read_bytes()
    second = run(args)
    assert second.returncode == 0 and second.stdout.count("up to date") >= 7
    assert (tmp_path / "oig_instruct_cleaned.json").read_bytes() == written


def test_help_lists_every_flag_with_its_default():
    result = run(["create_data.py", "--help"])
    assert result.returncode == 0
    for field in dataclasses.fields(DataConfig):
        assert f"--{field.name}=" in result.stdout
    assert "[0.25]" in result.stdout and "SFTKIT_WORK_DIR" in result.stdout


def test_command_line_errors_are_one_clear_line(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    offline = run(["create_data.py", "download", f"--source=http://127.0.0.1:{port}/", "--files=x.jsonl",
                   "--retries=1", f"--work_dir={tmp_path}"])
    assert offline.returncode == 2 and "--source=data/sample" in offline.stderr and "Traceback" not in offline.stderr
    unknown = run(["create_data.py", "detox", "--profanity_treshold=0.3"])
    assert unknown.returncode == 2 and "did you mean --profanity_threshold" in unknown.stderr
    assert run(["create_data.py", "polish"]).returncode != 0


def removed_oasst_texts(path: Path) -> list[str]:
    """Texts of deleted or review-rejected messages and of every reply below them."""
    texts, stack = [], [(json.loads(line)["prompt"], False) for line in gzip.open(path) if line.strip()]
    while stack:
        message, gone = stack.pop()
        gone = gone or message["deleted"] or message["review_result"] is False
        if gone:
            texts.append(message["text"])
        stack.extend((reply, gone) for reply in message["replies"])
    return texts


@pytest.mark.slow
def test_every_format_in_one_run_and_in_h2ogpt_stage_order(tmp_path):
    from sftkit.data.config import DEFAULT_OTHER_ASSISTANTS, DEFAULT_OTHER_MAKERS
    from sftkit.data.algorithms.identity import compile_identity

    files = ["oasst_sample_trees.jsonl.gz", "sharegpt_sample.jsonl.gz", "alpaca_sample.jsonl.gz"]
    work = tmp_path / "all"
    result = run(["create_data.py", "all", f"--source={SAMPLE}", f"--files={','.join(files)}", f"--work_dir={work}"])
    assert result.returncode == 0, result.stderr
    rows = json.loads((work / "oig_instruct_cleaned.json").read_text())
    sources = {r["source"] for r in rows}
    assert {"oasst_sample_trees.jsonl.gz:oasst_trees", "sharegpt_sample.jsonl.gz:sharegpt",
            "alpaca_sample.jsonl.gz:alpaca", "personality"} == sources
    oasst_rows = [r["input"] for r in rows if r["source"].endswith(":oasst_trees")]
    assert any(sum(role == "bot" for role, _ in split_turns(text)) >= 2 for text in oasst_rows)  # multi-turn paths
    gone = removed_oasst_texts(SAMPLE / files[0])
    assert gone and not any(text in row["input"] for text in gone for row in rows)
    others = compile_identity("Kestrel", "sftkit", DEFAULT_OTHER_ASSISTANTS, DEFAULT_OTHER_MAKERS)
    answers = [text for row in rows for role, text in split_turns(row["input"]) if role == "bot"]
    assert not any(others.mention.search(answer) for answer in answers)
    assert any("I am Kestrel, a conversational language model created by sftkit." in a for a in answers)

    card = json.loads((work / "oig_instruct_cleaned.card.json").read_text())
    assert set(card["rows_by_source"]) == sources
    inputs = {f["file"]: f for f in card["inputs"]}
    assert set(inputs) == set(files) and inputs[files[0]]["format"] == "oasst_trees"
    assert inputs[files[0]]["dropped"]["oasst_tree_not_exported"] > 0 and inputs[files[2]]["records"] == 22
    card_md = (work / "oig_instruct_cleaned.card.md").read_text()
    assert "near_duplicate" in card_md and "removed deleted=" in card_md and "rewrite_name=" in card_md

    pairs = json.loads((work / "oasst_pairs.json").read_text())
    assert pairs and all(set(p) == {"prompt", "chosen", "rejected", "source"} for p in pairs)
    assert all(m["role"] in ("user", "assistant") and m["content"] for p in pairs for m in p["prompt"])

    # h2oGPT's order: the OIG-style stages first, then the OpenAssistant import, then finalize
    staged = tmp_path / "staged"
    env = {"SFTKIT_WORK_DIR": str(staged), "SFTKIT_SOURCE": str(SAMPLE), "SFTKIT_FILES": ",".join(files[1:])}
    for stage in STAGE_TESTS[:-1]:
        assert run(["-m", "pytest", "-q", "-s", f"create_data.py::{stage}"], env).returncode == 0
    missing = run(["-m", "pytest", "-q", "-s", "create_data.py::test_add_open_assistant"], env)
    assert missing.returncode != 0 and "none of the input files is an OpenAssistant export" in missing.stdout
    env["SFTKIT_FILES"] = ",".join(files)
    for stage in ["test_add_open_assistant", "test_finalize_to_json"]:
        done = run(["-m", "pytest", "-q", "-s", f"create_data.py::{stage}"], env)
        assert done.returncode == 0, done.stdout
    assert json.loads((staged / "oig_instruct_cleaned.json").read_text()) == rows
    assert json.loads((staged / "oasst_pairs.json").read_text()) == pairs
