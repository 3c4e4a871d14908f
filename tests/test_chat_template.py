"""Golden tests: the generated templates render sftkit's own prompts byte for byte, read by the real
readers (transformers' apply_chat_template on a saved tokenizer; Ollama's Go template through the
small renderer of tests/go_template.py, which covers only the Go template subset sftkit writes)."""
from datetime import datetime

import pytest
from transformers import AutoTokenizer

from sftkit import prompts
from sftkit.chat_template import jinja_template, ollama_template, template_messages
from sftkit.prompt_format import save_tokenizer, single_token_ids, write_prompt_format, read_prompt_format
from sftkit.prompts import PROMPT_TYPES, PromptError, render_conversation, render_open, render_prompt, stop_strings
from tests.go_template import render as go_render
from tests.tiny_models import CHAT_TEMPLATE, build_tokenizer

TYPES = [name for name in PROMPT_TYPES if name != "chat"]
# (history, message, system, input): single and multi-turn, with a system message, with an input.
PROMPTS = [
    ([], "Name a colour.", None, None),
    ([("human", "Hi."), ("bot", "Hello!")], "Name a colour.", None, None),
    ([("human", "Hi."), ("bot", "Hello!"), ("human", "And?"), ("bot", "More.")], "Name a colour.", "Be brief.", None),
    ([], "Translate to French.", "Be brief.", "cat"),
    ([("human", "Hi."), ("bot", "Hello!")], "Translate to French.", None, "cat"),
]
# Whole conversations: h2oGPT's context, inputs alone, an empty system message, a history answer
# that already ends with the separator.
CONVERSATIONS = [
    [("human", "Name a colour."), ("bot", "Blue.")],
    [("context", "Earlier text. "), ("human", "Hi."), ("bot", "Hello!"), ("human", "Name a colour."), ("bot", "Blue.")],
    [("system", "Be brief."), ("human", "Translate."), ("input", "cat"), ("bot", "chat")],
    [("input", "cat"), ("bot", "chat")],
    [("system", ""), ("human", "Hi."), ("human", "Again."), ("bot", "Hello!\n"), ("human", "Bye."), ("bot", "Bye.</s>"),
     ("human", "Name a colour."), ("bot", "Blue.")],
]

# Tool use: the tool list (OpenAI's shape and a bare schema), a call alone, a call after text, parallel calls
# and their results, a call in an exchange with an input; each also cut before every answer (a prompt).
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}},
         {"name": "local_time", "description": "Local time, «exactly»", "parameters": {"type": "object"}}]
OSLO = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
TIME = '{"name": "local_time", "arguments": {}}'
TOOL_CONVERSATIONS = [
    [("human", "Weather in Oslo?"), ("tool_call", OSLO), ("tool", '{"temp_c": 3}'), ("bot", "It is 3 °C.")],
    [("system", "Be brief."), ("human", "Weather and time?"), ("bot", "Let me look."), ("tool_call", OSLO),
     ("tool_call", TIME), ("tool", '{"temp_c": 3}'), ("tool", "12:00"), ("bot", "3 °C at noon."),
     ("human", "Thanks."), ("bot", "You're welcome.")],
    [("context", "Earlier text. "), ("human", "Translate the weather."), ("input", "Oslo"), ("tool_call", OSLO),
     ("tool", "cold"), ("bot", "Kaldt.")],
]


class FixedClock(datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2023, 5, 25, 20, 30, 33)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """One fixed clock for sftkit's dated prompts and transformers' ``strftime_now``."""
    import transformers.utils.chat_template_utils as chat_template_utils

    monkeypatch.setattr(prompts, "datetime", FixedClock)
    monkeypatch.setattr(chat_template_utils, "datetime", FixedClock)


@pytest.fixture(scope="module")
def base_tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def saved_tokenizer(tokenizer, folder, prompt_type):
    """The tokenizer saved with the prompt type's template and read back by AutoTokenizer."""
    save_tokenizer(tokenizer, folder, prompt_type)
    return AutoTokenizer.from_pretrained(folder)


def mismatches(tokenizer, name) -> list[str]:
    """Every golden case where the tokenizer's template and sftkit's own rendering differ."""
    bad = []
    for history, message, system, input in PROMPTS:
        turns = ([("system", system)] if system else []) + history + [("human", message)]
        turns += [("input", input)] if input else []
        got = tokenizer.apply_chat_template(template_messages(turns), tokenize=False, add_generation_prompt=True)
        want = render_prompt(history, message, name, system=system, input=input)
        if got != want:
            bad.append(f"prompt {turns}: {got!r} != {want!r}")
    for turns in CONVERSATIONS + [history + [("human", message), ("bot", "Blue.")] for history, message, *_ in PROMPTS]:
        got = tokenizer.apply_chat_template(template_messages(turns), tokenize=False)
        want = render_conversation(turns, name)[0]
        if got != want:
            bad.append(f"training text {turns}: {got!r} != {want!r}")
    for turns in TOOL_CONVERSATIONS:
        got = tokenizer.apply_chat_template(template_messages(turns), tools=TOOLS, tokenize=False)
        want = render_conversation(turns, name, tools=TOOLS)[0]
        if got != want:
            bad.append(f"training text with tools {turns}: {got!r} != {want!r}")
        for cut in (i for i, (role, _) in enumerate(turns) if role in ("tool_call", "bot") and turns[i - 1][0] not in
                    ("tool_call", "bot")):
            got = tokenizer.apply_chat_template(template_messages(turns[:cut]), tools=TOOLS, tokenize=False,
                                                add_generation_prompt=True)
            want = render_open(turns[:cut], name, tools=TOOLS)
            if got != want:
                bad.append(f"prompt with tools {turns[:cut]}: {got!r} != {want!r}")
    return bad


@pytest.mark.parametrize("name", TYPES)
def test_template_renders_sftkits_prompt_and_training_text(name, base_tokenizer, tmp_path):
    tokenizer = saved_tokenizer(base_tokenizer, tmp_path, name)
    assert "sftkit prompt_type " + name in tokenizer.chat_template
    assert mismatches(tokenizer, name) == []


def test_the_dated_type_reads_the_clock_of_templates():
    text = jinja_template("human_bot_orig")
    assert "strftime_now" in text
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([template_messages([("human", "Hi.")])], chat_template=text,
                                        add_generation_prompt=True)
    assert rendered[0].startswith("Current Date: 2023-05-25\nCurrent Time: 20:30:33 PM \n\n<human>: Hi.")


@pytest.mark.parametrize("name", TYPES)
def test_a_wrong_template_line_fails_the_golden_check(name, base_tokenizer, tmp_path):
    """The check above can fail: one altered line (the instruction's, or the answer's opening) is caught."""
    good = jinja_template(name)
    broken_body = good.replace("{%- elif ex.ins -%}{%- set ns.text = ns.text + ", "{%- elif ex.ins -%}"
                               "{%- set ns.text = ns.text + ' ' + ")
    assert broken_body != good
    base_tokenizer.chat_template = broken_body
    try:
        assert mismatches(base_tokenizer, name), "a wrong template line went unnoticed"
    finally:
        base_tokenizer.chat_template = CHAT_TEMPLATE
    for wrong in (good.replace(', "arguments": \'', ', "args": \''), good.replace("ns.listing + ", "")):
        assert wrong != good
        base_tokenizer.chat_template = wrong
        try:
            assert any("with tools" in line for line in mismatches(base_tokenizer, name)), "a wrong tool line"
        finally:
            base_tokenizer.chat_template = CHAT_TEMPLATE
    if PROMPT_TYPES[name].response:
        base_tokenizer.chat_template = good.replace("or add_generation_prompt", "or false")
        try:
            assert mismatches(base_tokenizer, name)
        finally:
            base_tokenizer.chat_template = CHAT_TEMPLATE


def test_chat_keeps_the_base_template(base_tokenizer, tmp_path):
    assert jinja_template("chat") is None
    assert saved_tokenizer(base_tokenizer, tmp_path, "chat").chat_template == CHAT_TEMPLATE


def test_a_bos_adding_tokenizer_gets_the_same_tokens_from_the_template(tmp_path):
    """Templates are encoded without special tokens: the BOS sftkit's prompts get is written in."""
    from tokenizers import processors

    tokenizer = build_tokenizer(tmp_path / "base")
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    tokenizer = saved_tokenizer(tokenizer, tmp_path / "saved", "human_bot")
    messages = template_messages([("human", "Who are you?")])
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    want = prompts.encode(tokenizer, render_prompt([], "Who are you?", "human_bot"), "human_bot")["input_ids"]
    assert ids["input_ids"] == want and want[0] == tokenizer.bos_token_id


def test_prompt_files_list_single_token_stops_as_eos_ids(base_tokenizer, tmp_path):
    from transformers import GenerationConfig

    assert single_token_ids(base_tokenizer, ["</s>", "<human>:"]) == [base_tokenizer.eos_token_id]
    config = GenerationConfig(eos_token_id=base_tokenizer.eos_token_id)
    record = write_prompt_format(tmp_path, base_tokenizer, "open_assistant", generation_config=config)
    saved = GenerationConfig.from_pretrained(tmp_path)
    assert saved.eos_token_id == [base_tokenizer.eos_token_id]  # </s> is the EOS itself: listed once
    assert record["stop"] == stop_strings("open_assistant") and read_prompt_format(tmp_path) == record
    im_end = base_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert single_token_ids(base_tokenizer, ["<|im_end|>", "### Human:"]) == [im_end]


# ---------------------------------------------------------------- Ollama's Go template

def ollama_messages(turns):
    return [{"Role": m["role"], "Content": m["content"]} for m in template_messages(turns)]


@pytest.mark.parametrize("name", [n for n in TYPES if not PROMPT_TYPES[n].dated])
def test_ollama_template_renders_the_golden_prompts(name):
    source = ollama_template(name)
    assert '"""' not in source  # it goes between a Modelfile's triple quotes
    for history, message, system, input in PROMPTS:
        if input:
            continue  # Ollama has no input turns
        turns = ([("system", system)] if system else []) + history + [("human", message)]
        data = {"Messages": ollama_messages(turns), "System": system or ""}
        assert go_render(source, data) == render_prompt(history, message, name, system=system)


def test_a_wrong_ollama_line_fails_and_dated_types_are_refused():
    source = ollama_template("human_bot")
    broken = source.replace('{{- "<bot>:" }}', '{{- "<bot>: " }}', 1)
    data = {"Messages": ollama_messages([("human", "Hi."), ("bot", "Hello!"), ("human", "Name a colour.")])}
    assert go_render(source, data) == render_prompt([("human", "Hi."), ("bot", "Hello!")], "Name a colour.", "human_bot")
    assert go_render(broken, data) != go_render(source, data)
    with pytest.raises(PromptError, match="no clock"):
        ollama_template("human_bot_orig")
