"""Hostile preference-pair files: every bad row a counted skip with its reason, every bad file a one-line error.

The rows go through the reader that ``finetune.py --stage=rm|dpo`` uses; at the end a DPO run on
a file holding every kind of bad row next to good pairs trains to the end and reports the skips.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftkit.errors import DataError
from sftkit.train.preference import load_pairs

ROOT = Path(__file__).resolve().parents[2]
GOOD = [{"prompt": f"Name a colour number {i}.", "chosen": f"Blue is colour number {i}.", "rejected": "No."}
        for i in range(12)]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# name -> (hostile JSONL line, the reason it is skipped for)
BAD_ROWS = {
    "deep_nesting": (nested(100_000), "nested_too_deep"),
    "deep_nesting_inside_a_row": ('{"prompt": "Q", "chosen": "A", "rejected": "B", "meta": ' + nested(5_000) + "}",
                                  "nested_too_deep"),
    "lone_surrogate": ('{"prompt": "a\\ud800b", "chosen": "Yes.", "rejected": "No."}', "lone_surrogate"),
    "invalid_utf8": (b'{"prompt": "caf\xe9", "chosen": "Yes.", "rejected": "No."}', "invalid_utf8"),
    "nul_bytes": (b"\x00\x00\x00", "bad_json"),
    "a_list_not_a_row": ("[1, 2]", "not_an_object"),
    "answer_of_the_wrong_type": ('{"prompt": "Q", "chosen": 5, "rejected": "No."}', "no_turns"),
    "prompt_of_the_wrong_type": ('{"prompt": {"a": 1}, "chosen": "Yes.", "rejected": "No."}', "bad_turn"),
}
# name -> (file name, content, what the one-line error says)
BAD_FILES = {
    "empty": ("empty.jsonl", b"", "the dataset is empty"),
    "one_object_over_many_lines": ("object.json", json.dumps(GOOD[0], indent=2).encode(), "one JSON object"),
    "truncated_json_list": ("cut.json", json.dumps(GOOD).encode()[:-30], "invalid JSON at line"),
    "nothing_usable": ("junk.jsonl", b"\n".join([b"junk"] * 5), "no usable preference pairs"),
}


def jsonl(*extra) -> bytes:
    lines = [json.dumps(r).encode() for r in GOOD] + [e if isinstance(e, bytes) else e.encode() for e in extra]
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_row_is_skipped_with_its_reason(tmp_path, case):
    line, reason = BAD_ROWS[case]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl(line))
    pairs, stats = load_pairs(str(path))
    assert len(pairs) == len(GOOD) and stats.skipped == {reason: 1}


@pytest.mark.parametrize("case", ["deep_nesting", "lone_surrogate"])
def test_a_bad_item_of_a_json_list_is_skipped_alone(tmp_path, case):
    line, reason = BAD_ROWS[case]
    path = tmp_path / "pairs.json"
    path.write_text("[" + ", ".join([json.dumps(r) for r in GOOD] + [line]) + "]")
    pairs, stats = load_pairs(str(path))
    assert len(pairs) == len(GOOD) and stats.skipped == {reason: 1}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_a_one_line_error(tmp_path, case):
    name, content, says = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as failed:
        load_pairs(str(path))
    assert says in str(failed.value) and "\n" not in str(failed.value)


@pytest.mark.slow
def test_dpo_trains_past_every_bad_row_and_reports_them(tiny_llama, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_bytes(jsonl(*(line for line, _ in BAD_ROWS.values())))
    done = subprocess.run([sys.executable, "finetune.py", "--stage=dpo", f"--base_model={tiny_llama}",
                           f"--data_path={data}", f"--output_dir={tmp_path / 'out'}", "--max_steps=1",
                           "--batch_size=2", "--micro_batch_size=2", "--cutoff_len=64", "--val_set_size=0",
                           "--report_to=none"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    skipped = json.loads((tmp_path / "out" / "metrics.json").read_text())["data"]["rows_skipped"]
    expected: dict = {}
    for _, reason in BAD_ROWS.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert skipped == expected
