"""Prompt types: h2oGPT's texts (hand-written golden fixtures), codes, learned stops, stop strings."""
import json
from pathlib import Path

import pytest

from sftkit import prompts
from sftkit.prompts import (PROMPT_TYPES, PromptError, get_prompt_type, render_conversation, render_prompt,
                            render_text, split_turns, stop_strings)

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "h2ogpt_prompts.json").read_text())
H2OGPT_TYPES = list(GOLDEN["types"])
ONE = [("human", "Name a colour."), ("bot", "Blue.")]
TWO = [("human", "Translate to French."), ("input", "cat"), ("bot", "chat")]


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setattr(prompts, "_stamp", lambda: ("2023-05-25", "20:30:33 PM UTC"))


def test_every_h2ogpt_type_is_in_the_table_with_its_enum_code():
    assert H2OGPT_TYPES == GOLDEN["codes"]
    for code, name in enumerate(GOLDEN["codes"]):
        assert get_prompt_type(name).code == code
        assert get_prompt_type(code).name == name and get_prompt_type(str(code)).name == name
    assert set(PROMPT_TYPES) == set(GOLDEN["codes"]) | {"chat"}
    with pytest.raises(PromptError, match=r"unknown prompt_type '14'.*plain \(0\).*wizard_mega \(13\).*chat"):
        get_prompt_type("14")


@pytest.mark.parametrize("name", H2OGPT_TYPES)
def test_training_text_and_prompt_equal_h2ogpts(name):
    golden = GOLDEN["types"][name]
    text, spans = render_conversation(ONE, name)
    assert text == golden["train_one"]
    assert text[spans[-1][0]:].startswith("Blue.")
    assert render_conversation(TWO, name)[0] == golden["train_two"]
    assert render_prompt([], "Name a colour.", name) == golden["prompt_one"]
    assert render_prompt([], "Name a colour.", str(get_prompt_type(name).code)) == golden["prompt_one"]
    text_two, spans_two = render_conversation(TWO, name)
    assert render_prompt([], "Translate to French.", name, input="cat") == text_two[:spans_two[-1][0]]
    if "chat_prompt" in golden:
        assert render_prompt([("human", "Hi."), ("bot", "Hello!")], "Name a colour.", name) == golden["chat_prompt"]


@pytest.mark.parametrize("name", H2OGPT_TYPES)
def test_generation_stops_on_h2ogpts_terminate_strings(name):
    stops = stop_strings(name)
    for term in GOLDEN["types"][name]["terminate"] or []:
        assert (term.strip() or term) in stops


def test_h2ogpt_plain_rows_train_as_written_and_learn_their_stop():
    for case in GOLDEN["plain_rows"]:
        text, spans = render_conversation(split_turns(case["row"]["input"]), "plain", text=case["row"]["input"])
        assert text == case["train"]
        assert [text[a:b] for a, b in spans] == ["I am h2oGPT.\n<human>:"]
    # The same text under human_bot is the same training text: its own markers are kept as written.
    assert render_text(GOLDEN["plain_rows"][0]["train"], "human_bot") == (text, spans)


def test_plain_text_without_markers_is_learned_whole():
    assert render_text("Once upon a time.", "plain") == ("Once upon a time.", [(0, 17)])
    with pytest.raises(PromptError, match="no <human>:/<bot>: markers"):
        render_text("Once upon a time.", "human_bot")


def test_a_trailing_human_turn_with_text_still_learns_the_last_answers_stop():
    text = "<human>: Hi\n<bot>: Hello!\n<human>: And you?"
    _, spans = render_text(text, "plain")
    assert [text[a:b] for a, b in spans] == ["Hello!\n<human>:"]


@pytest.mark.parametrize("name", [n for n in H2OGPT_TYPES if n != "plain"])
def test_multi_turn_answers_learn_the_stop_that_follows_them(name):
    turns = [("human", "Hi."), ("bot", "Hello!"), ("human", "Name a colour."), ("bot", "Blue.")]
    text, spans = render_conversation(turns, name)
    first = text[spans[0][0]:spans[0][1]]
    assert first.startswith("Hello!") and text[spans[1][0]:spans[1][1]] == "Blue."
    # After the first answer comes either a stop (learned with it) or the next prompt's preamble.
    learned_stop = first[len("Hello!"):].strip()
    assert learned_stop in [s.strip() or s for s in stop_strings(name)] + [""]
    if name in ("human_bot", "human_bot_orig", "prompt_answer", "open_assistant", "wizard_lm", "dai_faq"):
        assert first != "Hello!"


@pytest.mark.parametrize("name", [n for n in PROMPT_TYPES if n != "chat"])
def test_generation_prompt_is_the_training_text_up_to_the_answer(name):
    history = [("human", "Hi."), ("bot", "Hello!")]
    text, spans = render_conversation(history + [("human", "Name a colour."), ("bot", "Blue.")], name)
    assert render_prompt(history, "Name a colour.", name) == text[:spans[-1][0]]
    system_text, system_spans = render_conversation([("system", "Be brief.")] + ONE, name)
    assert render_prompt([], "Name a colour.", name, system="Be brief.") == system_text[:system_spans[-1][0]]


def test_every_type_has_a_description_and_an_example():
    for name, spec in PROMPT_TYPES.items():
        assert spec.description
        if name != "chat":
            text, prompt = prompts.example_rendering(name)
            assert text.startswith(prompt) and "I am sftkit's assistant." in text


def test_split_turns_reads_h2ogpt_rows_with_their_trailing_marker():
    assert split_turns("<human>: q\n<bot>: a\n<human>:") == [("human", "q"), ("bot", "a"), ("human", "")]


# ---------------------------------------------------------------- tool calls

CALL = prompts.tool_call_text({"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}})
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOL_TURNS = [("human", "Weather in Oslo?"), ("tool_call", CALL), ("tool", '{"temp_c": 3}'), ("bot", "It is 3 °C in Oslo.")]


def test_tool_calls_have_one_text_whatever_shape_they_came_in():
    assert CALL == '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    assert prompts.tool_call_text('{"name": "get_weather", "arguments": {"city": "Oslo"}}') == CALL  # ShareGPT's text
    assert prompts.tool_call_text({"name": "get_weather", "parameters": {"city": "Oslo"}}) == CALL  # Llama 3.1's
    for bad in ("not json", {"arguments": {}}, {"name": "f", "arguments": "[1]"}, {"name": " "}):
        assert prompts.tool_call_text(bad) is None


def test_h2ogpt_types_write_tools_as_tagged_text_and_learn_the_calls():
    text, spans = render_conversation(TOOL_TURNS, "human_bot", tools=TOOLS)
    assert text == ('<tools>\n{"name": "get_weather", "description": "Weather in a city", "parameters": {"type": '
                    '"object", "properties": {"city": {"type": "string"}}}}\n</tools>\n'
                    '<human>: Weather in Oslo?\n<bot>: <tool_call>\n' + CALL + '\n</tool_call>\n'
                    '<human>: <tool_response>\n{"temp_c": 3}\n</tool_response>\n<bot>:It is 3 °C in Oslo.')
    assert [text[a:b] for a, b in spans] == [f"<tool_call>\n{CALL}\n</tool_call>\n<human>:", "It is 3 °C in Oslo."]
    # The generation prompt after the tool's result is the training text up to the final answer.
    assert prompts.render_open(TOOL_TURNS[:3], "human_bot", tools=TOOLS) == text[:spans[-1][0]]


@pytest.mark.parametrize("name", H2OGPT_TYPES)
def test_every_h2ogpt_type_learns_calls_and_answers_never_results(name):
    text, spans = render_conversation(TOOL_TURNS, name, tools=TOOLS)
    learned = "".join(text[a:b] for a, b in spans)
    assert CALL in learned and "It is 3 °C in Oslo." in learned
    assert '{"temp_c": 3}' not in learned and "Weather in Oslo?" not in learned and "<tools>" not in learned


def test_generated_calls_are_parsed_back():
    said, calls = prompts.parse_tool_calls(f"Let me look.\n<tool_call>\n{CALL}\n</tool_call>", "human_bot")
    assert (said, calls) == ("Let me look.", [{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    assert prompts.parse_tool_calls("<tool_call>\nnot a call\n</tool_call>", "instruct")[1] == []
    assert prompts.parse_tool_calls('{"name": "get_weather", "parameters": {"city": "Oslo"}}', "chat")[1] == [
        {"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert prompts.parse_tool_calls('{"name": "get_weather"}', "human_bot") == ('{"name": "get_weather"}', [])


@pytest.fixture(scope="module")
def tool_tokenizer(tmp_path_factory):
    from tests.tiny_models import TOOL_CHAT_TEMPLATE, build_tokenizer

    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tool_tokenizer"))
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    return tokenizer


def test_chat_renders_tools_through_the_tokenizers_template(tool_tokenizer):
    turns = [("system", "Be brief.")] + TOOL_TURNS
    text, spans = render_conversation(turns, "chat", tool_tokenizer, tools=TOOLS)
    messages = prompts.chat_messages(turns)
    assert messages[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    assert text == tool_tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False)  # transformers renders it
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    learned = [text[a:b] for a, b in spans]
    assert learned == [f'<tool_call>\n{CALL}\n</tool_call><|im_end|>', "It is 3 °C in Oslo.<|im_end|>"]
    assert prompts.render_open(turns[:4], "chat", tool_tokenizer, tools=TOOLS) == text[:spans[-1][0]]


def test_a_template_without_tool_support_is_refused_not_trained_silently(tmp_path):
    from tests.tiny_models import build_tokenizer

    plain_template = build_tokenizer(tmp_path)  # its template writes role and content only
    with pytest.raises(PromptError, match="chat template leaves out this conversation's tools or tool calls"):
        render_conversation(TOOL_TURNS, "chat", plain_template, tools=TOOLS)
