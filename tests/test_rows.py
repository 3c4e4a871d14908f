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
        (1, None), (2, "invalid_utf8"), (3, "bad_json"), (4, "nested_too_deep"), (5, None)]
    array = tmp_path / "bad.json"
    array.write_bytes(b"[" + b",\n".join([good, b'{"text": "caf\xe9"}', b'{"text": oops, "x": [1, "]"]}',
                                          deep.encode(), good, b'"\\udfff"', b'[' * 600 + b']' * 600]) + b"]")
    found = list(rows.records(array))
    assert [(n, reason) for n, _, reason, _ in found] == [
        (1, None), (2, "invalid_utf8"), (3, "bad_json"), (4, "nested_too_deep"), (5, None), (6, "lone_surrogate"),
        (7, "nested_too_deep")]
    assert found[1][3] == '{"text": "caf\ufffd"}' and found[2][3].startswith('{"text": oops')
    assert found[3][3].startswith("[[[") and len(found[3][3]) == 200


@pytest.mark.parametrize("text", ['[{"a": 1}', '[{"a": 1} {"b": 2}]', '[{"a": 1}] x', '[{"a": 1},]'])
def test_what_is_not_one_json_list_is_an_error_naming_the_line(tmp_path, text):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 1 \("):
        list(rows.records(path))


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


# ---------------------------------------------------------------- shapes and the role table

HB = "<human>: Hi there\n<bot>: Hello!\n<human>: Name?\n<bot>: Bot."
EXPECTED = [("human", "Hi there"), ("bot", "Hello!"), ("human", "Name?"), ("bot", "Bot.")]


def turns_of(record, **kw):
    found = rows.conversation(record, rows.shape_of(record), **kw)
    assert isinstance(found, rows.Conversation), found
    return found.turns


@pytest.mark.parametrize("record", [
    {"input": HB, "prompt_type": "human_bot", "source": "x", "id": 1},  # h2oGPT / finalize output
    {"text": HB, "metadata": {"source": "oig"}},  # OIG
    {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Name?"}, {"role": "assistant", "content": "Bot."}]},
    {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"},
                       {"from": "human", "value": "Name?"}, {"from": "gpt", "value": "Bot."}]},
    {"messages": [{"from": "prompter", "value": "Hi there"}, {"from": "assistant", "value": "Hello!"},
                  {"from": "Human", "value": "Name?"}, {"from": "bing", "value": "Bot."}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                  {"role": "model", "content": "Hello!"}, {"role": "person", "content": "Name?"},
                  {"role": "chatbot", "content": "Bot."}]},
    {"prompt": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Name?"}], "completion": "Bot."},  # TRL prompt-completion
    {"prompt": "<human>: Hi there\n<bot>: Hello!\n<human>: Name?", "chosen": "Bot.", "rejected": "No."},  # a pair
])
def test_every_shape_gives_the_same_turns_through_one_role_table(record):
    assert turns_of(record) == EXPECTED


def test_every_role_spelling_is_one_role():
    assert {rows.role_of(name) for name in ("human", "user", "prompter", "person", "Human ")} == {"human"}
    assert {rows.role_of(name) for name in ("bot", "assistant", "gpt", "model", "chatgpt", "bard")} == {"bot"}
    assert rows.role_of("function_call") == "tool_call"
    assert {rows.role_of(name) for name in ("tool", "observation", "function", "ipython")} == {"tool"}
    assert rows.role_of("alien") is None and rows.role_of(3) is None


def test_alpaca_keeps_its_input_as_its_own_turn_and_its_system():
    assert turns_of({"instruction": "Translate", "input": "chat", "output": "cat", "system": "Be exact."}) == [
        ("system", "Be exact."), ("human", "Translate"), ("input", "chat"), ("bot", "cat")]
    assert turns_of({"instruction": "Say hi", "input": "", "output": "hi"}) == [("human", "Say hi"), ("bot", "hi")]
    assert turns_of({"instruction": "Say hi"}, need_answer=False) == [("human", "Say hi")]
    assert rows.conversation({"instruction": "Say hi"}, "alpaca") == "missing_output"


@pytest.mark.parametrize("record, reason", [
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "function_call", "value": "not json"}]},
     "bad_tool_call"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "A",
                                                        "tool_calls": [{"function": {"name": "f"}}]}]},
     "bad_tool_call"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "tools": "[oops"},
     "bad_tools"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None}]}, "bad_turn"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "tool", "content": "42"}]}, "no_bot_turn"),
])
def test_malformed_tool_rows_name_their_reason(record, reason):
    assert rows.conversation(record, rows.shape_of(record)) == reason


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_openai_and_sharegpt_tool_files_read_as_the_same_conversations():
    def read(name):
        return [c for u in rows.read(ROOT / "data/formats" / name) for c in u.conversations]

    openai, sharegpt = read("openai_tools.jsonl"), read("sharegpt_tools.json")[::-1]  # written in reverse order
    assert len(openai) == len(sharegpt) == 8
    for a, b in zip(openai, sharegpt):
        assert [t for t in a.turns if t[0] in ("human", "tool_call", "bot")] == [
            t for t in b.turns if t[0] in ("human", "tool_call", "bot")]
        assert a.tools == b.tools and a.tools[0]["type"] == "function"
    assert openai[0].turns[1:] == sharegpt[0].turns[1:]  # one call: the same turns
    assert [role for role, _ in openai[3].turns] == ["system", "human", "tool_call", "tool_call", "tool", "tool", "bot"]
    assert [role for role, _ in sharegpt[3].turns] == ["system", "human", "tool_call", "tool_call", "tool", "bot"]
    assert openai[3].turns[2][1] == '{"name": "local_time", "arguments": {"city": "Tokyo"}}'


def test_format_samples_are_what_their_script_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", ROOT / "data" / "build_format_samples.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    for name, text in builder.files().items():
        assert (ROOT / "data" / "formats" / name).read_text(encoding="utf-8") == text


# ---------------------------------------------------------------- every wing, one behaviour

CONVERSATION_FILES = ["data/formats/sharegpt_sample.json", "data/formats/h2ogpt_sample.json",
                      "data/formats/oasst_sample_messages.parquet", "data/formats/oig_other_speakers.jsonl",
                      "data/formats/openai_tools.jsonl", "data/formats/sharegpt_tools.json",
                      "data/sample/oasst_sample_trees.jsonl.gz", "data/sample/sharegpt_sample.jsonl.gz",
                      "data/sample/alpaca_sample.jsonl.gz", "data/sample/messages_sample.jsonl.gz",
                      "data/sample/unified_sample_dialog.jsonl.gz"]
PAIR_FILES = ["data/formats/sharegpt_ranking.json", "data/formats/hh_rlhf_pairs.jsonl",
              "data/formats/alpaca_ranking.json", "data/preference_sample.json", "data/sample/oasst_sample_trees.jsonl.gz"]


@pytest.mark.parametrize("name", CONVERSATION_FILES + PAIR_FILES)
def test_every_wing_reads_every_format(name):
    from sftkit.generation.batch import read_prompts
    from sftkit.train.data import load_conversations
    from sftkit.train.preference import load_pairs

    path = str(ROOT / name)
    conversations, stats = load_conversations(path)
    assert conversations and stats.rows
    assert read_prompts(path)
    if name in PAIR_FILES:
        pairs, _ = load_pairs(path)
        assert pairs and all(p.prompt[-1][0] == "human" and p.chosen != p.rejected for p in pairs)


def test_prompter_is_read_by_every_wing(tmp_path):
    """OpenAssistant's role name: the data stages and preference training took it, SFT refused it."""
    from sftkit.data.inputs import formats
    from sftkit.generation.batch import read_prompts
    from sftkit.train.data import load_conversations
    from sftkit.train.preference import load_pairs

    conversation = [{"from": "prompter", "value": "Who are you?"}, {"from": "assistant", "value": "Kestrel."}]
    path = tmp_path / "prompter.jsonl"
    path.write_text(json.dumps({"conversations": conversation}) + "\n" +
                    json.dumps({"messages": [{"role": "prompter", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n")
    data_stage = [u.texts for u in formats.read_units(path, "p", formats.FileFormat("sharegpt"), formats.ReadOptions())]
    assert data_stage[0] == ["<human>: Who are you?\n<bot>: Kestrel."]
    assert [c.turns for c in load_conversations(str(path))[0]] == [
        [("human", "Who are you?"), ("bot", "Kestrel.")], [("human", "Hi"), ("bot", "Hello.")]]
    assert [p.turns for p in read_prompts(path)] == [[("human", "Who are you?")], [("human", "Hi")]]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": [{"role": "prompter", "content": "Who are you?"}], "chosen": "Kestrel.",
                                 "rejected": "Nobody."}) + "\n")
    assert load_pairs(str(pairs))[0][0].prompt == [("human", "Who are you?")]


@pytest.fixture
def fixed_clock(monkeypatch):
    from sftkit import prompts

    monkeypatch.setattr(prompts, "_stamp", lambda: ("2023-05-25", "20:30:33 PM UTC"))


def eval_and_training_prompts(tokenizer, path, prompt_type):
    """The prompt batch mode renders for each row of ``path``, and the text training rendered up to its answer."""
    from sftkit.generation import GenerateConfig
    from sftkit.generation.batch import read_prompts
    from sftkit.generation.prompting import fit_prompt
    from sftkit.train.data import load_conversations
    from sftkit.train.tokenize import tokenize_all

    config = GenerateConfig(prompt_type=prompt_type, max_new_tokens=16)
    evaluated = [fit_prompt(tokenizer, p.turns, config, 4096, p.tools).text for p in read_prompts(path)]
    conversations, _ = load_conversations(str(path), prompt_type=prompt_type)
    trained = [e.prompt for e in tokenize_all(conversations, tokenizer, prompt_type, 4096, progress=False).examples]
    return evaluated, trained


@pytest.mark.parametrize("prompt_type", sorted(__import__("sftkit.prompts").prompts.PROMPT_TYPES))
def test_an_alpaca_rows_eval_prompt_is_the_prompt_training_rendered(tiny_llama, tmp_path, fixed_clock, prompt_type):
    from sftkit.models import load_tokenizer

    path = tmp_path / "alpaca.jsonl"
    path.write_text(json.dumps({"instruction": "Translate to French.", "input": "The cat sleeps.",
                                "output": "Le chat dort."}) + "\n" +
                    json.dumps({"instruction": "Name a colour.", "input": "", "output": "Blue."}) + "\n")
    evaluated, trained = eval_and_training_prompts(load_tokenizer(tiny_llama), path, prompt_type)
    assert evaluated == trained
    assert "The cat sleeps." in evaluated[0]


@pytest.mark.parametrize("prompt_type", ["human_bot", "instruct", "open_assistant", "chat"])
def test_a_multi_turn_eval_prompt_is_its_history_and_final_question(tiny_llama, tmp_path, prompt_type):
    from sftkit.models import load_tokenizer

    turns = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "What is the capital of France?"},
             {"from": "gpt", "value": "Paris."}, {"from": "human", "value": "And of Italy?"},
             {"from": "gpt", "value": "Rome."}]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([{"conversations": turns}]))
    evaluated, trained = eval_and_training_prompts(load_tokenizer(tiny_llama), path, prompt_type)
    assert evaluated == trained
    assert "Paris." in evaluated[0] and "And of Italy?" in evaluated[0] and "Rome" not in evaluated[0]
