"""Hostile input files for the data stages: every one a counted reject or a one-line error, never a dead stage.

Each case is one input file holding good records and one hostile record (or a file that is hostile
as a whole). A reject case must leave the download stage finished, the bad record in
``<file>.rejects.jsonl`` with its reason, and every good record kept; an error case must fail
with one line naming the file and the fix, after which the same work dir takes the good file.
At the end the whole pipeline runs to finalize over every reject case at once.
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sftkit.data import DataError
from sftkit.data.config import DataConfig
from sftkit.data.pipeline import run

ROOT = Path(__file__).resolve().parents[2]
GOOD = [{"text": f"<human>: What is the capital of country number {i}?\n<bot>: The capital of country number {i} "
                 f"is a pleasant city with many parks and a long history of trade."} for i in range(40)]


def lines(*hostile: str | bytes) -> bytes:
    """JSONL: the good records, then the hostile lines."""
    out = [json.dumps(r).encode() for r in GOOD] + [h if isinstance(h, bytes) else h.encode() for h in hostile]
    return b"\n".join(out) + b"\n"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def oasst_chain(levels: int, tree: str) -> str:
    """An OpenAssistant export line whose tree is one chain of ``levels`` messages (written as text: the
    JSON is nested two levels per message, deeper than a recursive writer goes)."""
    head = ""
    for i in range(levels):
        role = "prompter" if i % 2 == 0 else "assistant"
        head += (f'{{"message_id": "{tree}-{i}", "role": "{role}", "text": "Turn {i} of a conversation about '
                 f'gardens and the plants that grow in them.", "lang": "en", "replies": [')
    return (f'{{"message_tree_id": "{tree}", "tree_state": "ready_for_export", "prompt": '
            + head + "]}" * levels + "}")


def oasst_messages_chain(levels: int, tree: str) -> list[str]:
    """The same chain as rows of the flat oasst1 message table."""
    return [json.dumps({"message_id": f"{tree}-{i}", "parent_id": f"{tree}-{i - 1}" if i else None,
                        "message_tree_id": tree, "role": "prompter" if i % 2 == 0 else "assistant",
                        "text": f"Message {i} of a long talk about rivers and the towns along them.", "lang": "en"})
            for i in range(levels)]


# name -> (file name, content, expected reason of the one reject)
REJECTS = {
    "deep_array_line": ("deep_array.jsonl", lines(nested(100_000)), "nested_too_deep"),
    "deep_object_line": ("deep_object.jsonl", lines(deep_object(50_000)), "nested_too_deep"),
    "deep_item_in_a_json_list": ("deep_list.json", ("[" + ", ".join([json.dumps(r) for r in GOOD] + [nested(100_000)])
                                                   + "]").encode(), "nested_too_deep"),
    "oasst_tree_2000_levels": ("trees.jsonl", "\n".join([oasst_chain(2, f"t{i}") for i in range(40)]
                                                          + [oasst_chain(2000, "deep")]).encode() + b"\n",
                               "nested_too_deep"),
    "invalid_utf8": ("bad_utf8.jsonl", lines(b'{"text": "<human>: caf\xe9?\\n<bot>: Un caf\xe9."}'), "invalid_utf8"),
    "lone_surrogate_in_text": ("surrogate.jsonl", lines('{"text": "<human>: a\\ud800b?\\n<bot>: An answer."}'),
                               "lone_surrogate"),
    "lone_low_surrogate_in_metadata": ("surrogate_source.jsonl", lines(
        '{"text": "<human>: Hi?\\n<bot>: Hello.", "metadata": {"source": "x\\udc00"}}'), "lone_surrogate"),
    "lone_surrogate_in_a_json_list": ("surrogate_list.json", ("[" + ", ".join(
        [json.dumps(r) for r in GOOD] + ['{"text": "<human>: \\udfff?\\n<bot>: An answer."}']) + "]").encode(),
        "lone_surrogate"),
    "nul_bytes_line": ("nul.jsonl", lines(b"\x00\x00\x00\x00"), "bad_json"),
    "huge_garbage_line": ("huge_garbage.jsonl", lines(b"x" * 8_000_000), "bad_json"),
    "text_of_the_wrong_type": ("wrong_type.jsonl", lines(json.dumps({"text": 5})), "missing_text"),
    "a_list_instead_of_an_object": ("list_line.jsonl", lines("[1, 2, 3]"), "not_an_object"),
    "gzip_member_with_a_bad_line": ("bad.jsonl.gz", gzip.compress(lines("{not json")), "bad_json"),
}
# name -> (file name, content, rows): files that are fine, however odd
ACCEPTED = {
    "nul_inside_a_string": ("nul_in_text.jsonl", lines('{"text": "<human>: a\\u0000b?\\n<bot>: An answer with a '
                                                       'NUL in its question."}'), 41),
    "huge_valid_line": ("huge.jsonl", lines(json.dumps({"text": "<human>: Say a lot.\n<bot>: "
                                                                 + "Word. " * 1_500_000})), 41),
    # a tree 2,000 messages deep as a flat table: built and walked without recursion, one conversation
    "oasst_message_table_2000_deep": ("messages.jsonl", "\n".join(oasst_messages_chain(2000, "m")).encode() + b"\n", 1),
}
# name -> (file name, content, what the one-line error says)
ERRORS = {
    "one_object_over_many_lines": ("object.json", json.dumps(GOOD[0], indent=2).encode(), "one JSON object"),
    "truncated_json_list": ("cut.json", ("[" + ", ".join(json.dumps(r) for r in GOOD))[:-20].encode(),
                            "does not parse as one"),
    "mostly_malformed": ("junk.jsonl", b"\n".join([b"junk"] * 10 + [json.dumps(GOOD[0]).encode()]) + b"\n",
                         "--max_reject_fraction"),
    "truncated_gzip": ("cut.jsonl.gz", gzip.compress(lines())[:200], "cannot read"),
    "unknown_format": ("unknown.jsonl", b'{"question": "Q?", "answer": "A."}\n' * 5, "--input_format"),
}


def source_with(directory: Path, name: str, content: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(content)
    return directory


@pytest.mark.parametrize("case", sorted(REJECTS))
def test_a_hostile_record_is_a_counted_reject_and_the_stage_finishes(tmp_path, case):
    name, content, reason = REJECTS[case]
    source = source_with(tmp_path / "src", name, content)
    stats, = run("download", DataConfig(work_dir=str(tmp_path / "work"), source=str(source)))
    assert dict(stats.dropped) == {reason: 1} and stats.rows_out == 40 and stats.balanced()
    out = tmp_path / "work" / "1_download"
    rejects = [json.loads(line) for line in (out / f"{name}.rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == [reason] and len(rejects[0]["excerpt"]) <= 200
    assert pq.read_table(out / f"{name}.parquet").num_rows == 40


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_odd_but_valid_records_are_kept(tmp_path, case):
    name, content, rows = ACCEPTED[case]
    source = source_with(tmp_path / "src", name, content)
    stats, = run("download", DataConfig(work_dir=str(tmp_path / "work"), source=str(source)))
    assert not stats.dropped and stats.rows_out == rows


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_a_hostile_file_is_a_one_line_error_and_the_work_dir_stays_usable(tmp_path, case):
    name, content, says = ERRORS[case]
    source = source_with(tmp_path / "src", name, content)
    work = tmp_path / "work"
    with pytest.raises(DataError) as failed:
        run("download", DataConfig(work_dir=str(work), source=str(source)))
    assert says in str(failed.value) and name in str(failed.value) and "\n" not in str(failed.value)
    source_with(source, "good.jsonl", lines())
    stats, = run("download", DataConfig(work_dir=str(work), source=str(source), files=["good.jsonl"]))
    assert stats.rows_out == 40


def test_the_command_line_reports_a_hostile_file_in_one_line(tmp_path):
    source = source_with(tmp_path / "src", "object.json", json.dumps(GOOD[0], indent=2).encode())
    done = subprocess.run([sys.executable, "create_data.py", "download", f"--source={source}",
                           f"--work_dir={tmp_path / 'work'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    reported = [line for line in done.stderr.splitlines() if line.startswith("create_data.py")]  # not progress bars
    assert len(reported) == 1 and "one JSON object" in reported[0]


def test_every_stage_finishes_over_all_the_hostile_records_at_once(tmp_path):
    source = tmp_path / "src"
    for name, content, _ in REJECTS.values():
        source_with(source, name, content)
    for name, content, _ in ACCEPTED.values():
        source_with(source, name, content)
    # the good rows are templated (near duplicates of each other, low reading grade): keep them
    stats = run("all", DataConfig(work_dir=str(tmp_path / "work"), source=str(source), min_grade=0,
                                  near_dup_threshold=1.0))
    assert [s.stage for s in stats] == ["download", "detox", "chop", "grade", "finalize"]
    assert stats[0].dropped["nested_too_deep"] == 4 and stats[0].dropped["lone_surrogate"] == 3
    card = json.loads((tmp_path / "work" / "oig_instruct_cleaned.card.json").read_text())
    assert card["rows"] > 0 and {f["file"] for f in card["inputs"]} == set(sorted(p.name for p in source.iterdir()))
