"""The API's wire format for tool calling: requests read as training reads a messages row, answers read back
into OpenAI's tool_calls (whole and streamed). Through a real server: tests/generation/test_tool_calls.py."""
import json

import pytest

from sftkit import rows
from sftkit.generation.config import GenerateConfig
from sftkit.generation.engine import Answer, Request
from sftkit.generation.protocol import ApiError, ChatBody, Chunks, Prepared, ToolUse, chat_prompt, response, tool_use
from sftkit.prompts import render_conversation

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "required": ["city"],
                                                           "properties": {"city": {"type": "string"}}}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
ASK = {"role": "user", "content": "Weather in Oslo?"}
CALLED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 3}'}
CONFIG = GenerateConfig(base_model="unused")


def prompt_of(messages, **fields):
    data = {"messages": messages, **fields}
    body = ChatBody.model_validate(data)
    tools = tool_use(body, data.get("tools"), CONFIG)
    return chat_prompt(body.messages, data["messages"], CONFIG, None, tools), tools


def answer(text, reason="eos"):
    return Answer(text, 10, 0.1, 0.01, reason, 5)


def tools_used(**fields):
    return ToolUse([WEATHER], "human_bot", **fields)


@pytest.mark.parametrize("upto", [1, 3])
def test_a_chat_with_tools_and_tool_messages_is_the_training_text_up_to_its_answer(upto):
    """The prompt is the training text of the same messages row up to the answer, calls and results included."""
    messages = [ASK, CALLED, RESULT, {"role": "assistant", "content": "It is 3 degrees."}]
    conversation = rows.conversation({"messages": messages[:upto + 1], "tools": [WEATHER]}, "messages")
    trained, spans = render_conversation(conversation.turns, "human_bot", tools=conversation.tools)
    prompt, _ = prompt_of(messages[:upto], tools=[WEATHER])
    assert trained[:spans[-1][0]] == prompt and "<tools>" in prompt
    assert ("<tool_response>" in prompt) == (upto == 3)


def test_tool_choice_none_renders_no_tools_and_a_named_function_opens_its_call():
    assert "<tools>" not in prompt_of([ASK], tools=[WEATHER], tool_choice="none")[0]
    assert prompt_of([ASK], tools=[WEATHER], tool_choice="none")[1] is None
    auto, _ = prompt_of([ASK], tools=[WEATHER])
    required, tools = prompt_of([ASK], tools=[WEATHER], tool_choice="required")
    assert required == auto + "<tool_call>\n" and tools.opening == "<tool_call>\n"
    named, tools = prompt_of([ASK], tools=[WEATHER], tool_choice={"type": "function",
                                                                   "function": {"name": "get_weather"}})
    assert named == auto + '<tool_call>\n{"name": "get_weather", "arguments":'
    assert tools.read(' {"city": "Oslo"}}\n</tool_call>')[1][0]["function"]["arguments"] == '{"city": "Oslo"}'


@pytest.mark.parametrize("messages, fields, words", [
    ([RESULT], {}, "tool message must answer"),
    ([ASK, {"role": "assistant", "content": "Let me see."}, RESULT], {}, "tool message must answer"),
    ([ASK], {"tool_choice": "auto"}, "needs tools"),
    ([ASK], {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "no tool named"),
    ([ASK, {**CALLED, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "not json"}}]},
      RESULT], {}, "tool call is not a JSON object"),
    ([ASK, CALLED], {}, "must end with a user message"),
])
def test_bad_tool_conversations_are_400(messages, fields, words):
    with pytest.raises(ApiError) as err:
        prompt_of(messages, **fields)
    assert err.value.status == 400 and words in err.value.message


def test_a_valid_call_is_returned_in_openais_shape_with_the_text_around():
    content, calls = tools_used().read(f"Let me look.\n{CALL}")
    assert content == "Let me look." and len(calls) == 1
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    two = tools_used(parallel=False).read(CALL + "\n" + CALL.replace("Oslo", "Lima"))[1]
    assert len(two) == 1 and "Oslo" in two[0]["function"]["arguments"]
    assert len(tools_used().read(CALL + "\n" + CALL.replace("Oslo", "Lima"))[1]) == 2


@pytest.mark.parametrize("text", [
    CALL.replace("get_weather", "get_stock"),  # unknown function
    CALL.replace('{"city": "Oslo"}', '{"town": "Oslo"}'),  # a required argument missing
    CALL.replace('"Oslo"}', '"Oslo"'),  # not JSON
    CALL[:30],  # cut short
    "It is sunny.",  # no call
])
def test_an_invalid_call_is_plain_content(text):
    assert tools_used().read(text) == (text, [])


def prepared(tools, n=1):
    return Prepared("chat", "base", ["p"], [Request("p") for _ in range(n)], CONFIG, n, True, False, tools)


def events(lines):
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def test_a_streamed_call_holds_text_back_from_where_a_call_may_start_and_sends_the_call_whole():
    chunks = Chunks(prepared(tools_used()))
    pieces = [" Let", " me look.", "\n<tool", "_call>\n{\"name\": \"get_weather\", ", "\"arguments\": {\"city\": ",
              "\"Oslo\"}}\n</tool_call>"]
    sent = [chunks.piece(0, piece) for piece in pieces]
    texts = [event["choices"][0]["delta"]["content"] for event in events(line for line in sent if line)]
    assert "".join(texts) == "Let me look."  # the call's opening is never sent as text
    ending = events(chunks.ending([answer("Let me look.\n" + CALL)]))
    deltas = [event["choices"][0]["delta"] for event in ending if event["choices"][0]["delta"]]
    assert deltas == [{"tool_calls": [{"index": 0, "id": deltas[0]["tool_calls"][0]["id"], "type": "function",
                                       "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}]
    assert ending[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_streamed_answer_without_a_valid_call_is_sent_whole_as_text():
    text = CALL.replace("get_weather", "get_stock")
    chunks = Chunks(prepared(tools_used()))
    sent = [chunks.piece(0, piece) for piece in ("Look: ", text)]
    ending = events(chunks.ending([answer("Look: " + text)]))
    texts = [event["choices"][0]["delta"].get("content") for event in events(line for line in sent if line) + ending]
    assert "".join(t for t in texts if t) == "Look: " + text
    assert ending[-1]["choices"][0]["finish_reason"] == "stop"


def test_the_whole_response_carries_tool_calls_and_null_content():
    body = response(prepared(tools_used()), [answer(CALL), answer("Plain.", "max_new_tokens")])
    first, second = body["choices"]
    assert first["finish_reason"] == "tool_calls" and first["message"]["content"] is None
    assert first["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert second["finish_reason"] == "length" and second["message"] == {"role": "assistant", "content": "Plain."}
